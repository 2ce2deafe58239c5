public import VMIdentity

/// The registry's operations: identities, generations, checkpoints and lineage events.
///
/// This protocol is the seam between vtpmd's decision logic and the storage: ``RegistryDatabase`` runs the
/// same statements on SQLite (the embedded default, one file per host) and on PostgreSQL (a cluster's
/// shared registry). The API is synchronous: each call returns when its transaction committed or failed.
///
/// Every operation is one transaction. The writes a cluster could race on are compare-and-set updates:
/// when the expected row is gone or changed, the operation throws ``RegistryError/Code/conflict`` (or
/// reports `false`, where documented) rather than overwrite another writer's record.
///
/// A vmID is a UUID string in any case; the registry stores and returns it in lower case and throws
/// ``RegistryError/Code/invalidArgument`` for anything else.
public protocol RegistryStore: AnyObject, Sendable {
    /// Where the registry is (a file path, or a PostgreSQL URL without its password), for messages.
    var location: String { get }

    /// Closes the registry. Later calls throw.
    /// - Throws: ``RegistryError``.
    func close() throws

    /// Records `vmID` if it is new.
    /// - Parameter vmID: The VM identity.
    /// - Returns: The identity record, new or existing.
    /// - Throws: ``RegistryError``.
    @discardableResult
    func ensureIdentity(vmID: VMID) throws -> Identity

    /// The identity record of `vmID`, or nil.
    /// - Parameter vmID: The VM identity.
    /// - Throws: ``RegistryError``.
    func identity(vmID: VMID) throws -> Identity?

    /// The latest generation of `vmID`, or nil when it has none.
    /// - Parameter vmID: The VM identity.
    /// - Throws: ``RegistryError``.
    func currentGeneration(vmID: VMID) throws -> Generation?

    /// One generation record, or nil.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation number.
    /// - Throws: ``RegistryError``.
    func generation(vmID: VMID, generation: UInt64) throws -> Generation?

    /// Every generation record, of one VM or (with nil) of all, ordered by vmID and generation.
    /// - Parameter vmID: The VM identity, or nil for all.
    /// - Throws: ``RegistryError``.
    func generations(vmID: VMID?) throws -> [Generation]

    /// Starts the next generation of `vmID` (recording the identity if it is new).
    ///
    /// The number is the current generation + 1, or 0 for the identity's first; when `parent` is a state of
    /// the same vmID (a rollback, or a generation made elsewhere), never lower than the parent's + 1, so
    /// that (vmID, generation) is never issued twice. The identity's current generation is advanced by a
    /// compare-and-set update.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - reason: Why the generation begins.
    ///   - parent: The state the generation was made from, if any.
    ///   - event: A lineage event to append in the same transaction, for the new generation.
    /// - Returns: The new generation.
    /// - Throws: ``RegistryError`` (``RegistryError/Code/conflict`` when another writer advanced it first).
    @discardableResult
    func beginGeneration(
        vmID: VMID,
        reason: Generation.Reason,
        parent: StateOrigin?,
        event: LineageEventDraft?
    ) throws -> Generation

    /// The checkpoint number for a state about to be handed out (GET_STATEBLOB).
    ///
    /// If the generation's latest checkpoint exists and the TPM has not run since (``markRan(vmID:generation:)``
    /// was not called), that checkpoint is returned again: the TPM state is the same, so the three blobs of
    /// one savevm, or two snapshots with nothing in between, carry the same number. Otherwise a new
    /// checkpoint, latest + 1 (1 for the generation's first), is recorded by a compare-and-set update. So
    /// numbers never decrease, and a checkpoint older than the latest is one the TPM ran after.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation the running TPM state belongs to.
    /// - Returns: The checkpoint number, 1 or more.
    /// - Throws: ``RegistryError`` (``RegistryError/Code/unknownGeneration`` when the generation has no record).
    func recordCheckpoint(vmID: VMID, generation: UInt64) throws -> UInt64

    /// Records checkpoint `number`, chosen by the caller (vtpmd numbers the blobs it hands out itself
    /// and records them after the reply), as the generation's latest if it is greater than the latest.
    /// Idempotent: recording a number the registry already has, or a smaller one, changes nothing.
    /// - Returns: whether the number was recorded.
    /// - Throws: ``RegistryError`` (``RegistryError/Code/unknownGeneration``).
    @discardableResult
    func recordCheckpoint(vmID: VMID, generation: UInt64, number: UInt64) throws -> Bool

    /// Notes that the TPM changed state after the generation's latest checkpoint.
    ///
    /// Call it once, on the first state-changing operation after a checkpoint (a TPM command, but also
    /// CMD_HASH_*, CMD_INIT, CMD_RESET_TPMESTABLISHED): one conditional UPDATE on the primary key.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation.
    /// - Returns: Whether a checkpoint changed (false when there is none, or it was already marked).
    /// - Throws: ``RegistryError``.
    @discardableResult
    func markRan(vmID: VMID, generation: UInt64) throws -> Bool

    /// The generation's latest checkpoint, or nil when it has none (or the generation is unknown).
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation.
    /// - Throws: ``RegistryError``.
    func latestCheckpoint(vmID: VMID, generation: UInt64) throws -> Checkpoint?

