import Logging
import _VTPMPosix

/// Where ``StateDirectory`` keeps its entries: the stored bytes (`StateFile` containers) of the
/// blobs `permall`, `volatilestate` and `savestate`, and, where supported, the instance marker
/// (``StateDirectory/instanceName``).
protocol BlobStorage: AnyObject {
    /// Whether this process holds the storage's lock.
    var isLocked: Bool { get }
    /// Whether the `vtpm-instance.permall` marker can be kept next to the blobs.
    var keepsInstanceMarker: Bool { get }
    /// Takes the lock before anything else is touched; a no-op once it succeeded.
    func lock() throws(StateStoreError)
    /// The stored bytes of an entry, or nil if it does not exist.
    func read(_ entry: String) throws(StateStoreError) -> [UInt8]?
    /// Whether an entry exists.
    func exists(_ entry: String) throws(StateStoreError) -> Bool
    /// Writes (contents) and removes (nil) entries, in order. Removing a missing entry is fine.
    func apply(_ changes: [(name: String, contents: [UInt8]?)]) throws(StateStoreError)
    /// What shows that a TPM existed here before, for when `permall` is missing (empty: none).
    func tracesOfEarlierTPM() throws(StateStoreError) -> [String]
    /// The blobs present and the sizes swtpm's `--print-states` reports for them.
    func presentStates() throws(StateStoreError) -> [(name: String, size: Int64)]
    /// An entry as named in messages.
    func describe(_ entry: String) -> String
    /// Releases descriptors (and the lock).
    func close()
}

// MARK: - Directory

/// swtpm's directory layout: one file per entry, written atomically (temp file + rename).
final class DirectoryStorage: BlobStorage {
    let path: String
    let options: StateDirectory.Options
    private let logger: Logger
    private var directory: DirectoryHandle? = nil
    private var lockDescriptor: Int32 = -1

    init(path: String, options: StateDirectory.Options, logger: Logger) {
        self.path = path
        self.options = options
        self.logger = logger
    }

    var isLocked: Bool { self.lockDescriptor >= 0 || (self.options.readOnly && self.directory != nil) }
    var keepsInstanceMarker: Bool { true }

    func close() {
        if self.lockDescriptor >= 0 { closeDescriptor(self.lockDescriptor) }
        self.lockDescriptor = -1
        self.directory?.close()
        self.directory = nil
    }

    /// The file holding an entry: `tpm2-00.<blob>`, or the marker's own name.
    static func fileName(_ entry: String) -> String {
        entry == StateDirectory.instanceName ? entry : StateDirectory.fileName(entry)
    }

