// vtpm-demo (make demo): clone-rekey end to end. VM A boots on vtpmd (a provisioned TPM: EKs,
// certificates from the host CA, identity NV indices), creates an EK, an AK persisted at 0x81010002
// and a sealed secret persisted at 0x81000010, and takes `savevm s1`. Clone B starts from a copy of
// A's disk with `-loadvm s1`, its own vtpmd and vm-id: vtpmd decides "clone" and rekeys. The demo
// then reads both EK certificates on the host and prints A and B side by side. It doubles as a smoke
// test: it exits 1 when a property of the clone does not hold (after printing the table).
import Foundation
import TestSupport

let clock = ContinuousClock()
let started = clock.now
let width = 100

func milliseconds(_ d: Duration) -> Double {
    let parts = d.components
    return Double(parts.seconds) * 1000 + Double(parts.attoseconds) / 1e15
}

func clip(_ text: String, _ count: Int) -> String {
    text.count <= count ? text : String(text.prefix(max(0, count - 3))) + "..."
}

func oneLine(_ text: String) -> String {
    text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").map {
        $0.trimmingCharacters(in: .whitespaces)
    }.joined(separator: " | ")
}

/// Runs one step and prints `  title  ms  result` on one line of at most `width` columns.
@discardableResult
func step(_ title: String, _ body: () throws -> String) rethrows -> String {
    let t0 = clock.now
    let result = try body()
    let ms = String(Int(milliseconds(clock.now - t0).rounded()))
    let head =
        "  \(title.padding(toLength: 32, withPad: " ", startingAt: 0)) "
        + "\(String(repeating: " ", count: max(0, 6 - ms.count)))\(ms) ms  "
    print(head + clip(oneLine(result), width - head.count))
    return result
}

/// The `key=value` fields of vtpmd's last `clone-rekey decision` log line.
func decisionFields(_ log: String) -> [String: String] {
    guard let line = log.split(separator: "\n").last(where: { $0.contains("clone-rekey decision") }) else { return [:] }
    var fields: [String: String] = [:]
    for word in line.split(separator: " ") {
        let pair = word.split(separator: "=", maxSplits: 1)
        if pair.count == 2 { fields[String(pair[0])] = String(pair[1]) }
    }
    return fields
}

/// Hex bytes printed by `od -An -tx1` in the guest, as one hex string.
func hex(fromOD text: String) -> String { String(text.filter { $0.isHexDigit }) }

/// What the demo learns about one VM.
struct Column {
    var vmID = ""
    var decision: [String: String] = [:]
    var counter = ""
    var history = ""
    var ekHash = ""
    var akState = ""
    var unsealed = ""
    var certSubject = ""
    var certIssuer = ""
    var certVerify = ""
    var certKeyIsEK = ""
}

