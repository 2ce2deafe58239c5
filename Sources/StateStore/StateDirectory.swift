public import Logging
import _VTPMPosix

/// Where one VM's TPM state lives (`--tpmstate`).
public enum StateLocation: Sendable, Hashable {
    /// A directory in swtpm's layout (`dir=PATH`, `backend-uri=dir://PATH`).
    case directory(String)
    /// One file (or block device) in swtpm's linear format (`backend-uri=file://PATH`).
    case linearFile(String)

    /// The directory or file path.
    public var path: String {
        switch self {
        case .directory(let path), .linearFile(let path): path
        }
    }
}

/// One VM's TPM state: the libtpms blobs `permall`, `volatilestate` and `savestate`, each in a
/// `StateFile` container (swtpm's header and TLVs plus vtpmd's integrity record, optionally
/// encrypted with `--key`), kept in one of two places (``StateLocation``).
///
/// **Directory** (`.directory`), in swtpm's layout (`tpm2-00.permall`, `tpm2-00.volatilestate`,
/// `tpm2-00.savestate`, `.lock`) plus vtpmd's `vtpm-instance.permall` marker:
/// - The directory lock (`.lock`, an OFD write lock, which also excludes swtpm's fcntl lock) is
///   taken before any other file is touched and held for the life of the process.
/// - Files are read with `O_NOFOLLOW`, must be regular, ours and not writable by others, and are
///   never chmod-ed on read.
/// - Every write is temp file + write all + fsync + rename + directory fsync (`durable`), so a
///   crash leaves either the old or the new file.
///
/// **Linear file** (`.linearFile`), swtpm's single-file format (see ``LinearStateFile``): the
/// file itself is locked, read once and kept in memory, and every change rewrites it in place.
/// That backend is not crash-atomic; see ``LinearFileStorage`` for the details.
///
/// For both:
/// - While staging (during CMD_INIT) writes stay in memory; `commitStaged` persists them, and
///   `discardStaged` drops them so a failed INIT leaves the storage unchanged.
/// - A new TPM is manufactured only where there is no trace of an earlier one.
public final class StateDirectory {
    public struct Options: Sendable {
        /// Mode of files vtpmd creates (swtpm's `--tpmstate mode=`); 0600 unless given.
        public var fileMode: UInt32 = 0o600
        /// fsync (fdatasync for a linear file) on every write.
        public var durable = true
        /// The state-encryption key (`--key`).
        public var stateKey: StateKey? = nil
        /// Read a directory without taking its lock (one a running vtpmd holds): every file is read
        /// as it was last renamed into place, and nothing is written (writes fail).
        public var readOnly = false
        /// Run by root, also accept files owned by the user who alone can write the directory (an operator's
        /// vtpm-state on libvirt's swtpm-user directories); vtpmd itself reads only its own files.
        public var trustDirectoryOwner = false
        public init() {}
    }

    public static let lockName = ".lock"
    /// The marker's name ends in "permall" on purpose: `swtpm_setup --overwrite` deletes every file
    /// whose name ends in permall/volatilestate/savestate, so the marker goes with the state it
    /// belongs to when an operator deliberately re-creates a TPM.
    public static let instanceName = "vtpm-instance.permall"
    static let maximumFileSize = 1 << 20

    public let location: StateLocation
    public let options: Options
    private let logger: Logger
    private let storage: any BlobStorage
    /// Writes (contents) and deletions (nil) by entry: a blob name or ``instanceName``.
    private var staging: [(name: String, contents: [UInt8]?)]? = nil
    private var writeGeneration: UInt64 = 0
    /// The instance marker is known to be on disk.
    private var instanceMarkerPresent = false
    /// The identity a newly manufactured TPM gets in its marker and its permanent state (`--vm-id`).
    public var identityForNewTPM: InstanceIdentity? = nil
    /// The identity every permanent-state write carries (``IdentityRecord``): the one the stored state
    /// recorded, or the one last given to ``recordIdentity(_:)``; nil: ``identityForNewTPM``, or none.
    private var carriedIdentity: InstanceIdentity? = nil
    /// The plain permanent state as last loaded or stored.
    public private(set) var permanentState: [UInt8]? = nil
    /// What this process knows of a permanent-state file.
    private struct PermanentFile {
        var plain: [UInt8]
        var identity: InstanceIdentity?
        /// The integrity record's write generation; nil for a file written by swtpm.
        var writeGeneration: UInt64?
        /// The file is in the form vtpmd would write now (its integrity record, encrypted exactly when a key
        /// is configured, intact), so a rewrite of the same bytes and identity may be skipped.
        var inCurrentForm: Bool
    }
    /// The permanent state on disk (as loaded, or as last committed by this process), and the last one staged.
    private var committedPermanent: PermanentFile? = nil
    private var stagedPermanent: PermanentFile? = nil
    /// The write generation (integrity record) of the permanent state on disk: as loaded, or as last
    /// committed by this process; nil before either, or for a file written by swtpm.
    public var permanentWriteGeneration: UInt64? { self.committedPermanent?.writeGeneration }
    /// The in-memory view before `beginStaging`, restored by `discardStaged`.
    private var beforeStaging: (permanentState: [UInt8]?, carriedIdentity: InstanceIdentity?)? = nil