    /// Brings the registry up to a state that arrived with a valid claim and was accepted as a move.
    ///
    /// A claim newer than the registry knows (a migration from a host with another registry, or a registry
    /// restored from a backup) is recorded so that an older state is detected from now on: a missing
    /// identity is created, a newer generation is recorded with reason ``Generation/Reason/adopt``, and a
    /// newer checkpoint becomes the generation's latest (not run after). A claim the registry already knows
    /// changes nothing.
    /// - Parameter origin: The claim of the state that arrived.
    /// - Returns: Whether anything was recorded.
    /// - Throws: ``RegistryError``.
    @discardableResult
    func recordArrival(_ origin: StateOrigin) throws -> Bool

    /// Records that the permanent state of (vmID, generation) was seen committed with integrity-record write
    /// generation `write` (at a checkpoint, at a clean stop, after a decision at start-up). Only moves
    /// forward: a smaller or equal number changes nothing, so a late or repeated call is harmless.
    ///
    /// The start-up decision compares the state found at rest with it: a state of the current generation
    /// whose write generation is behind the recorded one went back in time (a restored backup, a storage
    /// snapshot rolled back, a copy put back) and is a rollback. A crash leaves the disk ahead of the
    /// registry, never behind.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation.
    ///   - write: The permanent state's write generation.
    /// - Returns: Whether the recorded value moved forward.
    /// - Throws: ``RegistryError`` (``RegistryError/Code/unknownGeneration`` when the generation has no record).
    @discardableResult
    func recordStateWrite(vmID: VMID, generation: UInt64, write: UInt64) throws -> Bool

    /// Appends a lineage event (the registry assigns the id and the time).
    /// - Parameters:
    ///   - vmID: The VM the event happened to (recorded as an identity if new).
    ///   - generation: The VM's generation after the event.
    ///   - draft: What happened.
    /// - Returns: The stored event.
    /// - Throws: ``RegistryError``.
    @discardableResult
    func appendEvent(vmID: VMID, generation: UInt64, _ draft: LineageEventDraft) throws -> LineageEvent

    /// Registers a host (idempotent): a new host is recorded, a known one is returned as it is, revoked or not.
    /// - Parameters:
    ///   - id: The host id (``HostRecord/hostID``).
    ///   - name: A name for people.
    ///   - publicKey: The raw public key.
    /// - Returns: The registry's record of the host.
    /// - Throws: ``RegistryError`` (``RegistryError/Code/conflict`` when the id is recorded with another key).
    @discardableResult
    func registerHost(id: String, name: String, publicKey: [UInt8]) throws -> HostRecord

    /// The record of one host, or nil.
    /// - Throws: ``RegistryError``.
    func host(id: String) throws -> HostRecord?

    /// Every registered host, in the order they registered.
    /// - Throws: ``RegistryError``.
    func hosts() throws -> [HostRecord]

    /// Revokes a host: its claims are refused from now on. Revoking a revoked host changes nothing.
    /// - Returns: The host's record after the call.
    /// - Throws: ``RegistryError`` (``RegistryError/Code/invalidArgument`` for an unknown host).
    @discardableResult
    func revokeHost(id: String, reason: String) throws -> HostRecord

    /// Records an endorsement key derived for a generation, before its certificate is asked for. A record
    /// for a generation beyond the VM's recorded one replaces an earlier record; once the generation is
    /// recorded, only the same record is accepted again.
    /// - Throws: ``RegistryError`` (``RegistryError/Code/conflict`` for another key of a recorded generation).
    func recordEndorsementKey(_ record: EndorsementKeyRecord) throws

    /// The recorded endorsement key of one generation and algorithm, or nil.
    /// - Throws: ``RegistryError``.
    func endorsementKey(
        vmID: VMID,
        generation: UInt64,
        algorithm: EndorsementKeyRecord.Algorithm
    ) throws -> EndorsementKeyRecord?

    /// Lineage events, of one VM (events that happened to it) or (with nil) of all, oldest first.
    /// - Parameter vmID: The VM identity, or nil for all.
    /// - Throws: ``RegistryError``.
    func lineage(vmID: VMID?) throws -> [LineageEvent]
}

extension RegistryStore {
    /// Every lineage event, oldest first.
    /// - Throws: ``RegistryError``.
    public func lineage() throws -> [LineageEvent] { try self.lineage(vmID: nil) }

    /// Starts the next generation of `vmID` without a lineage event.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - reason: Why the generation begins.
    ///   - parent: The state the generation was made from, if any.
    /// - Returns: The new generation.
    /// - Throws: ``RegistryError``.
    @discardableResult
    public func beginGeneration(
        vmID: VMID,
        reason: Generation.Reason,
        parent: StateOrigin? = nil
    ) throws
        -> Generation
    {
        try self.beginGeneration(vmID: vmID, reason: reason, parent: parent, event: nil)
    }

    /// The parent/child graph of every generation the registry knows, across VMs.
    /// - Returns: The tree (a forest: one root per manufactured or adopted TPM).
    /// - Throws: ``RegistryError``.
    public func lineageTree() throws -> LineageTree {
        LineageTree(generations: try self.generations(vmID: nil))
    }
}
