import CloneRekey
import Registry
package import StateStore
import VMIdentity
import _VTPMPosix

/// swtpm 0.7's socket/chardev/cuse options as raw strings, turned into a `ServerConfiguration`.
/// The vtpmd executable fills this from ArgumentParser; all checking happens here.
public struct CommandLineOptions: Sendable {
    public var tpm2 = false
    public var tpmstate: String?
    public var ctrl: String?
    public var server: String?
    public var port: Int?
    public var flags: String?
    public var pid: String?
    public var log: String?
    public var daemon = false
    public var terminate = false
    public var locality: String?
    public var key: String?
    public var migrationKey: String?
    public var seccomp: String?
    public var runas: String?
    /// `--ca-signer PATH`: the separated CA signer's socket.
    public var caSigner: String?
    /// `chardev --fd N` / `socket --fd N`: an inherited connected data stream.
    public var fd: Int?
    /// `chardev --vtpm-proxy`: create a /dev/tpmN through /dev/vtpmx and serve it.
    public var vtpmProxy = false
    /// `cuse -n/--name NAME`: the CUSE device's name (/dev/NAME).
    public var cuseName: String?
    /// `cuse -M/--maj N`, `-m/--min N`: its major and minor numbers (0: the kernel chooses).
    public var cuseMajor: Int?
    public var cuseMinor: Int?
    public var environment: [String: String] = [:]
    /// The host configuration file (`--config`); else `VTPMD_CONFIG` from `environment`, else
    /// `/etc/vtpm/vtpmd.conf` if it exists.
    public var config: String?
    /// Where the host configuration is looked for when neither `--config` nor `VTPMD_CONFIG` names one.
    public var defaultConfigPath = HostConfiguration.defaultPath
    /// Clone-rekey (issue 3): `--vm-id` turns it on (or the host configuration).
    public var vmID: String?
    public var ca: String?
    public var registry: String?
    public var hostKey: String?
    public var onRollback: String?
    public var foreignState: String?

    public init() {}

    /// Log settings from `--log`.
    public struct LogSettings: Sendable {
        public var path: String?
        public var descriptor: Int32?
        public var level: Int = 1
        public var prefix: String = ""
        public var truncate = false
        public var disabled = false
    }

    public func logSettings() throws(OptionError) -> LogSettings? {
        guard let log else { return nil }
        let o = try OptionString(log, option: "--log", allowed: ["file", "fd", "level", "prefix", "truncate"])
        var s = LogSettings()
        if let path = try o.string("file") {
            if path == "-" { s.disabled = true } else { s.path = path }
        }
        if let fd = try o.integer("fd", in: 0...65535) { s.descriptor = Int32(fd) }
        guard s.path != nil || s.descriptor != nil || s.disabled else {
            throw OptionError("--log: needs file= or fd=")
        }
        s.level = try o.integer("level", in: 0...100) ?? 1
        if let prefix = try o.string("prefix") { s.prefix = prefix }
        s.truncate = try o.bool("truncate") ?? false
        return s
    }