    public init(location: StateLocation, options: Options, logger: Logger) {
        self.location = location
        self.options = options
        self.logger = logger
        switch location {
        case .directory(let path):
            self.storage = DirectoryStorage(path: path, options: options, logger: logger)
        case .linearFile(let path):
            self.storage = LinearFileStorage(path: path, options: options, logger: logger)
        }
    }

    /// A state directory (`dir=PATH`).
    public convenience init(path: String, options: Options, logger: Logger) {
        self.init(location: .directory(path), options: options, logger: logger)
    }

    deinit {
        self.storage.close()
    }

    /// The directory or file path.
    public var path: String { self.location.path }

    public static func fileName(_ blob: String) -> String { "tpm2-00." + blob }

    /// Whether this process holds the lock (of the directory or of the linear file).
    public var isLocked: Bool { self.storage.isLocked }

    /// Opens the storage and takes its lock (once; later calls are no-ops). For a linear file
    /// this also reads and checks it, and formats it if it is new (empty or all zero).
    public func lock() throws(StateStoreError) {
        try self.storage.lock()
    }

    // MARK: staging

    /// Starts keeping writes in memory (CMD_INIT).
    public func beginStaging() {
        self.staging = []
        self.beforeStaging = (self.permanentState, self.carriedIdentity)
    }

    /// Persists staged writes in order (the instance marker first). A linear file is written
    /// once, with all of them.
    public func commitStaged() throws(StateStoreError) {
        guard let staged = self.staging else { return }
        self.staging = nil
        // libtpms rewrites permall on every NV change: of a name's staged versions only the last two
        // are written (two, so that the spare file of the durable commit ends up holding the final
        // version too; see `writeFileAtomically`), and deletions stay in place.
        var seen: [String: Int] = [:]
        var kept: [(name: String, contents: [UInt8]?)] = []
        for entry in staged.reversed() {
            let count = seen[entry.name, default: 0]
            if entry.contents != nil && count >= 2 { continue }
            seen[entry.name] = count + 1
            kept.append(entry)
        }
        kept.reverse()
        let ordered = kept.filter { $0.name == Self.instanceName } + kept.filter { $0.name != Self.instanceName }
        if ordered.isEmpty { return }
        self.beforeStaging = nil
        do {
            try self.storage.apply(ordered)
        } catch {
            // What is on disk is no longer known (a linear file is rewritten in place).
            self.committedPermanent?.inCurrentForm = false
            self.stagedPermanent = nil
            throw error
        }
        if let staged = self.stagedPermanent { self.committedPermanent = staged }
        if ordered.contains(where: { $0.name == "permall" && $0.contents == nil }) { self.committedPermanent = nil }
        self.stagedPermanent = nil
        if ordered.contains(where: { $0.name == Self.instanceName && $0.contents != nil }) {
            self.instanceMarkerPresent = true
        }
    }

    /// Drops staged writes; the storage stays as it was.
    public func discardStaged() {
        self.staging = nil
        self.stagedPermanent = nil
        // What a discarded attempt loaded or stored must not be taken for the stored state later.
        if let before = self.beforeStaging {
            self.permanentState = before.permanentState
            self.carriedIdentity = before.carriedIdentity
        }
        self.beforeStaging = nil
    }

    // MARK: blobs