/// A vtpmd on a stopped VM's state directory with TCP ports, for the host's tpm2-tools: reads the
/// RSA EK certificate (NV 0x01C00002) and the EK, then checks the certificate with openssl.
func readCertificate(
    into column: inout Column,
    stateDirectory: String,
    work: String,
    identity: [String],
    ca: String
)
    throws
{
    let port = try freePortPair()
    let daemon = try Daemon(
        Binaries.vtpmd,
        [
            "socket", "--tpm2", "--tpmstate", "dir=\(stateDirectory)", "--server", "type=tcp,port=\(port)",
            "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear",
        ] + identity,
        waitForPort: port
    )
    let env = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
    let nv = try runCommand("tpm2_nvread", ["0x1c00002", "-o", "\(work)/ek.der"], environment: env)
    let ek = try runCommand(
        "tpm2_createek",
        ["-c", "\(work)/ek.ctx", "-G", "rsa", "-u", "\(work)/ek.pub", "-Q"],
        environment: env
    )
    let pem = try runCommand(
        "tpm2_readpublic",
        ["-c", "\(work)/ek.ctx", "-f", "pem", "-o", "\(work)/ek-key.pem", "-Q"],
        environment: env
    )
    _ = try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", "-s"])
    if daemon.waitForExit() == nil { daemon.stop() }
    guard nv.status == 0 else {
        column.certSubject = "no certificate: \(oneLine(nv.output))"
        return
    }
    let names = try runCommand(
        "openssl",
        [
            "x509", "-inform", "der", "-in", "\(work)/ek.der", "-noout", "-subject", "-issuer", "-nameopt",
            "oneline,-space_eq",
        ]
    )
    for line in names.stdout.split(separator: "\n") {
        if line.hasPrefix("subject=") { column.certSubject = String(line.dropFirst("subject=".count)) }
        if line.hasPrefix("issuer=") { column.certIssuer = String(line.dropFirst("issuer=".count)) }
    }
    _ = try runCommand("openssl", ["x509", "-inform", "der", "-in", "\(work)/ek.der", "-out", "\(work)/ek.pem"])
    let verify = try runCommand("openssl", ["verify", "-CAfile", "\(ca)/ca.pem", "\(work)/ek.pem"])
    column.certVerify = verify.status == 0 && verify.stdout.contains("OK") ? "OK (openssl verify)" : "FAILED"
    // The certified key against the EK the TPM derives now, both as DER SubjectPublicKeyInfo.
    let certKey = try runCommand(
        "sh",
        [
            "-c",
            "openssl x509 -inform der -in '\(work)/ek.der' -noout -pubkey | openssl pkey -pubin -outform der | sha256sum",
        ]
    )
    let tpmKey = try runCommand("sh", ["-c", "openssl pkey -pubin -in '\(work)/ek-key.pem' -outform der | sha256sum"])
    let hostHash = try runCommand("sh", ["-c", "sha256sum < '\(work)/ek.pub'"]).stdout.prefix(64)
    let same = ek.status == 0 && pem.status == 0 && certKey.stdout == tpmKey.stdout
    column.certKeyIsEK =
        same && String(hostHash) == column.ekHash
        ? "yes (= the guest's EK)" : same ? "yes, but not the guest's EK" : "NO"
}

/// `cells` side by side: a label column and one column per VM, each cell word-wrapped.
func table(_ rows: [(String, String, String)]) -> String {
    let labelWidth = 18
    let cellWidth = (width - labelWidth - 4) / 2
    func wrap(_ text: String) -> [String] {
        var lines: [String] = []
        var current = ""
        for word in text.split(separator: " ", omittingEmptySubsequences: false) {
            var word = String(word)
            while word.count > cellWidth {
                if !current.isEmpty {
                    lines.append(current)
                    current = ""
                }
                lines.append(String(word.prefix(cellWidth)))
                word = String(word.dropFirst(cellWidth))
            }
            if current.isEmpty {
                current = word
            } else if current.count + 1 + word.count <= cellWidth {
                current += " " + word
            } else {
                lines.append(current)
                current = word
            }
        }
        lines.append(current)
        return lines
    }
    func pad(_ s: String, _ n: Int) -> String { s.padding(toLength: n, withPad: " ", startingAt: 0) }
    var out: [String] = []
    for (label, a, b) in rows {
        let left = wrap(a)
        let right = wrap(b)
        for i in 0..<max(left.count, right.count) {
            let line =
                pad(i == 0 ? label : "", labelWidth) + "  " + pad(i < left.count ? left[i] : "", cellWidth) + "  "
                + (i < right.count ? right[i] : "")
            out.append(line.replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression))
        }
    }
    return out.joined(separator: "\n")
}