    /// Builds and validates the server configuration.
    /// - Parameters:
    ///   - chardev: `vtpmd chardev`.
    ///   - cuse: `vtpmd cuse`.
    public func configuration(
        chardev: Bool,
        cuse: Bool = false,
        requireChannel: Bool = true
    ) throws(OptionError) -> ServerConfiguration {
        guard self.tpm2 else {
            throw OptionError("vtpmd implements TPM 2.0 only: add --tpm2")
        }
        var c = ServerConfiguration()
        // --tpmstate
        if let tpmstate {
            let o = try OptionString(tpmstate, option: "--tpmstate", allowed: ["dir", "mode", "backend-uri", "fsync"])
            if let dir = try o.string("dir") {
                c.stateDirectory = dir
            } else if let uri = try o.string("backend-uri") {
                if uri.hasPrefix("dir://") {
                    c.stateDirectory = String(uri.dropFirst("dir://".count))
                } else if uri.hasPrefix("file://") {
                    let path = String(uri.dropFirst("file://".count))
                    guard !path.isEmpty else { throw OptionError("--tpmstate: backend-uri '\(uri)' has no path") }
                    c.stateLocation = .linearFile(path)
                } else {
                    throw OptionError("--tpmstate: backend-uri '\(uri)' is not supported (dir:// or file://)")
                }
            } else {
                throw OptionError("--tpmstate: needs dir= or backend-uri=dir://... or file://...")
            }
            if let mode = try o.mode("mode") { c.stateOptions.fileMode = mode }
            if let fsync = try o.bool("fsync") { c.stateOptions.durable = fsync }
        } else if let path = self.environment["TPM_PATH"], !path.isEmpty {
            c.stateDirectory = path
        }
        // --ctrl
        if let ctrl {
            let o = try OptionString(
                ctrl,
                option: "--ctrl",
                allowed: ["type", "path", "mode", "port", "bindaddr", "fd", "clientfd", "uid", "gid"]
            )
            let owner = try o.integer("uid", in: 0...Int(Int32.max)).map { UInt32($0) }
            let group = try o.integer("gid", in: 0...Int(Int32.max)).map { UInt32($0) }
            switch try o.string("type") {
            case "unixio":
                if let fd = try o.integer("fd", in: 0...65535) {
                    c.control = .listeningDescriptor(Int32(fd))
                } else if let fd = try o.integer("clientfd", in: 0...65535) {
                    c.control = .connectedDescriptor(Int32(fd))
                } else if let path = try o.string("path") {
                    c.control = .unix(path: path, mode: try o.mode("mode"), owner: owner, group: group)
                } else {
                    throw OptionError("--ctrl type=unixio: needs path=, fd= or clientfd=")
                }
            case "tcp":
                if let fd = try o.integer("fd", in: 0...65535) {
                    c.control = .listeningDescriptor(Int32(fd))
                } else {
                    guard let port = try o.integer("port", in: 0...65535) else {
                        throw OptionError("--ctrl type=tcp: needs port=")
                    }
                    c.control = .tcp(bindAddress: try o.string("bindaddr") ?? "127.0.0.1", port: UInt16(port))
                }
            case let other:
                throw OptionError("--ctrl: type must be unixio or tcp, not '\(other ?? "")'")
            }
        }
        // --server / --port / --fd
        if let server {
            guard !chardev else { throw OptionError("--server is not available in chardev mode") }
            let o = try OptionString(
                server,
                option: "--server",
                allowed: ["type", "port", "bindaddr", "disconnect", "path", "mode", "fd", "uid", "gid"]
            )
            let owner = try o.integer("uid", in: 0...Int(Int32.max)).map { UInt32($0) }
            let group = try o.integer("gid", in: 0...Int(Int32.max)).map { UInt32($0) }
            c.disconnectAfterResponse = try o.bool("disconnect") ?? false
            switch try o.string("type") {
            case "tcp", nil:
                if let fd = try o.integer("fd", in: 0...65535) {
                    c.server = .connectedDescriptor(Int32(fd))
                } else {
                    let envPort = self.environment["TPM_PORT"].flatMap { Int($0) }
                    guard let port = try o.integer("port", in: 0...65535) ?? envPort else {
                        throw OptionError("--server type=tcp: needs port= (or TPM_PORT)")
                    }
                    c.server = .tcp(bindAddress: try o.string("bindaddr") ?? "127.0.0.1", port: UInt16(port))
                }
            case "unixio":
                if let fd = try o.integer("fd", in: 0...65535) {
                    c.server = .listeningDescriptor(Int32(fd))
                } else if let path = try o.string("path") {
                    c.server = .unix(path: path, mode: try o.mode("mode"), owner: owner, group: group)
                } else {
                    throw OptionError("--server type=unixio: needs path= or fd=")
                }
            case let other:
                throw OptionError("--server: type must be tcp or unixio, not '\(other ?? "")'")
            }
        }
        if let port {
            guard c.server == nil else { throw OptionError("--port and --server cannot be combined") }
            guard (0...65535).contains(port) else { throw OptionError("--port: \(port) is not a TCP port") }
            c.server = .tcp(bindAddress: "127.0.0.1", port: UInt16(port))
            c.disconnectAfterResponse = true
        }
        if let fd {
            guard c.server == nil else { throw OptionError("--fd and --server cannot be combined") }
            guard (0...65535).contains(fd) else { throw OptionError("--fd: \(fd) is not a descriptor") }
            c.server = .connectedDescriptor(Int32(fd))
            c.dataIsCharacterDevice = chardev
        }
        if self.vtpmProxy {
            guard chardev else { throw OptionError("--vtpm-proxy is an option of chardev mode") }
            guard c.server == nil else { throw OptionError("--vtpm-proxy and --fd cannot be combined") }
            c.server = .vtpmProxy
            c.dataIsCharacterDevice = true
        }
        if cuse {
            guard c.server == nil, c.control == nil else {
                throw OptionError("cuse mode has no --server, --port, --fd or --ctrl: the device takes both channels")
            }
            guard let name = self.cuseName, !name.isEmpty else { throw OptionError("cuse mode needs -n/--name NAME") }
            guard !name.contains("/"), name != ".", name != "..", name.utf8.count <= 128 else {
                throw OptionError("--name: '\(name)' is not a device name (no '/', at most 128 bytes)")
            }
            var device = ServerConfiguration.CUSEDevice(name: name)
            if let major = self.cuseMajor {
                guard (0...4095).contains(major) else { throw OptionError("--maj: \(major) is not a major number") }
                device.major = UInt32(major)
            }
            if let minor = self.cuseMinor {
                guard (0...1_048_575).contains(minor) else {
                    throw OptionError("--min: \(minor) is not a minor number")
                }
                device.minor = UInt32(minor)
            }
            guard device.minor == 0 || device.major != 0 else { throw OptionError("--min needs --maj") }
            c.cuse = device
        } else if self.cuseName != nil || self.cuseMajor != nil || self.cuseMinor != nil {
            throw OptionError("--name, --maj and --min are options of cuse mode")
        }
        if requireChannel && chardev && c.server == nil {
            throw OptionError("chardev mode needs --fd N or --vtpm-proxy")
        }
        if requireChannel && !chardev && !cuse && c.server == nil && c.control == nil {
            throw OptionError("socket mode needs --server, --port, --fd or --ctrl")
        }
        c.terminateOnDataLoss = self.terminate
        // --flags
        if let flags {
            let o = try OptionString(
                flags,
                option: "--flags",
                allowed: [
                    "not-need-init", "startup-clear", "startup-state", "startup-deactivated", "startup-none",
                    "disable-auto-shutdown",
                ]
            )
            c.notNeedInit = try o.bool("not-need-init") ?? false
            let startups = ["startup-clear", "startup-state", "startup-deactivated", "startup-none"].filter {
                o.has($0)
            }
            guard startups.count <= 1 else { throw OptionError("--flags: only one startup-* may be given") }
            switch startups.first {
            case "startup-clear": c.startup = .clear
            case "startup-state": c.startup = .state
            case "startup-deactivated":
                throw OptionError("--flags: startup-deactivated is a TPM 1.2 startup type; a TPM 2.0 has none")
            default: break
            }
            if try o.bool("disable-auto-shutdown") == true { c.autoShutdown = false }
        }
        // --pid
        if let pid {
            let o = try OptionString(pid, option: "--pid", allowed: ["file", "fd"])
            if let file = try o.string("file") {
                c.pidFile = file
            } else if let fd = try o.integer("fd", in: 0...65535) {
                c.pidDescriptor = Int32(fd)
            } else {
                throw OptionError("--pid: needs file= or fd=")
            }
        }
        // --locality
        if let locality {
            let o = try OptionString(
                locality,
                option: "--locality",
                allowed: ["reject-locality-4", "allow-set-locality"]
            )
            c.rejectLocality4 = try o.bool("reject-locality-4") ?? false
            c.allowSetLocality = try o.bool("allow-set-locality") ?? false
        }
        // --key / --migration-key
        if let key { c.stateOptions.stateKey = try Self.parseKey(key, option: "--key") }
        if let migrationKey {
            let o = try OptionString(
                migrationKey,
                option: "--migration-key",
                allowed: Self.keyParameters.union(["strict"])
            )
            c.migrationKey = try Self.parseKey(migrationKey, option: "--migration-key", strictAllowed: true)
            if try o.bool("strict") == true { c.migrationPolicy = .strict }
        }
        try self.applyIdentity(to: &c)
        if self.vtpmProxy {
            // As swtpm: the kernel sends its commands as soon as the device exists (so the TPM runs without
            // CMD_INIT), and switches localities with the in-band TPM2_CC_SET_LOCALITY.
            c.notNeedInit = true
            c.allowSetLocality = true
            // swtpm sends TPM2_Startup(CLEAR) itself unless --flags names another startup type.
            let startupNamed = self.flags.map { $0.contains("startup-") } ?? false
            if !startupNamed { c.startup = .clear }
        }
        // --seccomp action=none|kill|log (swtpm's option; kill when absent, as swtpm's default).
        if let seccomp {
            let o = try OptionString(seccomp, option: "--seccomp", allowed: ["action"])
            guard let name = try o.string("action"), let action = SeccompProfile.Action(rawValue: name) else {
                throw OptionError("--seccomp: action must be none, kill or log")
            }
            c.seccomp = action
        }
        return c
    }