    /// Loads a libtpms blob. Returns nil when it does not exist and may be created (for "permall"
    /// only where there is no trace of an earlier TPM); throws when it exists but cannot be used.
    public func load(_ blob: String) throws(StateStoreError) -> [UInt8]? {
        try self.lock()
        let stored: [UInt8]?
        if let staged = self.staging?.last(where: { $0.name == blob }) {
            stored = staged.contents
        } else {
            stored = try self.storage.read(blob)
        }
        guard let stored else {
            if blob == "permall" {
                let traces = try self.storage.tracesOfEarlierTPM()
                if !traces.isEmpty {
                    throw StateStoreError(
                        .refusedManufacture,
                        "\(self.storage.describe(blob)) is missing but \(traces.joined(separator: ", ")) exist; "
                            + "refusing to manufacture a new TPM"
                    )
                }
                self.logger.info(
                    "no earlier TPM state: a new TPM will be manufactured",
                    metadata: ["state": "\(self.path)"]
                )
            }
            return nil
        }
        do {
            let (plain, info) = try StateFile.decode(stored, key: self.options.stateKey)
            if blob == "permall" {
                self.permanentState = plain
                if let identity = info.identity {
                    self.carriedIdentity = identity
                } else if self.carriedIdentity == nil, let marker = try? self.markerIdentity(), marker.vmID != nil {
                    // No record (swtpm rewrote the file): the marker's identity is the state's, and the next
                    // write records it in the file again.
                    self.carriedIdentity = marker
                }
                if self.staging?.contains(where: { $0.name == blob }) != true {
                    self.committedPermanent = PermanentFile(
                        plain: plain,
                        identity: info.identity,
                        writeGeneration: info.generation,
                        inCurrentForm: info.generation != nil && info.encrypted == (self.options.stateKey != nil)
                    )
                }
                if let generation = info.generation { self.writeGeneration = max(self.writeGeneration, generation) }
                self.logger.debug(
                    "loaded permanent state",
                    metadata: ["generation": "\(info.generation.map(String.init) ?? "none (written by swtpm)")"]
                )
            }
            return plain
        } catch {
            throw StateStoreError(error.code, "\(self.storage.describe(blob)): \(error.message)")
        }
    }

    /// Stores a libtpms blob (staged during INIT). In a directory, the first permanent state also
    /// gets the instance marker, so a later loss of `permall` is never mistaken for an empty
    /// directory (a linear file has no room for the marker).
    public func store(_ blob: String, _ plain: [UInt8]) throws(StateStoreError) {
        try self.lock()
        let identity = blob == "permall" ? (self.carriedIdentity ?? self.identityForNewTPM) : nil
        if blob == "permall", let committed = self.committedPermanent, committed.inCurrentForm,
            committed.plain == plain, committed.identity == identity,
            self.staging?.contains(where: { $0.name == blob }) != true
        {
            // libtpms writes the permanent state at every start even when nothing changed: the file on disk
            // already holds exactly these bytes (and identity), so there is nothing to make durable.
            return
        }
        self.writeGeneration += 1
        let contents = try StateFile.encode(
            plain,
            key: self.options.stateKey,
            generation: self.writeGeneration,
            identity: identity
        )
        // The marker is looked for once per process (a store happens on every NV write).
        if blob == "permall", self.storage.keepsInstanceMarker, !self.instanceMarkerPresent {
            if try !self.exists(Self.instanceName) {
                let identity =
                    self.carriedIdentity ?? self.identityForNewTPM ?? InstanceIdentity(vmID: nil, generation: 0)
                try self.put(Self.instanceName, InstanceMarker.encode(identity))
            }
            // Staged writes may still be discarded: only a write that reached the disk counts.
            self.instanceMarkerPresent = self.staging == nil
        }
        try self.put(blob, contents)
        if blob == "permall" {
            self.permanentState = plain
            let file = PermanentFile(
                plain: plain,
                identity: identity,
                writeGeneration: self.writeGeneration,
                inCurrentForm: true
            )
            if self.staging != nil {
                self.stagedPermanent = file
            } else {
                self.committedPermanent = file
            }
        }
    }

    /// The identity of the stored TPM state (staged writes included): the identity record inside the
    /// permanent state, which wins because it is written atomically with the state it describes; where
    /// the permanent state carries none (rewritten by swtpm, or written before identity records), the
    /// directory's marker; nil where neither exists (no TPM yet, swtpm's state).
    public func identity() throws(StateStoreError) -> InstanceIdentity? {
        try self.storedState().identity
    }

    /// What the stored TPM state says about itself, read without handing it to libtpms.
    public struct StoredState: Sendable, Hashable {
        /// The identity (see ``StateDirectory/identity()``).
        public var identity: InstanceIdentity?
        /// The permanent state's write generation (integrity record); nil when there is no permanent
        /// state or swtpm wrote it.
        public var permanentWriteGeneration: UInt64?
        /// Whether a permanent state exists.
        public var hasPermanentState: Bool
    }

