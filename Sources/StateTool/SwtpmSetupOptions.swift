/// swtpm_setup 0.7.1's command line, as libvirt, Proxmox and operators give it, parsed the way its
/// `getopt_long` does: `--name value` or `--name=value`, a unique prefix of a name stands for it, `-h`
/// and `-?` ask for help. Values are checked here only where swtpm_setup checks them at parse time (file
/// descriptors); the rest is checked by ``SwtpmSetup``.
public struct SwtpmSetupOptions: Sendable, Hashable {
    /// `--tpm-state`/`--tpmstate`: `dir://PATH`, `file://PATH` or a plain directory path.
    public var tpmState: String?
    public var tpm2 = false
    public var ecc = false
    public var createEK = false
    public var createEKCertificate = false
    public var createPlatformCertificate = false
    public var lockNVRAM = false
    public var overwrite = false
    public var notOverwrite = false
    public var reconfigure = false
    public var printCapabilities = false
    public var version = false
    public var help = false
    /// `-?`: the usage, exit status 1 (swtpm_setup's getopt reports it like an unknown option).
    public var helpAsError = false
    /// `--vmid`: libvirt gives `NAME:UUID`.
    public var vmid: String?
    public var logfile: String?
    /// `--config`: swtpm_setup's own configuration file (read for `active_pcr_banks`).
    public var config: String?
    public var runas: String?
    public var pwdfile: String?
    public var pwdfileFD: Int32?
    public var keyfile: String?
    public var keyfileFD: Int32?
    public var cipher: String?
    /// `--pcr-banks`, repeated ones joined with commas as swtpm_setup does.
    public var pcrBanks: String?
    /// Options this tool does not implement itself (they go to swtpm's own swtpm_setup), by name.
    public var delegated: [String] = []
    /// Options accepted and ignored with a note, as swtpm_setup ignores its deprecated ones.
    public var ignored: [String] = []

    public init() {}

