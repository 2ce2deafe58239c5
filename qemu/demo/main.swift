// vtpm-demo: boots the test guest on vtpmd and shows the TPM working (make demo).
import Foundation
import TestSupport

let clock = ContinuousClock()
let started = clock.now

func step(_ title: String, _ body: () throws -> String) rethrows {
    let t0 = clock.now
    let result = try body()
    let parts = (clock.now - t0).components
    let elapsed = Double(parts.seconds) * 1000 + Double(parts.attoseconds) / 1e15
    let line = result.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "\n", with: " | ")
    let padded = title.padding(toLength: 38, withPad: " ", startingAt: 0)
    let ms = String(Int(elapsed.rounded()))
    print("  \(padded) \(String(repeating: " ", count: max(0, 7 - ms.count)))\(ms) ms  \(line)")

}

do {
    let dir = "/tmp/vtpm-demo-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    print("vtpm-demo: guest image")
    let image = try GuestImage.locate()
    let disk = "\(dir)/disk.qcow2"
    try QEMUGuest.createDisk(at: disk)
    print("vtpm-demo: vtpmd \(Binaries.vtpmd)")
    let backend = try TPMBackendProcess(executable: Binaries.vtpmd, directory: dir, logLevel: 2)
    print("  \(backend.commandLine)")
    let guest = try QEMUGuest.launch(.init(directory: dir, image: image, tpmSocket: backend.controlSocket, disk: disk))
    print("vtpm-demo: QEMU 7.2 (tcg, q35, tpm-crb) booting the test guest")
    try step("boot to shell") {
        try guest.waitForReady()
        return try guest.check("ls /dev/tpm*")
    }
    try step("TPM2_GetRandom(16)") { try guest.check("tpm2_getrandom 16 --hex") }
    try step("manufacturer (GetCapability)") {
        try guest.check("tpm2_getcap properties-fixed | grep -A1 TPM2_PT_MANUFACTURER | tail -1")
    }
    try step("EK (RSA 2048) fingerprint") {
        try guest.check("cd /data && tpm2_createek -c ek.ctx -G rsa -u ek.pub -Q && sha256sum ek.pub | cut -c1-32")
    }
    try step("PCR 16 extend + read") {
        try guest.check(
            "tpm2_pcrextend 16:sha256=\(String(repeating: "ab", count: 32)) && tpm2_pcrread sha256:16 | tail -1"
        )
    }
    try step("seal + unseal under the SRK") {
        try guest.check(
            "cd /data && tpm2_flushcontext -t && echo -n 'demo secret' > s.txt && tpm2_createprimary -Q -C o -c p.ctx"
                + " && tpm2_create -Q -C p.ctx -i s.txt -u k.pub -r k.priv && tpm2_load -Q -C p.ctx -u k.pub -r k.priv -c k.ctx"
                + " && tpm2_unseal -c k.ctx"
        )
    }
    try step("NV define/write/read 0x1500016") {
        try guest.check(
            "tpm2_nvdefine 0x1500016 -C o -s 12 -a 'ownerread|ownerwrite' && echo -n 'hello-nvram!' > /tmp/nv"
                + " && tpm2_nvwrite 0x1500016 -C o -i /tmp/nv && tpm2_nvread 0x1500016 -C o -s 12"
        )
    }
    let pcr = try guest.check("tpm2_pcrread sha256:16 | tail -1")
    try step("savevm s1 (GET_STATEBLOB x3)") {
        try guest.savevm("s1")
        return "snapshot s1 taken"
    }
    try step("PCR 16 changed after savevm") {
        try guest.check(
            "tpm2_pcrextend 16:sha256=\(String(repeating: "cd", count: 32)) && tpm2_pcrread sha256:16 | tail -1"
        )
    }
    try step("loadvm s1 (STOP, SET_STATEBLOB, INIT)") {
        try guest.loadvm("s1")
        try guest.waitForShell()
        let now = try guest.check("tpm2_pcrread sha256:16 | tail -1")
        return now == pcr ? "PCR 16 back to the snapshot value" : "PCR 16 NOT restored: \(now)"
    }
    try step("unseal after loadvm") { try guest.check("cd /data && tpm2_unseal -c k.ctx") }
    try step("quit (CMD_SHUTDOWN)") {
        let status = try guest.quit()
        let backendStatus = try backend.waitForExit()
        return "QEMU exit \(status), vtpmd exit \(backendStatus)"
    }
    let files = try FileManager.default.contentsOfDirectory(atPath: backend.stateDirectory).sorted()
    print("vtpm-demo: state directory \(backend.stateDirectory): \(files.joined(separator: " "))")
    print("vtpm-demo: done in \(clock.now - started)")
} catch {
    print("vtpm-demo failed: \(error)")
    exit(1)
}
