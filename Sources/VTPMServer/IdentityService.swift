import CASigner
public import CloneRekey
import Crypto
import EndorsementCA
import Logging
import Registry
import StateStore
import TPMEngine
import TPMWire
public import VMIdentity
import _VTPMPosix

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Clone-rekey settings (`--vm-id`, `--ca`, `--registry`, `--host-key`, `--on-rollback`,
/// `--foreign-state`, or the host configuration). The whole feature is on when a vm-id is known.
public struct IdentityConfiguration: Sendable {
    public var vmID: VMID
    /// The host CA; nil: EKs are not certified (a rekey removes the old certificates, a new TPM is
    /// manufactured blank, as swtpm does without swtpm_setup).
    public var caDirectory: String?
    /// The separated CA signer's socket (`--ca-signer`, `ca-signer`): when set, EK certificates come from it
    /// and ``caDirectory`` is not read.
    public var caSigner: String?
    public var registryPath: String
    public var hostKeyPath: String
    /// This host's name in the registry's list of hosts (`host-name`, else the host name).
    public var hostName: String = ProcessInfo.processInfo.hostName
    public var onRollback: RollbackPolicy = .rekey
    public var foreignState: ForeignStatePolicy = .adopt
    /// Load the host CA at start instead of at the first certificate: needed with `--runas`, whose
    /// user may not read the CA key (loading it is a measurable part of a start otherwise).
    public var loadCAAtStart = false

    public static let defaultRegistryPath = "/var/lib/vtpm/registry.sqlite"
    public static let defaultHostKeyPath = "/var/lib/vtpm/host.key"

    public init(vmID: VMID, caDirectory: String?, registryPath: String, hostKeyPath: String) {
        self.vmID = vmID
        self.caDirectory = caDirectory
        self.registryPath = registryPath
        self.hostKeyPath = hostKeyPath
    }
}

/// A state blob received by SET_STATEBLOB while the identity feature is on: the plain libtpms
/// bytes and the verified source claim (nil for a blob without one).
struct IncomingBlob {
    var plain: [UInt8]
    var claim: SourceClaim?
}

/// The VM's identity at run time: its generation, the checkpoints it hands out with state blobs,
/// and the decision on incoming state (ARCHITECTURE.md, "Decision: move, clone or rollback").
final class IdentityService {
    let configuration: IdentityConfiguration
    let registry: RegistryDatabase
    /// The registry writes made while the guest runs, off the TPM command path.
    let writer: RegistryWriter
    let hostKey: HostKey
    /// Decisions, rekeys and their registry records.
    let coordinator: CloneRekeyCoordinator
    let logger: Logger
    var generation: UInt64 = 0
    /// A checkpoint was handed out and the TPM has not changed since: the next state change must
    /// be recorded (one registry write, then this is false again).
    /// Armed at start too: the registry's latest checkpoint may be the state this process starts
    /// from (a restart, a restore), and anything it does afterwards must count as "ran after".
    var checkpointOutstanding = true
    /// The generation's latest checkpoint number as far as this process knows (the registry's at
    /// start and after a decision, then the numbers this process hands out).
    var latestCheckpoint: UInt64 = 0
    /// The checkpoint of the current TPM state, once handed out and until the TPM runs: more blobs
    /// of the same state (the three of one savevm, two snapshots in a row) carry the same number.
    var currentCheckpoint: UInt64? = nil
    /// A checkpoint handed out but not yet in the registry. Blobs are numbered here and recorded
    /// after the reply — before the next state change, the next decision, or exit — so a savevm
    /// costs no registry write while QEMU waits.
    var unsavedCheckpoint: UInt64? = nil
    var incoming: [UInt32: IncomingBlob] = [:]
    /// The TPM's state storage (for the write generation recorded in the registry).
    var store: StateDirectory? = nil
    /// The write generation last recorded, so a checkpoint records it only when it moved.
    var recordedStateWrite: UInt64? = nil
    /// The state's write generation is to be recorded when the server is idle (after an INIT).
    var stateWriteDue = false
    var lastDecision: String = "none" {
        didSet { self.lastDecisionAt = .now() }
    }
    /// When `lastDecision` was last set (nil before the first decision).
    var lastDecisionAt: Timestamp? = nil

    var vmID: VMID { self.configuration.vmID }
    /// Whether `generation` and `latestCheckpoint` are the registry's. False from start (the registry is read
    /// at the first decision, after `--runas`, so that its connection is made as the user the process runs as)
    /// and after a failed read: no write that names the generation is queued meanwhile, and a claim first
    /// reads them (``learnGeneration()``).
    var generationKnown = false

    /// Opens the registry (a SQLite file is opened now; PostgreSQL is connected to at the first use), the host
    /// key and the CA. The VM's generation is read from the registry at the first decision.
    init(configuration: IdentityConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        self.registry = try RegistryLocation(configuration.registryPath).open()
        self.hostKey = try HostKey.loadOrCreate(path: configuration.hostKeyPath)
        self.writer = RegistryWriter(registry: self.registry, logger: logger)
        // Other hosts verify this host's claims with the public key it registers.
        self.writer.enqueue(
            .registerHost(id: self.hostKey.id, name: configuration.hostName, publicKey: self.hostKey.publicKey)
        )
        self.coordinator = CloneRekeyCoordinator(
            vmID: configuration.vmID,
            registry: self.registry,
            ca: try Self.certificateAuthority(configuration, logger: logger),
            policy: DecisionPolicy(onRollback: configuration.onRollback, foreignState: configuration.foreignState)
        )
    }

    /// Reads this VM's current generation and its latest checkpoint from the registry.
    /// - Returns: Whether both were read (else logged, and `generationKnown` stays false).
    func learnGeneration() -> Bool {
        do {
            self.generation = try self.registry.currentGeneration(vmID: self.vmID)?.generation ?? 0
        } catch {
            self.generationKnown = false
            self.logger.error("registry: cannot read this VM's generation: \(error)")
            return false
        }
        self.refreshCheckpoint()
        return self.generationKnown
    }

    static func certificateAuthority(
        _ configuration: IdentityConfiguration,
        logger: Logger
    ) throws -> CloneRekeyCoordinator.CertificateAuthority {
        if let socket = configuration.caSigner { return .remote(CASignerClient(socketPath: socket)) }
        guard let directory = configuration.caDirectory else { return .none }
        logger.warning(
            "the host CA's private key (\(directory)) is read by the process that serves the guest: set ca-signer to keep it in a separate signer"
        )
        if configuration.loadCAAtStart { return .loaded(try HostCA.loadOrCreate(at: directory)) }
        return .deferred({ try HostCA.loadOrCreate(at: directory) })
    }

    /// Records the permanent state's write generation as seen committed (at a checkpoint, at a clean
    /// stop, after a decision), through the writer.
    func recordStateWrite() {
        self.stateWriteDue = false
        guard self.generationKnown, let write = self.store?.permanentWriteGeneration, write != self.recordedStateWrite
        else { return }
        self.writer.enqueue(.stateWrite(self.vmID, generation: self.generation, write: write))
        self.recordedStateWrite = write
    }

    /// Waits until the writer's queue is in the registry, so that a decision reads every fact this process
    /// knows. False (logged) when the registry stays unavailable: the caller refuses what needs the decision.
    func catchUp() -> Bool {
        let timeout = self.registry.timeout
        if self.writer.flush(timeout: timeout) {
            return self.generationKnown || self.learnGeneration()
        }
        self.logger.error(
            "registry: unavailable, \(self.writer.pending) write(s) wait: no decision without it",
            metadata: ["cause": "\(self.writer.failure ?? "no answer within \(timeout)")"]
        )
        return false
    }

    /// The public key of another host, for a claim it signed: the registry's record, unless the host is
    /// unknown to it (a host outside the cluster) or revoked.
    func publicKey(ofHost id: String) throws(StateStoreError) -> [UInt8] {
        let record: HostRecord?
        do { record = try self.registry.host(id: id) } catch {
            throw StateStoreError(
                .untrustedSigner,
                "cannot look up host \(id), which signed the blob's claim: \(error)"
            )
        }
        guard let record else {
            throw StateStoreError(
                .integrity,
                "the blob's claim is signed by host \(id), which registry \(self.registry.location) does not know"
            )
        }
        guard !record.isRevoked else {
            throw StateStoreError(
                .integrity,
                "the blob's claim is signed by host \(id) (\(record.name)), revoked: \(record.revokedReason ?? "")"
            )
        }
        return record.publicKey
    }

    /// The state now belongs to a new generation (a rekey, a new TPM), committed to disk. When the registry
    /// recorded it, the state's write generation was recorded with it; otherwise that record is due when
    /// the server is idle.
    func enterGeneration(_ generation: UInt64, registryRecorded: Bool) {
        self.generation = generation
        if registryRecorded {
            self.recordedStateWrite = self.store?.permanentWriteGeneration
        } else {
            self.recordedStateWrite = nil
            self.stateWriteDue = true
        }
        self.refreshCheckpoint()
    }

    /// Re-reads the latest checkpoint of the current generation (after a decision). On failure the next claim
    /// reads it before numbering a blob, so that no checkpoint number is handed out twice.
    func refreshCheckpoint() {
        self.currentCheckpoint = nil
        self.unsavedCheckpoint = nil
        do {
            self.latestCheckpoint =
                try self.registry.latestCheckpoint(vmID: self.vmID, generation: self.generation)?.checkpoint ?? 0
            self.generationKnown = true
        } catch {
            self.generationKnown = false
            self.logger.error("registry: cannot read the latest checkpoint: \(error)")
        }
    }

    /// Records a checkpoint handed out earlier (idempotent; a no-op when there is none).
    func saveCheckpoint() {
        guard let number = self.unsavedCheckpoint else { return }
        self.unsavedCheckpoint = nil
        self.recordStateWrite()
        self.writer.enqueue(.checkpoint(self.vmID, generation: self.generation, number: number))
    }

    /// The state is about to change (a TPM command, INIT, hashing): record that it ran after the
    /// last checkpoint handed out, once.
    func stateWillChange() {
        // (With the generation unknown the mark stays armed: it names the generation once that is read.)
        guard self.checkpointOutstanding, self.generationKnown else { return }
        self.checkpointOutstanding = false
        self.saveCheckpoint()
        self.currentCheckpoint = nil
        self.writer.enqueue(.markRan(self.vmID, generation: self.generation))
    }

    /// Adds the source claim to a GET_STATEBLOB blob.
    func claim(_ blob: [UInt8], type: UInt32) throws -> [UInt8] {
        guard self.generationKnown || self.catchUp() else {
            throw StateStoreError(.untrustedSigner, "the registry is unavailable: this VM's generation is unknown")
        }
        let checkpoint: UInt64
        if let current = self.currentCheckpoint {
            checkpoint = current
        } else {
            self.latestCheckpoint += 1
            checkpoint = self.latestCheckpoint
            self.currentCheckpoint = checkpoint
            self.unsavedCheckpoint = checkpoint
        }
        self.checkpointOutstanding = true
        let claim = SourceClaim(vmID: self.configuration.vmID, generation: self.generation, checkpoint: checkpoint)
        return try SourceClaim.attach(claim, to: blob, blobType: type, hostKey: self.hostKey)
    }

    /// The decision for the blobs received since the last INIT.
    func decide(_ incoming: [UInt32: IncomingBlob]) throws -> CloneRekeyCoordinator.DecisionOutcome {
        let claims = Set(incoming.values.map { $0.claim })
        guard claims.count == 1, let claim = claims.first else {
            let names = incoming.keys.sorted().map { "\($0): \(incoming[$0]?.claim.map { "\($0)" } ?? "none")" }
            let reason = "the blobs name different sources (\(names.joined(separator: ", ")))"
            return CloneRekeyCoordinator.DecisionOutcome(
                decision: .reject(reason: reason),
                rule: .invalidClaim(reason: reason),
                origin: nil
            )
        }
        guard let claim else { return try self.coordinator.decide(.unwrapped) }
        return try self.coordinator.decide(
            .claimed(StateOrigin(vmID: claim.vmID, generation: claim.generation, checkpoint: claim.checkpoint))
        )
    }
}