    func lock() throws(StateStoreError) {
        if self.isLocked { return }
        let dir: DirectoryHandle
        do {
            dir = try DirectoryHandle.open(self.path)
        } catch {
            throw StateStoreError(.io, "cannot open state directory: \(error)")
        }
        if self.options.readOnly {
            self.directory = dir
            return
        }
        do {
            self.lockDescriptor = try dir.lock(StateDirectory.lockName)
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

    func read(_ entry: String) throws(StateStoreError) -> [UInt8]? {
        let name = Self.fileName(entry)
        let dir = try self.handle()
        do {
            // Group/other write access is refused unless the operator configured such a mode.
            let strict = self.options.fileMode & 0o022 == 0
            return try dir.readFile(
                name,
                maxSize: StateDirectory.maximumFileSize,
                strictMode: strict,
                trustedOwner: self.options.trustDirectoryOwner ? dir.exclusiveOwner() : nil
            )
        } catch let error as HostileFileError {
            throw StateStoreError(.hostileFile, error.description)
        } catch {
            throw StateStoreError(.io, "\(error)")
        }
    }

    func exists(_ entry: String) throws(StateStoreError) -> Bool {
        try self.status(Self.fileName(entry)) != nil
    }

    /// Applies the changes in order. A change of several entries (a rekey: the marker, the state, the
    /// volatile state) is all or nothing: when one fails, those already made are undone (each entry put back
    /// as it was before), so the directory holds what it held before, and the error is thrown.
    func apply(_ changes: [(name: String, contents: [UInt8]?)]) throws(StateStoreError) {
        let dir = try self.handle()
        guard !self.options.readOnly else {
            throw StateStoreError(.io, "\(self.path) was opened read-only (in use by a running vtpmd)")
        }
        let names = changes.map(\.name)
        var previous: [String: [UInt8]?] = [:]
        if Set(names).count > 1 {
            for name in names where previous[name] == nil { previous[name] = .some(try self.read(name)) }
        }
        var done: [String] = []
        do {
            for change in changes {
                // Listed before it is tried: a failed step may have changed the disk too (a removal whose
                // directory sync failed), and putting an entry back as it was is harmless when it did not.
                if !done.contains(change.name) { done.append(change.name) }
                try self.apply(change, in: dir)
            }
        } catch {
            for name in done.reversed() {
                guard let before = previous[name] else { continue }
                do {
                    try self.apply((name, before), in: dir)
                } catch {
                    self.logger.error(
                        "could not undo the partial change of \(dir.describe(Self.fileName(name))): \(error)"
                    )
                }
            }
            throw error
        }
    }

    private func apply(_ change: (name: String, contents: [UInt8]?), in dir: DirectoryHandle) throws(StateStoreError) {
        let name = Self.fileName(change.name)
        if let contents = change.contents {
            do {
                try dir.writeFileAtomically(
                    name,
                    contents: contents,
                    mode: self.options.fileMode,
                    durable: self.options.durable
                )
            } catch {
                throw StateStoreError(.io, "writing \(dir.describe(name)) failed: \(error)")
            }
        } else {
            do { try dir.remove(name, durable: self.options.durable) } catch {
                throw StateStoreError(.io, "removing \(dir.describe(name)) failed: \(error)")
            }
        }
    }

    func tracesOfEarlierTPM() throws(StateStoreError) -> [String] {
        let dir = try self.handle()
        let names: [String]
        do { names = try dir.entries() } catch { throw StateStoreError(.io, "\(error)") }
        return names.filter { name in
            name == StateDirectory.instanceName || name.hasPrefix("tpm2-00.") || name.hasPrefix("TMP2-00.")
                || name.hasPrefix(".spare.tpm2-00.")
        }.sorted()
    }

    func presentStates() throws(StateStoreError) -> [(name: String, size: Int64)] {
        var result: [(String, Int64)] = []
        for blob in LinearStateFile.blobNames {
            if let st = try self.status(StateDirectory.fileName(blob)), st.kind == .regular {
                result.append((blob, st.size))
            }
        }
        return result
    }

    func describe(_ entry: String) -> String {
        let name = Self.fileName(entry)
        return self.path.hasSuffix("/") ? self.path + name : self.path + "/" + name
    }

    private func handle() throws(StateStoreError) -> DirectoryHandle {
        guard let dir = self.directory else { throw StateStoreError(.io, "state directory is not open") }
        return dir
    }

    private func status(_ name: String) throws(StateStoreError) -> FileStatus? {
        let dir = try self.handle()
        do { return try dir.status(name) } catch { throw StateStoreError(.io, "\(error)") }
    }
}

// MARK: - Linear file

/// swtpm's single-file store (`--tpmstate backend-uri=file://PATH`, format in
/// ``LinearStateFile``), on a regular file or a block device.
///
/// - **Lock**: the state file itself carries an OFD write lock (non-blocking), taken when it is
///   opened and held on that one descriptor for the life of the process; there is no separate
///   lock file. swtpm 0.7.1 takes no lock on a linear file at all, newer swtpm optionally an
///   fcntl lock on the file, which conflicts with ours.
/// - **Open**: `O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC`, created with the configured mode. A
///   symlink, or anything but a regular file or a block device, is refused; a regular file must
///   be ours and, unless the configured mode allows it, not writable by group or others.
/// - **Read**: once, right after locking; the decoded blobs are kept in memory. A file that is
///   empty or all zero bytes is new and is formatted with swtpm's empty header (as swtpm does);
///   any other file that does not decode is an error and is never rewritten.
/// - **Write**: every change updates the blobs in memory, encodes the whole file, writes it from
///   offset 0 over the same inode (`pwrite`), cuts a regular file to the new length
///   (`ftruncate`), and, when durable (the default; `fsync=off` turns it off), `fdatasync`s.
///   Temp file + rename is not possible here: it would leave the lock behind on the old inode
///   and cannot replace a block device.
///
/// **Not crash-atomic**, unlike the directory backend: a crash or power loss during a write can
/// leave the file with a mix of old and new bytes, and a write that fails half-way (ENOSPC, EIO)
/// can leave it damaged too. Each blob's `StateFile` integrity record makes such a mix fail to
/// load rather than load wrong state; the in-memory copy keeps the last good contents, and the
/// next successful write rewrites the whole file. Prefer the directory backend where crash
/// safety matters.
///
/// **No instance marker**: the format has no room for vtpmd's `vtpm-instance.permall`. The trace of an
/// earlier TPM is a file that decodes but, while `permall` is missing, still holds a
/// `volatilestate` or `savestate` blob: then manufacturing is refused. A new (empty or all zero)
/// file, or a formatted file without blobs, gets a new TPM.
final class LinearFileStorage: BlobStorage {
    /// Largest regular file read (and the prefix read of a block device): three blobs of at
    /// most ``StateDirectory/maximumFileSize`` each fit with room to spare.
    static let maximumFileSize = 4 << 20

    let path: String
    let options: StateDirectory.Options
    private let logger: Logger
    private var file: LockedFile? = nil
    /// The blobs as they are on disk (after the last successful read or write).
    private var contents: LinearStateFile? = nil

    init(path: String, options: StateDirectory.Options, logger: Logger) {
        self.path = path
        self.options = options
        self.logger = logger
    }

    var isLocked: Bool { self.file?.isOpen ?? false }
    var keepsInstanceMarker: Bool { false }

    func close() {
        self.file?.close()
        self.file = nil
        self.contents = nil
    }

    func lock() throws(StateStoreError) {
        if self.file == nil {
            do {
                let strict = self.options.fileMode & 0o022 == 0
                self.file = try LockedFile.openAndLock(self.path, mode: self.options.fileMode, strictMode: strict)
            } catch let error as HostileFileError {
                throw StateStoreError(.hostileFile, error.description)
            } catch let error as PosixError {
                if error.isWouldBlock {
                    throw StateStoreError(.locked, "state file \(self.path) is locked by another process")
                }
                throw StateStoreError(.io, "cannot open state file: \(error)")
            } catch {
                throw StateStoreError(.io, "cannot open state file: \(error)")
            }
        }
        if self.contents == nil {
            try self.load()
        }
    }

    /// Reads and decodes the file; formats a new one.
    private func load() throws(StateStoreError) {
        let file = try self.handle()
        let bytes: [UInt8]
        do {
            bytes = try file.readContents(maxSize: Self.maximumFileSize)
        } catch let error as HostileFileError {
            throw StateStoreError(.hostileFile, error.description)
        } catch {
            throw StateStoreError(.io, "reading state file failed: \(error)")
        }
        if LinearStateFile.isUnformatted(bytes) {
            self.logger.info("formatting \(self.path) as a new linear state file")
            try self.write(LinearStateFile())
            return
        }
        do {
            self.contents = try LinearStateFile(decoding: bytes)
        } catch {
            throw StateStoreError(error.code, "\(self.path): \(error.message)")
        }
    }

    func read(_ entry: String) throws(StateStoreError) -> [UInt8]? {
        try self.current().blobs[entry]
    }

    func exists(_ entry: String) throws(StateStoreError) -> Bool {
        try self.current().blobs[entry] != nil
    }

    func apply(_ changes: [(name: String, contents: [UInt8]?)]) throws(StateStoreError) {
        let old = try self.current()
        var next = old
        for change in changes {
            guard LinearStateFile.slot(for: change.name) != nil else {
                throw StateStoreError(.io, "a linear state file cannot hold \"\(change.name)\"")
            }
            next.blobs[change.name] = change.contents
        }
        if next == old { return }
        try self.write(next)
    }

    func tracesOfEarlierTPM() throws(StateStoreError) -> [String] {
        let blobs = try self.current().blobs
        return LinearStateFile.blobNames.filter { blobs[$0] != nil }.map { self.describe($0) }
    }

    func presentStates() throws(StateStoreError) -> [(name: String, size: Int64)] {
        let blobs = try self.current().blobs
        return LinearStateFile.blobNames.compactMap { name in blobs[name].map { (name, Int64($0.count)) } }
    }

    func describe(_ entry: String) -> String { "\(entry) in \(self.path)" }

    /// Encodes `next`, writes it in place and (when durable) syncs it; only then does it become
    /// the in-memory contents.
    private func write(_ next: LinearStateFile) throws(StateStoreError) {
        let file = try self.handle()
        let bytes = try next.encoded
        if file.kind == .blockDevice {
            let capacity: Int64
            do { capacity = try file.size() } catch {
                throw StateStoreError(.io, "writing \(self.path) failed: \(error)")
            }
            guard Int64(bytes.count) <= capacity else {
                throw StateStoreError(
                    .io,
                    "writing \(self.path) failed: the state needs \(bytes.count) bytes, the device has \(capacity)"
                )
            }
        }
        do {
            try file.writeAtStart(bytes)
            if file.kind == .regular { try file.truncate(to: bytes.count) }
            if self.options.durable { try file.synchronizeData() }
        } catch {
            throw StateStoreError(.io, "writing \(self.path) failed (the file may be partly written): \(error)")
        }
        self.contents = next
    }

    private func handle() throws(StateStoreError) -> LockedFile {
        guard let file = self.file, file.isOpen else { throw StateStoreError(.io, "state file is not open") }
        return file
    }

    private func current() throws(StateStoreError) -> LinearStateFile {
        guard let contents = self.contents else { throw StateStoreError(.io, "state file is not loaded") }
        return contents
    }
}
