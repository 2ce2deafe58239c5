import TestSupport
import Testing

/// A TPM state's endorsement as tpm2-tools read it: the RSA EK certificate (NV 0x01C00002) and the RSA EK's
/// public area (`tpm2_createek -u`, a marshalled TPM2B_PUBLIC).
struct Endorsement: Equatable {
    var ekCertificate: [UInt8]
    var ekPublic: [UInt8]

    /// The files the two were written to, in `work` (to hash them as the guest does).
    static func certificatePath(_ work: String) -> String { "\(work)/ekcert.der" }
    static func ekPublicPath(_ work: String) -> String { "\(work)/ek.pub" }

    /// Starts `binary socket --tpm2 --tpmstate TPMSTATE` (vtpmd or swtpm, without clone-rekey unless `extra`
    /// asks for it) on a TCP port, reads the EK certificate and creates the RSA EK, and shuts it down.
    /// - Parameters:
    ///   - binary: The backend.
    ///   - tpmstate: The `--tpmstate` value (`dir=...`, `backend-uri=file://...`).
    ///   - work: Where the files go.
    ///   - extra: More arguments.
    static func read(_ binary: String, tpmstate: String, work: String, extra: [String] = []) throws -> Endorsement {
        let port = try freePortPair()
        let daemon = try Daemon(
            binary,
            [
                "socket", "--tpm2", "--tpmstate", tpmstate, "--server", "type=tcp,port=\(port)",
                "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear",
            ] + extra,
            waitForPort: port
        )
        let env = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
        let cert = self.certificatePath(work)
        let pub = self.ekPublicPath(work)
        let r1 = try runCommand("tpm2_nvread", ["0x1c00002", "-o", cert], environment: env)
        try #require(r1.status == 0, "nvread on \(binary): \(r1.output)")
        let r2 = try runCommand("tpm2_createek", ["-c", "\(work)/ek.ctx", "-G", "rsa", "-u", pub], environment: env)
        try #require(r2.status == 0, "createek on \(binary): \(r2.output)")
        _ = try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", "-s"])
        _ = daemon.waitForExit()
        return Endorsement(ekCertificate: fileBytes(cert) ?? [], ekPublic: fileBytes(pub) ?? [])
    }
}

/// Guest shell commands the guest tests share.
enum GuestCommands {
    /// Seals "A secret" under an SRK persisted at 0x81000001 and persists the sealed object at 0x81000010
    /// (files in /data).
    static let seal =
        "cd /data && printf 'A secret' > secret && tpm2_createprimary -C o -c srk.ctx -Q"
        + " && tpm2_evictcontrol -C o -c srk.ctx 0x81000001 -Q && tpm2_flushcontext -t"
        + " && tpm2_create -C 0x81000001 -i secret -u seal.pub -r seal.priv -Q"
        + " && tpm2_load -C 0x81000001 -u seal.pub -r seal.priv -c seal.ctx -Q"
        + " && tpm2_evictcontrol -C o -c seal.ctx 0x81000010 -Q && tpm2_flushcontext -t"

    /// The RSA EK (context /data/ek.ctx, public area /data/ek.pub).
    static let createEK = "cd /data && tpm2_createek -c ek.ctx -G rsa -u ek.pub -Q && tpm2_flushcontext -t"

    /// An AK under the EK of ``createEK``, persisted at 0x81010002.
    static let persistAK =
        "cd /data && tpm2_createak -C ek.ctx -c ak.ctx -G rsa -g sha256 -s rsassa -u ak.pub -n ak.name -Q"
        + " && tpm2_evictcontrol -C o -c ak.ctx 0x81010002 -Q && tpm2_flushcontext -t"
}