func demo() throws -> Bool {
    let host = "/tmp/vtpm-demo-\(UInt32.random(in: 0...UInt32.max))"
    let fm = FileManager.default
    try fm.createDirectory(atPath: "\(host)/a", withIntermediateDirectories: true)
    try fm.createDirectory(atPath: "\(host)/b", withIntermediateDirectories: true)
    defer { try? fm.removeItem(atPath: host) }
    var a = Column(vmID: UUID().uuidString.lowercased())
    var b = Column(vmID: UUID().uuidString.lowercased())
    func identity(_ vm: String) -> [String] {
        [
            "--vm-id", vm, "--ca", "\(host)/ca", "--registry", "\(host)/registry.sqlite", "--host-key",
            "\(host)/host.key",
        ]
    }
    let secret = "demo secret"

    let image = try GuestImage.locate()
    print("vtpm-demo: clone-rekey on vtpmd, QEMU 7.2 guests (tcg, q35, tpm-crb)")
    print("  vtpmd \(Binaries.vtpmd)")
    print("  host \(host): ca/ (EK certificate CA), registry.sqlite, host.key (blob MAC key)")

    // VM A: a provisioned TPM (vtpmd manufactures it on the empty state directory).
    print("VM A  vm-id \(a.vmID)")
    let diskA = "\(host)/a/disk.qcow2"
    try QEMUGuest.createDisk(at: diskA)
    let backendA = try TPMBackendProcess(
        executable: Binaries.vtpmd,
        directory: "\(host)/a",
        extraArguments: identity(a.vmID),
        logLevel: 2
    )
    let guestA = try QEMUGuest.launch(
        .init(directory: "\(host)/a", image: image, tpmSocket: backendA.controlSocket, disk: diskA)
    )
    try step("boot to shell") {
        try guestA.waitForReady()
        return try guestA.check("ls /dev/tpm*")
    }
    try step("TPM2_GetRandom(16)") { try guestA.check("tpm2_getrandom 16 --hex") }
    try step("EK (RSA 2048), SHA-256") {
        try guestA.check("cd /data && tpm2_createek -c ek.ctx -G rsa -u ek-a.pub -Q && tpm2_flushcontext -t")
        a.ekHash = String(try guestA.check("sha256sum /data/ek-a.pub").prefix(64))
        return a.ekHash
    }
    try step("AK under the EK -> 0x81010002") {
        try guestA.check(
            "cd /data && tpm2_createak -C ek.ctx -c ak.ctx -G rsa -g sha256 -s rsassa -u ak.pub -n ak.name -Q"
                + " && tpm2_evictcontrol -C o -c ak.ctx 0x81010002 -Q && tpm2_flushcontext -t"
                + " && tpm2_readpublic -c 0x81010002 | grep -m1 '^name:'",
            timeout: .seconds(120)
        )
    }
    try step("AK signs, signature verifies") {
        let r = try guestA.run(
            "cd /data && echo hello > msg && tpm2_sign -c 0x81010002 -g sha256 -s rsassa -o sig msg"
                + " && tpm2_verifysignature -c 0x81010002 -g sha256 -m msg -s sig -t ticket && echo verified",
            timeout: .seconds(120)
        )
        a.akState = r.status == 0 ? "signs and verifies" : "FAILED to sign (rc \(r.status))"
        return r.output
    }
    try step("seal '\(secret)' -> 0x81000010") {
        try guestA.check(
            "cd /data && printf '\(secret)' > secret && tpm2_createprimary -C o -c srk.ctx -Q"
                + " && tpm2_evictcontrol -C o -c srk.ctx 0x81000001 -Q && tpm2_flushcontext -t"
                + " && tpm2_create -C 0x81000001 -i secret -u seal.pub -r seal.priv -Q"
                + " && tpm2_load -C 0x81000001 -u seal.pub -r seal.priv -c seal.ctx -Q"
                + " && tpm2_evictcontrol -C o -c seal.ctx 0x81000010 -Q && tpm2_flushcontext -t && rm secret",
            timeout: .seconds(120)
        )
        let r = try guestA.run("tpm2_unseal -c 0x81000010")
        a.unsealed = r.status == 0 ? r.output : "FAILED (rc \(r.status))"
        return "unseal: \(a.unsealed)"
    }
    try step("NV counter, NV history") {
        a.counter = hex(fromOD: try guestA.check("tpm2_nvread 0x1400001 -s 8 | od -An -tx1"))
        a.history = hex(fromOD: try guestA.check("tpm2_nvread 0x1400002 -s 32 | od -An -tx1"))
        return "\(a.counter)  \(a.history)"
    }
    try step("savevm s1 (GET_STATEBLOB x3)") {
        try guestA.check("sync")
        try guestA.savevm("s1")
        return "snapshot s1 in \(diskA.split(separator: "/").suffix(2).joined(separator: "/"))"
    }
    try step("quit (CMD_SHUTDOWN)") {
        let status = try guestA.quit()
        return "QEMU exit \(status), vtpmd exit \(try backendA.waitForExit())"
    }
    a.decision = decisionFields(backendA.log)

    // Clone B: a copy of A's disk (with the snapshot), its own vtpmd and vm-id, -loadvm s1.
    print("VM B  vm-id \(b.vmID)  (copy of A's disk, -loadvm s1)")
    let diskB = "\(host)/b/disk.qcow2"
    try fm.copyItem(atPath: diskA, toPath: diskB)
    let backendB = try TPMBackendProcess(
        executable: Binaries.vtpmd,
        directory: "\(host)/b",
        extraArguments: identity(b.vmID),
        logLevel: 2
    )
    let guestB = try QEMUGuest.launch(
        .init(
            directory: "\(host)/b",
            image: image,
            tpmSocket: backendB.controlSocket,
            disk: diskB,
            extraArguments: ["-loadvm", "s1"]
        )
    )
    try step("-loadvm s1 (SET_STATEBLOB, INIT)") {
        try guestB.waitForShell()
        b.decision = decisionFields(backendB.log)
        return "vtpmd: decision=\(b.decision["decision"] ?? "?") duration_ms=\(b.decision["duration_ms"] ?? "?")"
    }
    try step("unseal 0x81000010") {
        let r = try guestB.run("tpm2_unseal -c 0x81000010")
        b.unsealed = r.status == 0 ? r.output : "FAILED (rc \(r.status))"
        return r.output
    }
    try step("AK 0x81010002") {
        let r = try guestB.run("tpm2_readpublic -c 0x81010002 -Q")
        b.akState = r.status == 0 ? "STILL PRESENT" : "gone (readpublic fails)"
        return b.akState
    }
    try step("EK (RSA 2048), SHA-256") {
        try guestB.check("cd /data && tpm2_createek -c ek.ctx -G rsa -u ek-b.pub -Q && tpm2_flushcontext -t")
        b.ekHash = String(try guestB.check("sha256sum /data/ek-b.pub").prefix(64))
        return b.ekHash
    }
    try step("NV counter, NV history") {
        b.counter = hex(fromOD: try guestB.check("tpm2_nvread 0x1400001 -s 8 | od -An -tx1"))
        b.history = hex(fromOD: try guestB.check("tpm2_nvread 0x1400002 -s 32 | od -An -tx1"))
        return "\(b.counter)  \(b.history)"
    }
    try step("quit (CMD_SHUTDOWN)") {
        let status = try guestB.quit()
        return "QEMU exit \(status), vtpmd exit \(try backendB.waitForExit())"
    }

    // The certificates, read on the host from each state directory (the serial console is no
    // channel for a kilobyte of hex).
    print("host  EK certificates (NV 0x01C00002) from both state directories")
    try step("A: read + openssl verify") {
        try fm.createDirectory(atPath: "\(host)/a/cert", withIntermediateDirectories: true)
        try readCertificate(
            into: &a,
            stateDirectory: backendA.stateDirectory,
            work: "\(host)/a/cert",
            identity: identity(a.vmID),
            ca: "\(host)/ca"
        )
        return "\(a.certVerify), key \(a.certKeyIsEK)"
    }
    try step("B: read + openssl verify") {
        try fm.createDirectory(atPath: "\(host)/b/cert", withIntermediateDirectories: true)
        try readCertificate(
            into: &b,
            stateDirectory: backendB.stateDirectory,
            work: "\(host)/b/cert",
            identity: identity(b.vmID),
            ca: "\(host)/ca"
        )
        return "\(b.certVerify), key \(b.certKeyIsEK)"
    }

    // Side by side.
    func counterText(_ hex: String) -> String {
        guard hex.count == 16, let value = UInt64(hex, radix: 16) else { return "unreadable (\(hex))" }
        return String(value)
    }
    func decisionText(_ d: [String: String]) -> String {
        guard let name = d["decision"] else { return "none logged" }
        if let source = d["source_vm"], source != "none", name != "manufacture" {
            return "\(name) of \(source.prefix(8)) gen \(d["source_generation"] ?? "?")"
                + " ckpt \(d["source_checkpoint"] ?? "?")"
        }
        return name
    }
    func ms(_ d: [String: String]) -> String { d["duration_ms"].map { "\($0) ms" } ?? "?" }
    print("")
    print(
        table([
            ("", "A (original)", "B (clone of A's s1)"),
            ("vm-id", a.vmID, b.vmID),
            ("decision (vtpmd)", decisionText(a.decision), decisionText(b.decision)),
            ("generation", a.decision["target_generation"] ?? "?", b.decision["target_generation"] ?? "?"),
            ("counter 0x01400001", counterText(a.counter), counterText(b.counter)),
            ("history 0x01400002", String(a.history.prefix(16)) + "...", String(b.history.prefix(16)) + "..."),
            ("EK SHA-256", String(a.ekHash.prefix(16)) + "...", String(b.ekHash.prefix(16)) + "..."),
            ("EK cert subject", a.certSubject, b.certSubject),
            ("EK cert issuer", a.certIssuer, b.certIssuer),
            ("cert chains to CA", a.certVerify, b.certVerify),
            ("cert holds the EK", a.certKeyIsEK, b.certKeyIsEK),
            ("AK 0x81010002", a.akState, b.akState),
            ("unseal 0x81000010", "'\(a.unsealed)'", "'\(b.unsealed)'"),
            ("rekey time (log)", "n/a (manufactured in \(ms(a.decision)))", ms(b.decision)),
        ])
    )
    print("")

    // The properties the demo shows, checked.
    var failures: [String] = []
    func expect(_ ok: Bool, _ what: String) { if !ok { failures.append(what) } }
    expect(a.decision["decision"] == "manufacture", "A: vtpmd did not log decision=manufacture")
    expect(b.decision["decision"] == "clone", "B: vtpmd did not log decision=clone")
    expect(b.decision["source_vm"] == a.vmID, "B: the decision does not name A as the source")
    expect(b.decision["target_vm"] == b.vmID, "B: the decision does not name B as the target")
    expect(
        UInt64(b.decision["target_generation"] ?? "") == UInt64(a.decision["target_generation"] ?? "").map { $0 + 1 },
        "B: generation is not A's + 1"
    )
    expect(a.ekHash.count == 64 && b.ekHash.count == 64 && a.ekHash != b.ekHash, "B's EK equals A's (or is missing)")
    let counterA = UInt64(a.counter, radix: 16)
    let counterB = UInt64(b.counter, radix: 16)
    expect(counterA != nil && counterB == counterA.map { $0 + 1 }, "B's counter is not A's + 1")
    expect(a.history.count == 64 && b.history.count == 64 && a.history != b.history, "B's history equals A's")
    expect(a.certSubject.contains(a.vmID), "A's EK certificate does not name A")
    expect(b.certSubject.contains(b.vmID), "B's EK certificate does not name B")
    expect(b.certSubject.contains(a.vmID), "B's EK certificate does not name its parent A")
    expect(a.certVerify.hasPrefix("OK") && b.certVerify.hasPrefix("OK"), "an EK certificate does not chain to the CA")
    expect(a.certKeyIsEK.hasPrefix("yes (") && b.certKeyIsEK.hasPrefix("yes ("), "a certificate does not hold the EK")
    expect(a.akState == "signs and verifies", "A's AK does not sign")
    expect(b.akState.hasPrefix("gone"), "B still has A's AK")
    expect(a.unsealed == secret && b.unsealed == secret, "unseal did not return the secret")

    let total = milliseconds(clock.now - started) / 1000
    if failures.isEmpty {
        print("vtpm-demo: all clone properties hold; done in \(String(format: "%.1f", total)) s")
        return true
    }
    for failure in failures { print("vtpm-demo: FAILED: \(failure)") }
    print("vtpm-demo: \(failures.count) check(s) failed; done in \(String(format: "%.1f", total)) s")
    return false
}

do {
    if try !demo() { exit(1) }
} catch {
    print("vtpm-demo failed: \(error)")
    exit(1)
}
