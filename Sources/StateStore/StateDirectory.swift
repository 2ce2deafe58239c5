import _VTPMPosix
public import Logging

/// One VM's TPM state directory, in swtpm's layout (`tpm2-00.permall`, `tpm2-00.volatilestate`,
/// `tpm2-00.savestate`, `.lock`) plus vtpmd's `vtpm-instance` marker.
///
/// - The directory lock (`.lock`, an OFD write lock, which also excludes swtpm's fcntl lock) is
///   taken before any other file is touched and held for the life of the process.
/// - Files are read with `O_NOFOLLOW`, must be regular, ours and not writable by others, and are
///   never chmod-ed on read.
/// - Every write is temp file + write all + fsync + rename + directory fsync (`durable`).
/// - While staging (during CMD_INIT) writes stay in memory; `commitStaged` persists them, and
///   `discardStaged` drops them so a failed INIT leaves the disk unchanged.
/// - A new TPM is manufactured only in a directory with no trace of an earlier one.
public final class StateDirectory {
    public struct Options: Sendable {
        /// Mode of files vtpmd creates (swtpm's `--tpmstate mode=`); 0600 unless given.
        public var fileMode: UInt32 = 0o600
        /// fsync file and directory on every write.
        public var durable = true
        /// The state-encryption key (`--key`).
        public var stateKey: StateKey? = nil
        public init() {}
    }

    public static let lockName = ".lock"
    public static let instanceName = "vtpm-instance"
    static let maximumFileSize = 1 << 20

    public let path: String
    public let options: Options
    private let logger: Logger
    private var directory: DirectoryHandle? = nil
    private var lockDescriptor: Int32 = -1
    private var staging: [(name: String, contents: [UInt8]?)]? = nil
    private var writeGeneration: UInt64 = 0
    /// The plain permanent state as last loaded or stored.
    public private(set) var permanentState: [UInt8]? = nil
    /// The last failure, for the log line that reports a failed INIT.
    public private(set) var lastError: StateStoreError? = nil

    public init(path: String, options: Options, logger: Logger) {
        self.path = path
        self.options = options
        self.logger = logger
    }

    deinit {
        if self.lockDescriptor >= 0 { closeDescriptor(self.lockDescriptor) }
        self.directory?.close()
    }

    public static func fileName(_ blob: String) -> String { "tpm2-00." + blob }

    /// Whether this process holds the directory lock.
    public var isLocked: Bool { self.lockDescriptor >= 0 }

    /// Opens the directory and takes its lock (once; later calls are no-ops).
    public func lock() throws(StateStoreError) {
        if self.isLocked { return }
        let dir: DirectoryHandle
        do {
            dir = try DirectoryHandle.open(self.path)
        } catch {
            throw StateStoreError(.io, "cannot open state directory: \(error)")
        }
        do {
            self.lockDescriptor = try dir.lock(Self.lockName)
        } catch {
            dir.close()
            if error.isWouldBlock {
                throw StateStoreError(.locked, "state directory \(self.path) is locked by another process")
            }
            throw StateStoreError(.io, "cannot lock state directory: \(error)")
        }
        self.directory = dir
        // Temp files of an interrupted write of ours are garbage once we hold the lock.
        if let names = try? dir.entries() {
            for name in names where name.hasPrefix(".tpm2-00.") && name.contains(".tmp-") {
                _ = try? dir.remove(name, durable: false)
            }
        }
    }

    // MARK: staging

    /// Starts keeping writes in memory (CMD_INIT).
    public func beginStaging() { self.staging = [] }

    /// Persists staged writes in order (the instance marker first).
    public func commitStaged() throws(StateStoreError) {
        guard let staged = self.staging else { return }
        self.staging = nil
        let ordered = staged.filter { $0.name == Self.instanceName } + staged.filter { $0.name != Self.instanceName }
        for entry in ordered {
            if let contents = entry.contents {
                try self.writeFile(entry.name, contents)
            } else {
                try self.removeFile(entry.name)
            }
        }
    }

    /// Drops staged writes; the disk stays as it was.
    public func discardStaged() { self.staging = nil }

    // MARK: blobs

    /// Loads a libtpms blob. Returns nil when it does not exist and may be created (for "permall"
    /// only in a pristine directory); throws when it exists but cannot be used.
    public func load(_ blob: String) throws(StateStoreError) -> [UInt8]? {
        try self.lock()
        let name = Self.fileName(blob)
        let fileBytes: [UInt8]?
        if let staged = self.staging?.last(where: { $0.name == name }) {
            fileBytes = staged.contents
        } else {
            fileBytes = try self.readFile(name)
        }
        guard let fileBytes else {
            if blob == "permall" {
                let traces = try self.tracesOfEarlierTPM()
                if !traces.isEmpty {
                    throw StateStoreError(
                        .refusedManufacture,
                        "\(name) is missing but \(traces.joined(separator: ", ")) exist; refusing to manufacture a new TPM"
                    )
                }
                self.logger.info("state directory is empty: a new TPM will be manufactured", metadata: ["dir": "\(self.path)"])
            }
            return nil
        }
        do {
            let (plain, info) = try StateFile.decode(fileBytes, key: self.options.stateKey)
            if blob == "permall" {
                self.permanentState = plain
                if let generation = info.generation { self.writeGeneration = max(self.writeGeneration, generation) }
                self.logger.debug(
                    "loaded permanent state",
                    metadata: ["generation": "\(info.generation.map(String.init) ?? "none (written by swtpm)")"])
            }
            return plain
        } catch {
            throw StateStoreError(error.code, "\(self.describe(name)): \(error.message)")
        }
    }

