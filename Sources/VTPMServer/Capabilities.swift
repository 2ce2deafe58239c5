import StateStore
import TPMEngine

/// `--print-capabilities`, `--print-states` and `--version` output.
public enum Capabilities {
    public static let version = "0.1.0"
    /// Whether `--tpmstate backend-uri=file://` is implemented in this build.
    public static let fileBackendSupported = true

    /// swtpm's JSON shape, listing only features vtpmd implements.
    /// - Parameter cuse: `vtpmd cuse`, which (as swtpm cuse) names neither the send-command header, which its
    ///   device does not take, nor the startup flags.
    public static func json(cuse: Bool = false) -> String {
        // swtpm 0.7.1's names and order (its test suite matches the list exactly).
        var features = ["tpm-2.0"]
        if !cuse { features += ["tpm-send-command-header", "flags-opt-startup"] }
        features += ["cmdarg-seccomp", "cmdarg-key-fd", "cmdarg-pwd-fd", "cmdarg-print-states", "nvram-backend-dir"]
        if self.fileBackendSupported { features.append("nvram-backend-file") }
        // RSA key sizes as libtpms reports them.
        if let info = Engine.info(flags: 4, selectingTPM2: true) {
            let marker = "\"RSAKeySizes\":["
            let parts = info.split(separator: "[", maxSplits: 1)
            if parts.count == 2, info.contains(marker), let list = parts[1].split(separator: "]").first {
                for size in list.split(separator: ",") { features.append("rsa-keysize-\(size)") }
            }
        }
        let list = features.map { "\"\($0)\"" }.joined(separator: ", ")
        return "{ \"type\": \"swtpm\", \"features\": [ \(list) ], \"version\": \"\(self.version)\" }"
    }

    /// `--print-states`: which blobs exist in the directory, with their file sizes.
    public static func statesJSON(_ states: [(name: String, size: Int64)]) -> String {
        let list = states.map { "{\"name\": \"\($0.name)\", \"size\": \($0.size)}" }.joined(separator: ", ")
        return "{ \"type\": \"swtpm\", \"states\": [" + (list.isEmpty ? "" : " \(list) ") + "] }"
    }

    public static var versionText: String {
        "vtpmd \(self.version) (swtpm 0.7 socket interface, TPM 2.0 on libtpms \(Engine.libraryVersion))"
    }
}
