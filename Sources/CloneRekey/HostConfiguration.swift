import Registry
public import VMIdentity
import _VTPMPosix

/// The host's clone-rekey configuration: `/etc/vtpm/vtpmd.conf` (or `--config FILE`, or the file the
/// environment variable `VTPMD_CONFIG` names), so that programs which start vtpmd with swtpm's command
/// line (libvirt, Proxmox) get clone-rekey without adding options.
///
/// Format, like swtpm's own configuration files: one `key = value` per line, `#` starts a comment line,
/// blank lines are ignored, surrounding blanks are trimmed. Keys are vtpmd's clone-rekey long options
/// plus `vm-id-from`:
///
/// | key | value |
/// |---|---|
/// | `vm-id` | the VM's vm-id (``VMID``); a host file rarely wants it, `vm-id-from` is per VM |
/// | `vm-id-from` | a path pattern with one `{uuid}` or `{name}` placeholder (``VMIDPattern``) |
/// | `ca` | the host CA directory (absolute path) |
/// | `registry` | the registry: a SQLite file (absolute path) or a cluster's PostgreSQL (`postgresql://user@host:port/db`, ``RegistryLocation``) |
/// | `host-key` | the host key file (absolute path) |
/// | `ca-signer` | the separated CA signer's socket: EK certificates come from it, and `ca` is not read |
/// | `host-name` | this host's name in the registry's list of hosts (default: the host name) |
/// | `on-rollback` | `rekey` or `keep` |
/// | `foreign-state` | `adopt` or `rekey` |
///
/// Every error (an unreadable file, a line without `=`, an unknown or repeated key, a bad value, a
/// pattern without a placeholder) names the file, the line and the key.
public struct HostConfiguration: Sendable, Hashable {
    /// Where the configuration came from (for messages), nil when no file was read.
    public var source: String?
    public var vmID: VMID?
    public var vmIDFrom: VMIDPattern?
    public var caDirectory: String?
    /// The separated CA signer's UNIX socket (`ca-signer`).
    public var caSigner: String?
    public var registryPath: String?
    public var hostKeyPath: String?
    /// This host's name in a cluster registry's list of hosts (default: the host name).
    public var hostName: String?
    public var onRollback: RollbackPolicy?
    public var foreignState: ForeignStatePolicy?

    /// An empty configuration (no file).
    public init() {}

    /// The default location, read when it exists and nothing else names a file.
    public static let defaultPath = "/etc/vtpm/vtpmd.conf"
    /// The environment variable naming a configuration file.
    public static let environmentVariable = "VTPMD_CONFIG"
    /// Largest configuration file read.
    static let maximumSize = 64 * 1024

    /// Finds and reads the host configuration: `explicitPath` (`--config`) if given, else the file named
    /// by `VTPMD_CONFIG` in `environment`, else ``defaultPath`` if it exists; an empty configuration when
    /// none applies.
    /// - Parameters:
    ///   - explicitPath: `--config FILE`, or nil.
    ///   - environment: The process environment (only `VTPMD_CONFIG` is read).
    ///   - defaultPath: The default location (tests pass another).
    /// - Returns: The configuration.
    /// - Throws: ``HostConfigurationError`` when a named file cannot be read or does not parse, or the
    ///   default file exists and does not parse.
    public static func load(
        explicitPath: String?,
        environment: [String: String],
        defaultPath: String = HostConfiguration.defaultPath
    ) throws(HostConfigurationError) -> HostConfiguration {
        if let explicitPath { return try self.read(path: explicitPath) }
        if let named = environment[self.environmentVariable], !named.isEmpty { return try self.read(path: named) }
        return try self.read(path: defaultPath, mayBeMissing: true) ?? HostConfiguration()
    }

    /// Reads and parses one file: a regular file (no symlink followed for its last component), at most
    /// 64 KiB, not writable by group or others (it chooses the CA that certifies EKs).
    /// - Throws: ``HostConfigurationError``.
    public static func read(path: String) throws(HostConfigurationError) -> HostConfiguration {
        // Never nil: without `mayBeMissing` a missing file throws.
        try self.read(path: path, mayBeMissing: false) ?? HostConfiguration()
    }

    /// Reads one file; with `mayBeMissing`, nil when it (or its directory) does not exist. Only "no such file
    /// or directory" counts as absent: a directory vtpmd may not read (a `/etc/vtpm` of mode 0750 for a
    /// vtpmd running as another user) is an error, not a silent "clone-rekey off".
    private static func read(path: String, mayBeMissing: Bool) throws(HostConfigurationError) -> HostConfiguration? {
        guard !path.isEmpty else { throw HostConfigurationError(file: path, line: nil, key: nil, "empty file name") }
        let bytes: [UInt8]
        do {
            let (directory, name) = splitPath(path)
            let handle: DirectoryHandle
            do {
                handle = try DirectoryHandle.open(directory)
            } catch {
                if error.isNotFound && mayBeMissing { return nil }
                throw error
            }
            defer { handle.close() }
            guard let status = try handle.status(name) else {
                if mayBeMissing { return nil }
                throw HostConfigurationError(file: path, line: nil, key: nil, "cannot read: no such file")
            }
            guard status.mode & 0o022 == 0 else {
                throw HostConfigurationError(
                    file: path,
                    line: nil,
                    key: nil,
                    "is writable by group or others (mode \(String(status.mode & 0o7777, radix: 8))); refusing it"
                )
            }
            guard let read = try handle.readFile(name, maxSize: Self.maximumSize, strictMode: false) else {
                throw HostConfigurationError(file: path, line: nil, key: nil, "cannot read: no such file")
            }
            bytes = read
        } catch let error as HostConfigurationError {
            throw error
        } catch {
            throw HostConfigurationError(file: path, line: nil, key: nil, "cannot read: \(error)")
        }
        return try self.parse(bytes, source: path)
    }