    /// Why a command line does not parse; swtpm_setup prints its usage and exits 1 then.
    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        public var description: String
    }

    enum Argument { case none, required, optional }

    /// Every long option of swtpm_setup 0.7.1 and whether it takes a value.
    static let table: [(name: String, argument: Argument)] = [
        ("tpm-state", .required), ("tpmstate", .required), ("tpm", .required), ("swtpm_ioctl", .required),
        ("tpm2", .none), ("ecc", .none), ("createek", .none), ("create-spk", .none), ("take-ownership", .none),
        ("ownerpass", .required), ("owner-well-known", .none), ("srkpass", .required), ("srk-well-known", .none),
        ("create-ek-cert", .none), ("create-platform-cert", .none), ("lock-nvram", .none), ("display", .none),
        ("config", .required), ("vmid", .required), ("keyfile", .required), ("keyfile-fd", .required),
        ("pwdfile", .required), ("pwdfile-fd", .required), ("cipher", .required), ("runas", .required),
        ("logfile", .required), ("overwrite", .none), ("not-overwrite", .none), ("allow-signing", .none),
        ("decryption", .none), ("pcr-banks", .required), ("rsa-keysize", .required),
        ("write-ek-cert-files", .required), ("create-config-files", .optional), ("tcsd-system-ps-file", .required),
        ("version", .none), ("print-capabilities", .none), ("reconfigure", .none), ("help", .none),
    ]

    /// Parses `arguments` (without the program name).
    /// - Throws: ``ParseError`` for an unknown or ambiguous option, a missing or unexpected value, a file
    ///   descriptor that is not a number, or a stray argument.
    public static func parse(_ arguments: [String]) throws(ParseError) -> SwtpmSetupOptions {
        var options = SwtpmSetupOptions()
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            if word == "-h" || word == "-?" {
                if word == "-h" { options.help = true } else { options.helpAsError = true }
                continue
            }
            guard word.hasPrefix("--"), word.count > 2 else {
                throw ParseError(description: "unexpected argument '\(word)'")
            }
            let body = word.dropFirst(2)
            let name: String
            var value: String? = nil
            if let equals = body.firstIndex(of: "=") {
                name = String(body[..<equals])
                value = String(body[body.index(after: equals)...])
            } else {
                name = String(body)
            }
            let option = try self.lookUp(name)
            switch option.argument {
            case .none:
                if value != nil { throw ParseError(description: "option '--\(option.name)' doesn't allow an argument") }
            case .optional:
                // swtpm_setup takes a following word that does not start with '0' (sic) as the argument.
                if value == nil, index < arguments.count, !arguments[index].hasPrefix("-"),
                    !arguments[index].hasPrefix("0")
                {
                    value = arguments[index]
                    index += 1
                }
            case .required:
                if value == nil {
                    guard index < arguments.count else {
                        throw ParseError(description: "option '--\(option.name)' requires an argument")
                    }
                    value = arguments[index]
                    index += 1
                }
            }
            try options.apply(option.name, value ?? "")
        }
        return options
    }

    /// The option `name` names: itself, or the one long option it is a prefix of.
    static func lookUp(_ name: String) throws(ParseError) -> (name: String, argument: Argument) {
        if let exact = self.table.first(where: { $0.name == name }) { return exact }
        let candidates = self.table.filter { $0.name.hasPrefix(name) }
        guard let first = candidates.first else { throw ParseError(description: "unrecognized option '--\(name)'") }
        guard candidates.count == 1 else {
            throw ParseError(
                description: "option '--\(name)' is ambiguous; possibilities: "
                    + candidates.map { "'--\($0.name)'" }.joined(separator: " ")
            )
        }
        return first
    }

    mutating func apply(_ name: String, _ value: String) throws(ParseError) {
        switch name {
        case "tpm-state", "tpmstate": self.tpmState = value
        case "tpm2": self.tpm2 = true
        case "ecc": self.ecc = true
        case "createek": self.createEK = true
        case "create-ek-cert": self.createEKCertificate = true
        case "create-platform-cert": self.createPlatformCertificate = true
        case "lock-nvram": self.lockNVRAM = true
        case "overwrite": self.overwrite = true
        case "not-overwrite": self.notOverwrite = true
        case "reconfigure": self.reconfigure = true
        case "print-capabilities": self.printCapabilities = true
        case "version": self.version = true
        case "help": self.help = true
        case "vmid": self.vmid = value
        case "logfile": self.logfile = value
        case "config": self.config = value
        case "runas": self.runas = value
        case "pwdfile": self.pwdfile = value
        case "keyfile": self.keyfile = value
        case "cipher": self.cipher = value
        case "pwdfile-fd": self.pwdfileFD = try Self.descriptor(value)
        case "keyfile-fd": self.keyfileFD = try Self.descriptor(value)
        case "pcr-banks":
            let trimmed = value.trimmingBlanks
            self.pcrBanks = self.pcrBanks.map { $0 + "," + trimmed } ?? trimmed
        case "swtpm_ioctl", "tcsd-system-ps-file": self.ignored.append(name)
        default:
            // tpm, create-spk, take-ownership, ownerpass, owner-well-known, srkpass, srk-well-known, display,
            // allow-signing, decryption, rsa-keysize, write-ek-cert-files, create-config-files.
            if name == "rsa-keysize" && value == "2048" { return }
            self.delegated.append(name)
        }
    }

    /// `arguments` without `--runas USER` / `--runas=USER` (and their unique prefixes), for swtpm's tool run
    /// after this process already changed user.
    public static func removingRunas(_ arguments: [String]) -> [String] {
        var result: [String] = []
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            let name = word.hasPrefix("--") ? String(word.dropFirst(2).prefix { $0 != "=" }) : ""
            if name.count >= 2, (try? self.lookUp(name))?.name == "runas" {
                if !word.contains("=") { index += 1 }
                continue
            }
            result.append(word)
        }
        return result
    }

    static func descriptor(_ text: String) throws(ParseError) -> Int32 {
        guard let fd = Int32(text), fd >= 0 else { throw ParseError(description: "Invalid file descriptor '\(text)'") }
        return fd
    }
}

extension String {
    /// Without leading and trailing spaces and tabs.
    var trimmingBlanks: String {
        let blanks: Set<Character> = [" ", "\t", "\n", "\r"]
        guard let first = self.firstIndex(where: { !blanks.contains($0) }),
            let last = self.lastIndex(where: { !blanks.contains($0) })
        else { return "" }
        return String(self[first...last])
    }
}
