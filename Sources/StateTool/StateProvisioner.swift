import CASigner
import CloneRekey
import EndorsementCA
import Foundation
import Registry
public import StateStore
import TPMEngine
import VMIdentity
import _VTPMPosix

/// `vtpm-state create`, `clone` and `rekey`: vtpmd's at-rest paths (a new provisioned TPM, a copied
/// directory) done offline. The TPM runs on an in-memory copy; the directory is written only when
/// everything succeeded (identity marker, then the permanent state twice, so that the spare file holds
/// no state with the old endorsement seed), and the volatile and saved states, which hold the old seed,
/// are removed.
public enum StateProvisioner {
    /// What was written.
    public struct Outcome: Sendable, Hashable {
        /// The directory written.
        public var state: String
        /// Its vm-id.
        public var vmID: String
        /// Its new generation.
        public var generation: UInt64
        /// For a clone: the source ("vm gen n").
        public var parent: String?
        /// "created", "cloned" or "rekeyed".
        public var action: String

        /// "created vm … generation 0 in DIR".
        public var summary: String {
            "\(self.action) vm \(self.vmID) generation \(self.generation)"
                + (self.parent.map { " (parent \($0))" } ?? "") + " in \(self.state)"
        }
    }

    /// Manufactures a TPM in `path`, generation 0 (or the registry's next for a known vm-id). With a CA:
    /// the requested PCR banks, new EKs, certificates for the EKs in `options`, the identity indices (the
    /// rekey procedure's cold phase on the fresh TPM). Without a CA, as vtpmd without `--ca`: a blank TPM
    /// (only the PCR banks allocated) and the identity marker; no certificates, no identity indices.
    /// - Parameters:
    ///   - path: The state directory (created 0700 if missing).
    ///   - vmID: The VM's UUID.
    ///   - caDirectory: The host CA (`vtpm-state ca init`), or nil.
    ///   - registryPath: A registry to record the generation in, or nil.
    ///   - overwrite: Replace an existing TPM.
    ///   - options: PCR banks and certified EKs.
    /// - Returns: What was written.
    /// - Throws: ``StateToolError``; on any error nothing is written (a missing directory is created only
    ///   when the TPM is ready to be written).
    public static func create(
        path: String,
        vmID: String,
        caDirectory: String?,
        caSigner: String? = nil,
        registryPath: String?,
        overwrite: Bool,
        options: CreateOptions = CreateOptions()
    ) throws -> Outcome {
        try self.create(
            location: .directory(path),
            vmID: vmID,
            caDirectory: caDirectory,
            caSigner: caSigner,
            registryPath: registryPath,
            overwrite: overwrite,
            options: options
        )
    }

    /// ``create(path:vmID:caDirectory:registryPath:overwrite:options:)`` for a directory or a linear file
    /// (swtpm's `file://` backend), encrypted with `stateKey` when given.
    public static func create(
        location: StateLocation,
        vmID: String,
        caDirectory: String?,
        caSigner: String? = nil,
        registryPath: String?,
        overwrite: Bool,
        stateKey: StateKey? = nil,
        options: CreateOptions = CreateOptions()
    ) throws -> Outcome {
        let path = location.path
        let vm = try self.parseVMID(vmID)
        guard caDirectory != nil || caSigner != nil || options.endorsementKeys == [.rsa, .ecc] else {
            throw StateToolError(.invalidArgument, "--ek needs --ca: without a CA no EK certificate is written")
        }
        guard !options.endorsementKeys.isEmpty else {
            throw StateToolError(.invalidArgument, "--ek needs at least one of rsa, ecc")
        }
        let ca = try self.authority(directory: caDirectory, signer: caSigner, registryPath: registryPath)
        // Refused before any work; checked again once the directory is locked.
        if case .directory = location { try self.refuseExistingTPM(path, overwrite: overwrite) }
        let coordinator = try self.coordinator(vm, ca: ca, registryPath: registryPath)
        let generation = try self.nextGeneration(coordinator, atLeast: 0)
        let engine = try self.engine(InMemoryEngineStorage())
        var permanent = try self.manufacture(engine, pcrBanks: options.pcrBanks)
        if coordinator.certifies {
            var certify: CloneRekeyCoordinator.CertifiedKeys = []
            if options.endorsementKeys.contains(.rsa) { certify.insert(.rsa) }
            if options.endorsementKeys.contains(.ecc) { certify.insert(.ecc) }
            permanent = try self.rekey(
                coordinator,
                engine: engine,
                permanent: permanent,
                generation: generation,
                parent: nil,
                kind: .manufacture,
                certify: certify
            )
        }
        let store = try self.openTarget(location, overwrite: overwrite, stateKey: stateKey)
        let identity = InstanceIdentity(vmID: vm, generation: generation, creator: "vtpm-state")
        try self.commit(store, identity: identity, permanent)
        if case .directory = location { try TargetOwnership.giveFilesToDirectoryOwner(path) }
        try self.record(coordinator, generation: generation, kind: .manufacture, parent: nil, store: store)
        return Outcome(state: path, vmID: vm.description, generation: generation, parent: nil, action: "created")
    }