    /// Parses configuration text.
    /// - Parameters:
    ///   - bytes: The file's contents (UTF-8).
    ///   - source: The file name for messages.
    /// - Throws: ``HostConfigurationError`` naming the line and key.
    public static func parse(_ bytes: [UInt8], source: String) throws(HostConfigurationError) -> HostConfiguration {
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw HostConfigurationError(file: source, line: nil, key: nil, "is not UTF-8 text")
        }
        var configuration = HostConfiguration()
        configuration.source = source
        var seen: [String] = []
        // Lines are cut on the bytes (LF, with a CR before it trimmed): cheaper than Character-wise
        // splitting, and vtpmd reads this file at every start.
        for (index, rawLine) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            .enumerated()
        {
            let lineNumber = index + 1
            let line = Self.trimmed(rawLine)
            if line.isEmpty || line.first == UInt8(ascii: "#") { continue }
            func fail(_ key: String?, _ message: String) -> HostConfigurationError {
                HostConfigurationError(file: source, line: lineNumber, key: key, message)
            }
            guard let equals = line.firstIndex(of: UInt8(ascii: "=")) else { throw fail(nil, "expected 'key = value'") }
            let key = String(decoding: Self.trimmed(line[..<equals]), as: UTF8.self)
            let value = String(decoding: Self.trimmed(line[line.index(after: equals)...]), as: UTF8.self)
            guard !key.isEmpty else { throw fail(nil, "expected 'key = value'") }
            guard Self.keys.contains(key) else {
                throw fail(key, "unknown key (known: \(Self.keys.joined(separator: ", ")))")
            }
            guard !seen.contains(key) else { throw fail(key, "given twice") }
            seen.append(key)
            guard !value.isEmpty else { throw fail(key, "needs a value") }
            switch key {
            case "vm-id":
                guard let vm = VMID(value) else { throw fail(key, "'\(value)' is not \(VMID.syntax)") }
                configuration.vmID = vm
            case "vm-id-from":
                do { configuration.vmIDFrom = try VMIDPattern(value) } catch { throw fail(key, error.message) }
            case "registry":
                guard RegistryLocation.isValid(value) else {
                    throw fail(key, "'\(value)' is neither an absolute path nor a postgresql:// URL")
                }
                configuration.registryPath = value
            case "ca", "host-key", "ca-signer":
                guard value.hasPrefix("/") else { throw fail(key, "'\(value)' is not an absolute path") }
                switch key {
                case "ca": configuration.caDirectory = value
                case "ca-signer": configuration.caSigner = value
                default: configuration.hostKeyPath = value
                }
            case "host-name":
                configuration.hostName = value
            case "on-rollback":
                guard let policy = RollbackPolicy(rawValue: value) else {
                    throw fail(key, "must be rekey or keep, not '\(value)'")
                }
                configuration.onRollback = policy
            case "foreign-state":
                guard let policy = ForeignStatePolicy(rawValue: value) else {
                    throw fail(key, "must be adopt or rekey, not '\(value)'")
                }
                configuration.foreignState = policy
            default:
                throw fail(key, "unknown key")
            }
        }
        if configuration.vmID != nil && configuration.vmIDFrom != nil {
            throw HostConfigurationError(
                file: source,
                line: nil,
                key: "vm-id",
                "vm-id and vm-id-from exclude each other (a host file names VMs by their state path)"
            )
        }
        return configuration
    }

    /// The keys a file may hold.
    public static let keys: [String] = [
        "ca", "ca-signer", "foreign-state", "host-key", "host-name", "on-rollback", "registry", "vm-id", "vm-id-from",
    ]

    private static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        func blank(_ byte: UInt8) -> Bool {
            byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\r")
        }
        var slice = bytes
        while let first = slice.first, blank(first) { slice = slice.dropFirst() }
        while let last = slice.last, blank(last) { slice = slice.dropLast() }
        return slice
    }
}

/// A host configuration that cannot be used: names the file, the line and the key where known.
public struct HostConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The configuration file.
    public var file: String
    /// The 1-based line, when the error is on one.
    public var line: Int?
    /// The key, when the error concerns one.
    public var key: String?
    /// What is wrong.
    public var message: String

    /// Creates an error.
    public init(file: String, line: Int?, key: String?, _ message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        var location = self.file
        if let line { location += ":\(line)" }
        if let key { return "\(location): \(key): \(self.message)" }
        return "\(location): \(self.message)"
    }
}