    /// Clone-rekey from the command line and the host configuration (the command line wins): a vm-id
    /// from `--vm-id`, the file's `vm-id`, or its `vm-id-from` pattern over the state path. A state path
    /// the pattern does not match runs without identity (``ServerConfiguration/identityNote`` says why).
    func applyIdentity(to c: inout ServerConfiguration) throws(OptionError) {
        let host: HostConfiguration
        do {
            host = try HostConfiguration.load(
                explicitPath: self.config,
                environment: self.environment,
                defaultPath: self.defaultConfigPath
            )
        } catch {
            throw OptionError("configuration: \(error)")
        }
        var vm: VMID? = nil
        if let vmID {
            guard let parsed = VMID(vmID) else { throw OptionError("--vm-id: '\(vmID)' is not \(VMID.syntax)") }
            vm = parsed
        } else if host.vmID != nil || host.vmIDFrom != nil, case .connectedDescriptor = c.control {
            // swtpm_setup's own run (control over the socketpair it passes as clientfd=): it writes its EKs
            // and certificates itself, so the TPM it manufactures must be a plain one; the VM's first real
            // start then adopts it (foreign-state) under the host configuration's identity.
            c.identityNote =
                "control over an inherited connection (swtpm_setup): the host configuration's "
                + "clone-rekey is not applied to this run"
        } else if let fixed = host.vmID {
            vm = fixed
        } else if let pattern = host.vmIDFrom {
            let path = c.stateLocation?.path ?? ""
            vm = pattern.vmID(forPath: path)
            if vm == nil {
                c.identityNote =
                    "state path '\(path)' does not match vm-id-from '\(pattern)' (\(host.source ?? "")): "
                    + "running without clone-rekey"
            }
        }
        let ca = self.ca ?? host.caDirectory
        // An explicit --ca wins over the file's ca-signer (and --ca-signer over the file's ca).
        let caSigner = self.caSigner ?? (self.ca == nil ? host.caSigner : nil)
        let registry = self.registry ?? host.registryPath
        let hostKey = self.hostKey ?? host.hostKeyPath
        var onRollback = host.onRollback
        if let text = self.onRollback {
            guard let policy = RollbackPolicy(rawValue: text) else {
                throw OptionError("--on-rollback: must be rekey or keep, not '\(text)'")
            }
            onRollback = policy
        }
        var foreignState = host.foreignState
        if let text = self.foreignState {
            guard let policy = ForeignStatePolicy(rawValue: text) else {
                throw OptionError("--foreign-state: must be adopt or rekey, not '\(text)'")
            }
            foreignState = policy
        }
        guard let vm else {
            let given =
                self.ca != nil || self.caSigner != nil || self.registry != nil || self.hostKey != nil
                || self.onRollback != nil
                || self.foreignState != nil
            if given && host.vmIDFrom == nil {
                throw OptionError(
                    "--ca, --ca-signer, --registry, --host-key, --on-rollback and --foreign-state need --vm-id"
                )
            }
            return
        }
        guard c.stateLocation != nil else {
            throw OptionError("clone-rekey (vm-id \(vm)) needs --tpmstate (the identity is recorded in the state)")
        }
        var identity = IdentityConfiguration(
            vmID: vm,
            caDirectory: ca,
            registryPath: registry ?? IdentityConfiguration.defaultRegistryPath,
            hostKeyPath: hostKey ?? IdentityConfiguration.defaultHostKeyPath
        )
        if let onRollback { identity.onRollback = onRollback }
        if let foreignState { identity.foreignState = foreignState }
        if let name = host.hostName { identity.hostName = name }
        identity.caSigner = caSigner
        identity.loadCAAtStart = self.runas != nil
        c.identity = identity
    }