    /// Copies the TPM in `source` to `target` under a new identity, rekeyed (new EPS, EKs, certificates;
    /// storage hierarchy kept). The source is only read.
    /// - Parameters:
    ///   - source: The source state directory.
    ///   - target: The new directory: missing or without a TPM.
    ///   - vmID: The clone's UUID (must differ from the source's).
    ///   - caDirectory: The host CA.
    ///   - registryPath: A registry to record the generation in, or nil.
    /// - Returns: What was written.
    /// - Throws: ``StateToolError``; on any error nothing is written.
    public static func clone(
        source: String,
        target: String,
        vmID: String,
        caDirectory: String?,
        caSigner: String? = nil,
        registryPath: String?,
        stateKey: StateKey? = nil
    ) throws -> Outcome {
        let vm = try self.parseVMID(vmID)
        let ca = try self.authority(
            directory: caDirectory,
            signer: caSigner,
            registryPath: registryPath,
            required: true
        )
        let opened = try OpenedState.open(source, stateKey: stateKey)
        let permanent = try opened.requirePermanentState()
        if let sourceVM = opened.identity?.vmID, sourceVM == vm {
            throw StateToolError(.invalidArgument, "the clone needs another vm-id than its source (\(vm))")
        }
        try self.refuseExistingTPM(target, overwrite: false)
        try TargetOwnership.createDirectories(target, mirroring: source)
        let store = try self.openTarget(.directory(target), overwrite: false, stateKey: stateKey)
        let coordinator = try self.coordinator(vm, ca: ca, registryPath: registryPath)
        let parent = opened.identity.flatMap { identity in
            identity.vmID.map { StateOrigin(vmID: $0, generation: identity.generation, checkpoint: nil) }
        }
        let generation = try self.nextGeneration(coordinator, atLeast: 0)
        let engine = try self.engine(InMemoryEngineStorage())
        let rekeyed = try self.rekey(
            coordinator,
            engine: engine,
            permanent: permanent,
            generation: generation,
            parent: parent,
            kind: .clone
        )
        let identity = InstanceIdentity(
            vmID: vm,
            generation: generation,
            parent: opened.identity?.vmID,
            creator: "vtpm-state"
        )
        try self.commit(store, identity: identity, rekeyed)
        try TargetOwnership.giveFilesToDirectoryOwner(target)
        try self.record(coordinator, generation: generation, kind: .clone, parent: parent, store: store)
        return Outcome(
            state: target,
            vmID: vm.description,
            generation: generation,
            parent: parent.map { "\($0.vmID) gen \($0.generation)" },
            action: "cloned"
        )
    }