    /// The identity and write generation of the stored state (staged writes included).
    public func storedState() throws(StateStoreError) -> StoredState {
        try self.lock()
        let permanent: [UInt8]?
        if let staged = self.staging?.last(where: { $0.name == "permall" }) {
            permanent = staged.contents
        } else {
            permanent = try self.storage.read("permall")
        }
        var write: UInt64? = nil
        if let permanent {
            do {
                let (_, info) = try StateFile.decode(permanent, key: self.options.stateKey, decrypt: false)
                write = info.generation
                if let identity = info.identity {
                    return StoredState(identity: identity, permanentWriteGeneration: write, hasPermanentState: true)
                }
            } catch {
                throw StateStoreError(error.code, "\(self.storage.describe("permall")): \(error.message)")
            }
        }
        return StoredState(
            identity: try self.markerIdentity(),
            permanentWriteGeneration: write,
            hasPermanentState: permanent != nil
        )
    }

    /// The identity in the directory's marker (staged writes included), or nil.
    public func markerIdentity() throws(StateStoreError) -> InstanceIdentity? {
        try self.lock()
        guard self.storage.keepsInstanceMarker else { return nil }
        let stored: [UInt8]?
        if let staged = self.staging?.last(where: { $0.name == Self.instanceName }) {
            stored = staged.contents
        } else {
            stored = try self.storage.read(Self.instanceName)
        }
        guard let stored else { return nil }
        do {
            return try InstanceMarker.decode(stored)
        } catch {
            throw StateStoreError(error.code, "\(self.storage.describe(Self.instanceName)): \(error.message)")
        }
    }

    /// Records the TPM's identity (staged during INIT, like every write): in the permanent state's
    /// identity record (the permanent state is written again if there is one, so the identity travels
    /// with it; otherwise the first one carries it) and, in a directory, in the marker.
    public func recordIdentity(_ identity: InstanceIdentity) throws(StateStoreError) {
        try self.lock()
        self.carriedIdentity = identity
        if self.storage.keepsInstanceMarker {
            try self.put(Self.instanceName, InstanceMarker.encode(identity))
            if self.staging == nil { self.instanceMarkerPresent = true }
        }
        if self.permanentState == nil, try self.exists("permall") { _ = try self.load("permall") }
        // Loading may have picked up the stored record: ours wins.
        self.carriedIdentity = identity
        if let permanent = self.permanentState { try self.store("permall", permanent) }
    }

    /// Makes the next write's generation greater than `value` (a state adopted as the current one must not
    /// look older than what the registry saw committed before).
    public func advanceWriteGeneration(past value: UInt64) {
        self.writeGeneration = max(self.writeGeneration, value)
    }

    /// Stages the result of a rekey: the new identity and permanent state, and, for a state at rest,
    /// the removal of the volatile and save states (they belong to the old seeds). The permanent
    /// state is stored twice: the durable commit keeps the previous version in its spare file, which
    /// must not be left holding a state with the old endorsement seed. Call between `beginStaging`
    /// and `commitStaged`.
    public func stageRekeyedState(
        identity: InstanceIdentity,
        permanentState: [UInt8],
        dropVolatileState: Bool
    ) throws(StateStoreError) {
        precondition(self.staging != nil, "stageRekeyedState needs beginStaging")
        self.carriedIdentity = identity
        if self.storage.keepsInstanceMarker { try self.put(Self.instanceName, InstanceMarker.encode(identity)) }
        try self.store("permall", permanentState)
        try self.store("permall", permanentState)
        if dropVolatileState {
            try self.delete("volatilestate")
            try self.delete("savestate")
        }
    }

    /// Deletes a libtpms blob; returns whether it existed.
    @discardableResult
    public func delete(_ blob: String) throws(StateStoreError) -> Bool {
        try self.lock()
        let existed = try self.exists(blob)
        if self.staging != nil {
            self.staging?.append((blob, nil))
        } else {
            try self.storage.apply([(blob, nil)])
            if blob == "permall" { self.committedPermanent = nil }
        }
        return existed
    }

    /// The blobs present and their sizes (for `--print-states`): file sizes in a directory, blob
    /// lengths in a linear file (what swtpm prints for each).
    public func presentStates() throws(StateStoreError) -> [(name: String, size: Int64)] {
        try self.lock()
        return try self.storage.presentStates()
    }

    // MARK: entries

    private func put(_ name: String, _ contents: [UInt8]) throws(StateStoreError) {
        if self.staging != nil {
            self.staging?.append((name, contents))
        } else {
            do {
                try self.storage.apply([(name, contents)])
            } catch {
                self.committedPermanent?.inCurrentForm = false
                throw error
            }
        }
    }

    private func exists(_ name: String) throws(StateStoreError) -> Bool {
        if let staged = self.staging?.last(where: { $0.name == name }) { return staged.contents != nil }
        return try self.storage.exists(name)
    }
}