    static let keyParameters: Set<String> = ["file", "fd", "pwdfile", "pwdfd", "format", "mode", "kdf", "remove"]

    /// swtpm's key syntax: `file=F|fd=N[,format=hex|binary]` or `pwdfile=F|pwdfd=N[,kdf=pbkdf2|sha512]`,
    /// `mode=aes-cbc|aes-128-cbc|aes-256-cbc`, `remove[=true|false]`.
    package static func parseKey(
        _ text: String,
        option: String,
        strictAllowed: Bool = false
    ) throws(OptionError) -> StateKey {
        let o = try OptionString(
            text,
            option: option,
            allowed: strictAllowed ? keyParameters.union(["strict"]) : keyParameters
        )
        let size: StateKey.Size
        switch try o.string("mode") ?? "aes-128-cbc" {
        case "aes-cbc", "aes-128-cbc": size = .aes128
        case "aes-256-cbc": size = .aes256
        case let other: throw OptionError("\(option): unknown mode '\(other)' (aes-128-cbc or aes-256-cbc)")
        }
        let sources = ["file", "fd", "pwdfile", "pwdfd"].filter { o.has($0) }
        guard sources.count == 1 else {
            throw OptionError("\(option): give exactly one of file=, fd=, pwdfile=, pwdfd=")
        }
        let source = sources[0]
        let isPassphrase = source.hasPrefix("pwd")
        let contents: [UInt8]
        var path: String? = nil
        do {
            if source == "file" || source == "pwdfile" {
                path = try o.string(source)
                contents = try readWholeFile(path: path ?? "", maxSize: 4096)
            } else {
                let fd = try o.integer(source, in: 0...65535) ?? -1
                contents = try readAll(fd: Int32(fd), maxSize: 4096)
                closeDescriptor(Int32(fd))
            }
        } catch let error as OptionError {
            throw error
        } catch {
            throw OptionError("\(option): cannot read the key: \(error)")
        }
        let key: StateKey
        do {
            if isPassphrase {
                guard !o.has("format") else { throw OptionError("\(option): format= applies to file=/fd= keys only") }
                let kdf: StateKey.KeyDerivation
                switch try o.string("kdf") ?? "pbkdf2" {
                case "pbkdf2": kdf = .pbkdf2
                case "sha512": kdf = .sha512
                case let other: throw OptionError("\(option): unknown kdf '\(other)' (pbkdf2 or sha512)")
                }
                key = try StateKey(passphrase: contents, size: size, derivation: kdf)
            } else {
                guard !o.has("kdf") else { throw OptionError("\(option): kdf= applies to passphrases only") }
                switch try o.string("format") ?? "hex" {
                case "hex": key = try StateKey(hexFile: contents, size: size)
                case "binary":
                    guard contents.count == size.rawValue else {
                        throw OptionError(
                            "\(option): a binary key for \(size.rawValue * 8) bits must be \(size.rawValue) bytes, got \(contents.count)"
                        )
                    }
                    key = try StateKey(bytes: contents)
                case let other: throw OptionError("\(option): unknown format '\(other)' (hex or binary)")
                }
            }
        } catch let error as OptionError {
            throw error
        } catch {
            throw OptionError("\(option): \(error)")
        }
        if try o.bool("remove") == true, let path { removePath(path) }
        return key
    }
}