    /// Rekeys the TPM in `path` in place: next generation, same vm-id (template preparation). A directory
    /// without an identity (swtpm's) needs `vmID`, which it is then adopted under.
    /// - Parameters:
    ///   - path: The state directory.
    ///   - vmID: The VM's UUID; must match a recorded one.
    ///   - caDirectory: The host CA.
    ///   - registryPath: A registry to record the generation in, or nil.
    /// - Returns: What was written.
    /// - Throws: ``StateToolError``; on any error nothing is written.
    public static func rekey(
        path: String,
        vmID: String?,
        caDirectory: String?,
        caSigner: String? = nil,
        registryPath: String?,
        stateKey: StateKey? = nil
    ) throws -> Outcome {
        let given = try vmID.map(self.parseVMID)
        let ca = try self.authority(
            directory: caDirectory,
            signer: caSigner,
            registryPath: registryPath,
            required: true
        )
        let opened = try OpenedState.open(path, stateKey: stateKey)
        let permanent = try opened.requirePermanentState()
        let recordedVM = opened.identity?.vmID
        if let given, let recordedVM, given != recordedVM {
            throw StateToolError(
                .invalidArgument,
                "\(path) belongs to vm \(recordedVM), not \(given); use clone to give a state another identity"
            )
        }
        guard let vm = given ?? recordedVM else {
            throw StateToolError(.invalidArgument, "\(path) has no recorded identity (swtpm's directory): give --vm-id")
        }
        let coordinator = try self.coordinator(vm, ca: ca, registryPath: registryPath)
        let floor = recordedVM == nil ? 0 : (opened.identity?.generation ?? 0) + 1
        let generation = try self.nextGeneration(coordinator, atLeast: floor)
        // The previous generation is the parent, so the lineage tree links the two.
        let previous = opened.identity.flatMap { identity in
            identity.vmID.map { StateOrigin(vmID: $0, generation: identity.generation, checkpoint: nil) }
        }
        let engine = try self.engine(InMemoryEngineStorage())
        let rekeyed = try self.rekey(
            coordinator,
            engine: engine,
            permanent: permanent,
            generation: generation,
            parent: previous,
            kind: .rekey
        )
        var identity = opened.identity ?? InstanceIdentity(vmID: vm, generation: generation, creator: "vtpm-state")
        identity.vmID = vm
        identity.generation = generation
        try self.commit(opened.store, identity: identity, rekeyed)
        try TargetOwnership.giveFilesToDirectoryOwner(path)
        try self.record(coordinator, generation: generation, kind: .rekey, parent: previous, store: opened.store)
        return Outcome(state: path, vmID: vm.description, generation: generation, parent: nil, action: "rekeyed")
    }

    // MARK: steps

    static func parseVMID(_ text: String) throws -> VMID {
        guard let vm = VMID(text) else {
            throw StateToolError(.invalidArgument, "vm-id '\(text)' is not \(VMID.syntax)")
        }
        return vm
    }

    /// The clone-rekey coordinator for `vm` (the same one vtpmd uses).
    static func coordinator(
        _ vm: VMID,
        ca: CloneRekeyCoordinator.CertificateAuthority,
        registryPath: String?
    ) throws -> CloneRekeyCoordinator {
        CloneRekeyCoordinator(
            vmID: vm,
            registry: try registryPath.map(self.openRegistry),
            ca: ca,
            creator: "vtpm-state"
        )
    }

    /// The separated CA signer at `signer` when given (it needs the registry, where each EK is recorded
    /// before its certificate is asked for), else the CA in `directory`, else none.
    /// - Throws: ``StateToolError`` when the CA does not load, or (`required`) neither is given.
    static func authority(
        directory: String?,
        signer: String?,
        registryPath: String?,
        required: Bool = false
    ) throws -> CloneRekeyCoordinator.CertificateAuthority {
        if let signer {
            guard registryPath != nil else {
                throw StateToolError(.invalidArgument, "the CA signer \(signer) needs a registry (--registry)")
            }
            return .remote(CASignerClient(socketPath: signer))
        }
        if let directory { return .loaded(try self.loadCA(directory)) }
        guard !required else {
            throw StateToolError(.invalidArgument, "give --ca or --ca-signer (or ca = DIR in the host configuration)")
        }
        return .none
    }

    static func loadCA(_ directory: String) throws -> HostCA {
        do {
            return try HostCA.load(from: directory)
        } catch {
            throw StateToolError(
                .certificateAuthority,
                "cannot load the CA in \(directory): \(error) (create one with `vtpm-state ca init --ca \(directory)`)"
            )
        }
    }

    static func openRegistry(_ path: String) throws -> RegistryDatabase {
        do { return try RegistryLocation(path).open() } catch {
            throw StateToolError(.registry, "cannot open registry \(PostgresSettings.redacted(path)): \(error)")
        }
    }

    /// The registry's next generation for the coordinator's VM (never below `floor`).
    static func nextGeneration(_ coordinator: CloneRekeyCoordinator, atLeast floor: UInt64) throws -> UInt64 {
        do { return try coordinator.nextGeneration(atLeast: floor) } catch {
            throw StateToolError(.registry, "cannot read the registry: \(error)")
        }
    }

    static func engine(_ storage: InMemoryEngineStorage) throws -> Engine {
        do { return try Engine(storage: storage) } catch {
            throw StateToolError(.engine, "cannot set up libtpms: \(error)")
        }
    }