    /// Stores a libtpms blob (staged during INIT). The first permanent state also gets the
    /// instance marker, so a later loss of `permall` is never mistaken for an empty directory.
    public func store(_ blob: String, _ plain: [UInt8]) throws(StateStoreError) {
        try self.lock()
        let name = Self.fileName(blob)
        self.writeGeneration += 1
        let contents = try StateFile.encode(plain, key: self.options.stateKey, generation: self.writeGeneration)
        if blob == "permall", try !self.exists(Self.instanceName) {
            try self.put(Self.instanceName, InstanceMarker.encode(createdBy: "vtpmd"))
        }
        try self.put(name, contents)
        if blob == "permall" { self.permanentState = plain }
    }

    /// Deletes a libtpms blob; returns whether it existed.
    @discardableResult
    public func delete(_ blob: String) throws(StateStoreError) -> Bool {
        try self.lock()
        let name = Self.fileName(blob)
        let existed = try self.exists(name)
        if self.staging != nil {
            self.staging?.append((name, nil))
        } else {
            try self.removeFile(name)
        }
        return existed
    }

    /// The state files present and their sizes (for `--print-states`).
    public func presentStates() throws(StateStoreError) -> [(name: String, size: Int64)] {
        try self.lock()
        var result: [(String, Int64)] = []
        for blob in ["permall", "volatilestate", "savestate"] {
            if let st = try self.status(Self.fileName(blob)), st.kind == .regular { result.append((blob, st.size)) }
        }
        return result
    }

    /// Records a failure for the INIT log line.
    public func noteFailure(_ error: StateStoreError) { self.lastError = error }

    // MARK: files

    private func put(_ name: String, _ contents: [UInt8]) throws(StateStoreError) {
        if self.staging != nil {
            self.staging?.append((name, contents))
        } else {
            try self.writeFile(name, contents)
        }
    }

    private func exists(_ name: String) throws(StateStoreError) -> Bool {
        if let staged = self.staging?.last(where: { $0.name == name }) { return staged.contents != nil }
        return try self.status(name) != nil
    }

    private func tracesOfEarlierTPM() throws(StateStoreError) -> [String] {
        guard let dir = self.directory else { return [] }
        let names: [String]
        do { names = try dir.entries() } catch { throw StateStoreError(.io, "\(error)") }
        return names.filter { name in
            name == Self.instanceName || name.hasPrefix("tpm2-00.") || name.hasPrefix("TMP2-00.")
        }.sorted()
    }

    private func status(_ name: String) throws(StateStoreError) -> FileStatus? {
        guard let dir = self.directory else { throw StateStoreError(.io, "state directory is not open") }
        do { return try dir.status(name) } catch { throw StateStoreError(.io, "\(error)") }
    }

    private func readFile(_ name: String) throws(StateStoreError) -> [UInt8]? {
        guard let dir = self.directory else { throw StateStoreError(.io, "state directory is not open") }
        do {
            // Group/other write access is refused unless the operator configured such a mode.
            let strict = self.options.fileMode & 0o022 == 0
            return try dir.readFile(name, maxSize: Self.maximumFileSize, strictMode: strict)
        } catch let error as HostileFileError {
            throw StateStoreError(.hostileFile, error.description)
        } catch {
            throw StateStoreError(.io, "\(error)")
        }
    }

    private func writeFile(_ name: String, _ contents: [UInt8]) throws(StateStoreError) {
        guard let dir = self.directory else { throw StateStoreError(.io, "state directory is not open") }
        do {
            try dir.writeFileAtomically(name, contents: contents, mode: self.options.fileMode, durable: self.options.durable)
        } catch {
            throw StateStoreError(.io, "writing \(self.describe(name)) failed: \(error)")
        }
    }

    private func removeFile(_ name: String) throws(StateStoreError) {
        guard let dir = self.directory else { throw StateStoreError(.io, "state directory is not open") }
        do { try dir.remove(name, durable: self.options.durable) } catch {
            throw StateStoreError(.io, "removing \(self.describe(name)) failed: \(error)")
        }
    }

    private func describe(_ name: String) -> String {
        self.path.hasSuffix("/") ? self.path + name : self.path + "/" + name
    }
}