    /// A locked target: a directory created (0700) when missing, or a linear file (created 0600 when
    /// missing, formatted when empty or all zero); one holding a TPM only with `overwrite`.
    static func openTarget(_ location: StateLocation, overwrite: Bool, stateKey: StateKey?) throws -> StateDirectory {
        let path = location.path
        let noun: String
        switch location {
        case .directory:
            noun = "state directory"
            if OpenedState.kind(path) != nil {
                try self.refuseExistingTPM(path, overwrite: overwrite)
            } else {
                do {
                    try makeDirectories(path, mode: 0o700)
                } catch {
                    throw StateToolError(.notFound, "cannot create state directory \(path): \(error)")
                }
            }
        case .linearFile:
            noun = "state file"
        }
        var options = StateDirectory.Options()
        options.stateKey = stateKey
        let store = StateDirectory(location: location, options: options, logger: OpenedState.silentLogger)
        let present: [(name: String, size: Int64)]
        do {
            try store.lock()
            // A linear file's blobs are known only once it is open and locked.
            present = location == .directory(path) ? [] : try store.presentStates()
        } catch {
            if error.code == .locked {
                throw StateToolError(
                    .locked,
                    "\(noun) \(path) is locked: a running vtpmd or swtpm is using it; stop it first"
                )
            }
            throw StateToolError(.notFound, "cannot open \(noun) \(path): \(error.message)")
        }
        if !present.isEmpty && !overwrite {
            throw StateToolError(
                .exists,
                "\(path) already holds a TPM (\(present.map(\.name).sorted().joined(separator: ", "))); "
                    + "refusing to replace it without --overwrite"
            )
        }
        return store
    }

    /// Throws unless `path` is missing or a directory without a TPM (or `overwrite`). Changes nothing.
    static func refuseExistingTPM(_ path: String, overwrite: Bool) throws {
        guard let kind = OpenedState.kind(path) else { return }
        guard kind == .directory else { throw StateToolError(.invalidArgument, "\(path) is not a directory") }
        let traces = (directoryEntries(atPath: path) ?? []).filter { name in
            name == StateDirectory.instanceName || name.hasPrefix("tpm2-00.") || name.hasPrefix(".spare.tpm2-00.")
        }
        if !traces.isEmpty && !overwrite {
            throw StateToolError(
                .exists,
                "\(path) already holds a TPM (\(traces.sorted().joined(separator: ", "))); "
                    + "refusing to replace it without --overwrite"
            )
        }
    }

    /// The cold phase of the rekey procedure on `permanent`; returns the new permanent state.
    static func rekey(
        _ coordinator: CloneRekeyCoordinator,
        engine: Engine,
        permanent: [UInt8],
        generation: UInt64,
        parent: StateOrigin?,
        kind: CloneRekeyCoordinator.RekeyKind,
        certify: CloneRekeyCoordinator.CertifiedKeys = .both
    ) throws -> [UInt8] {
        do {
            return try coordinator.runProcedure(
                on: engine,
                permanentState: permanent,
                volatileState: nil,
                kind: kind,
                parent: parent,
                generation: generation,
                certify: certify
            ).permanentState
        } catch {
            throw StateToolError(.engine, "rekey failed, nothing changed: \(error)")
        }
    }

    /// Records the generation (its event and the state's write generation) in the registry, after the
    /// disk; the certificates name `generation`, so a registry that gives another number is an error.
    static func record(
        _ coordinator: CloneRekeyCoordinator,
        generation: UInt64,
        kind: CloneRekeyCoordinator.RekeyKind,
        parent: StateOrigin?,
        store: StateDirectory
    ) throws {
        do {
            try coordinator.recordGeneration(
                generation,
                kind: kind,
                parent: parent,
                durationMicros: nil,
                detail: "vtpm-state",
                stateWrite: store.permanentWriteGeneration
            )
        } catch {
            throw StateToolError(.registry, "the state was written, but the registry did not record it: \(error)")
        }
    }

    /// Writes identity and permanent state, removes the volatile and saved states (old seed).
    static func commit(_ store: StateDirectory, identity: InstanceIdentity, _ permanent: [UInt8]) throws {
        store.beginStaging()
        do {
            try store.stageRekeyedState(identity: identity, permanentState: permanent, dropVolatileState: true)
            try store.commitStaged()
        } catch {
            store.discardStaged()
            throw StateToolError(.damaged, "writing \(store.path) failed: \(error)")
        }
    }
}
