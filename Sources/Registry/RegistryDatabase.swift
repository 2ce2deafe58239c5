import TPMWire
public import VMIdentity

/// The registry on a database: one SQLite file per host (``init(sqlitePath:busyTimeout:clock:)``), or one
/// PostgreSQL database for a cluster (``init(postgres:clock:)``). Both run the same statements (``Schema``),
/// so the semantics are the same: every operation is one transaction, and the writes hosts could race on
/// are compare-and-set updates.
public final class RegistryDatabase: RegistryStore {
    let backend: any RegistryBackend
    let clock: @Sendable () -> Timestamp

    init(backend: any RegistryBackend, clock: @escaping @Sendable () -> Timestamp) {
        self.backend = backend
        self.clock = clock
    }

    /// Where the registry is: a file path, or a PostgreSQL URL without its password.
    public var location: String { self.backend.location }

    /// How long an operation may wait for the database (SQLite's busy timeout, PostgreSQL's `connect_timeout`).
    public var timeout: Duration { self.backend.timeout }

    /// Closes the database. Later calls throw.
    /// - Throws: ``RegistryError``.
    public func close() throws { try self.backend.close() }

    /// The schema version of the database.
    /// - Throws: ``RegistryError``.
    public func schemaVersion() throws -> Int64 {
        try self.run(.read, "read the schema version") { s in
            guard let row = try s.fetchOne("SELECT version FROM schema_version", []) else {
                throw RegistryError(.corrupt, "schema_version is empty")
            }
            return try row.int64("version")
        }
    }

    func run<T>(_ kind: TransactionKind, _ operation: String, _ body: (any SQLSession) throws -> T) throws -> T {
        try self.backend.transaction(kind, operation, body)
    }

    // MARK: - Identities and generations

    @discardableResult
    public func ensureIdentity(vmID: VMID) throws -> Identity {
        let vm = vmID.description
        return try self.run(.write, "record identity \(vm)") { s in try self.ensureIdentity(s, vm) }
    }

    public func identity(vmID: VMID) throws -> Identity? {
        let vm = vmID.description
        return try self.run(.read, "read identity \(vm)") { s in
            try s.fetchOne("SELECT vm_id, created_at FROM identity WHERE vm_id = ?", [.text(vm)])
                .map(Self.identity(from:))
        }
    }

    public func currentGeneration(vmID: VMID) throws -> Generation? {
        let vm = vmID.description
        return try self.run(.read, "read the current generation of \(vm)") { s in
            try s.fetchOne(
                """
                SELECT g.* FROM generation g
                JOIN identity i ON i.vm_id = g.vm_id AND i.current_generation = g.generation
                WHERE i.vm_id = ?
                """,
                [.text(vm)]
            ).map(Self.generation(from:))
        }
    }

    public func generation(vmID: VMID, generation: UInt64) throws -> Generation? {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.run(.read, "read generation \(generation) of \(vm)") { s in
            try s.fetchOne(
                "SELECT * FROM generation WHERE vm_id = ? AND generation = ?",
                [.text(vm), .integer(number)]
            ).map(Self.generation(from:))
        }
    }

    public func generations(vmID: VMID?) throws -> [Generation] {
        let vm = vmID?.description
        return try self.run(.read, "read generations") { s in
            let rows: [SQLRow]
            if let vm {
                rows = try s.fetchAll("SELECT * FROM generation WHERE vm_id = ? ORDER BY generation", [.text(vm)])
            } else {
                rows = try s.fetchAll("SELECT * FROM generation ORDER BY vm_id, generation", [])
            }
            return try rows.map(Self.generation(from:))
        }
    }

    @discardableResult
    public func beginGeneration(
        vmID: VMID,
        reason: Generation.Reason,
        parent: StateOrigin?,
        event: LineageEventDraft?
    ) throws -> Generation {
        let vm = vmID.description
        return try self.run(.durableWrite, "begin a generation of \(vm)") { s in
            try self.ensureIdentity(s, vm)
            let current = try self.currentGenerationNumber(s, vm)
            var next: UInt64 = 0
            if let current {
                guard current < UInt64(Int64.max) else {
                    throw RegistryError(.invalidArgument, "generation of \(vm) would exceed \(Int64.max)")
                }
                next = current + 1
            }
            if let parent, parent.vmID == vmID {
                guard parent.generation < UInt64(Int64.max) else {
                    throw RegistryError(.invalidArgument, "parent generation \(parent.generation) is out of range")
                }
                next = max(next, parent.generation + 1)
            }
            let generation = Generation(
                vmID: vmID,
                generation: next,
                createdAt: self.clock(),
                reason: reason,
                parent: parent
            )
            try self.advanceCurrentGeneration(s, vm, from: current, to: next)
            try self.insertGeneration(s, generation)
            if let event {
                _ = try self.insertEvent(s, vm, next, event)
            }
            return generation
        }
    }

    // MARK: - Checkpoints

    public func recordCheckpoint(vmID: VMID, generation: UInt64) throws -> UInt64 {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.run(.write, "record a checkpoint of \(vm) generation \(generation)") { s in
            guard let latest = try self.latestCheckpointNumber(s, vm, number) else {
                throw RegistryError(.unknownGeneration, "\(vm) has no generation \(generation)")
            }
            if latest > 0,
                let row = try s.fetchOne(
                    "SELECT ran_after FROM checkpoint WHERE vm_id = ? AND generation = ? AND checkpoint = ?",
                    [.text(vm), .integer(number), .integer(latest)]
                ),
                try !row.bool("ran_after")
            {
                return try Self.uint64(latest, "checkpoint")
            }
            guard latest < Int64.max else {
                throw RegistryError(.invalidArgument, "checkpoint of \(vm) would exceed \(Int64.max)")
            }
            let next = latest + 1
            try self.advanceLatestCheckpoint(s, vm, number, from: latest, to: next)
            try self.insertCheckpoint(s, vm, number, next, ifNew: false)
            return try Self.uint64(next, "checkpoint")
        }
    }

    @discardableResult
    public func recordCheckpoint(vmID: VMID, generation: UInt64, number: UInt64) throws -> Bool {
        let vm = vmID.description
        let gen = try Self.int64(generation, "generation")
        let wanted = try Self.int64(number, "checkpoint")
        return try self.run(.write, "record checkpoint \(number) of \(vm) generation \(generation)") { s in
            guard let latest = try self.latestCheckpointNumber(s, vm, gen) else {
                throw RegistryError(.unknownGeneration, "\(vm) has no generation \(generation)")
            }
            guard wanted > latest else { return false }
            try self.advanceLatestCheckpoint(s, vm, gen, from: latest, to: wanted)
            try self.insertCheckpoint(s, vm, gen, wanted, ifNew: false)
            return true
        }
    }

    @discardableResult
    public func markRan(vmID: VMID, generation: UInt64) throws -> Bool {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.run(.write, "mark \(vm) generation \(generation) as run") { s in
            try s.execute(
                """
                UPDATE checkpoint SET ran_after = TRUE
                WHERE vm_id = ? AND generation = ? AND ran_after = FALSE
                AND checkpoint = (SELECT latest_checkpoint FROM generation WHERE vm_id = ? AND generation = ?)
                """,
                [.text(vm), .integer(number), .text(vm), .integer(number)]
            ) == 1
        }
    }

    public func latestCheckpoint(vmID: VMID, generation: UInt64) throws -> Checkpoint? {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.run(.read, "read the latest checkpoint of \(vm) generation \(generation)") { s in
            try s.fetchOne(
                """
                SELECT c.* FROM checkpoint c
                JOIN generation g ON g.vm_id = c.vm_id AND g.generation = c.generation
                    AND g.latest_checkpoint = c.checkpoint
                WHERE g.vm_id = ? AND g.generation = ?
                """,
                [.text(vm), .integer(number)]
            ).map(Self.checkpoint(from:))
        }
    }

    @discardableResult
    public func recordArrival(_ origin: StateOrigin) throws -> Bool {
        let vm = origin.vmID.description
        let number = try Self.int64(origin.generation, "generation")
        let checkpoint = try origin.checkpoint.map { try Self.int64($0, "checkpoint") }
        return try self.run(.durableWrite, "record the arrival of \(origin)") { s in
            var changed = false
            try self.ensureIdentity(s, vm)
            let current = try self.currentGenerationNumber(s, vm)
            if current.map({ origin.generation > $0 }) ?? true {
                try self.advanceCurrentGeneration(s, vm, from: current, to: origin.generation)
                let generation = Generation(
                    vmID: origin.vmID,
                    generation: origin.generation,
                    createdAt: self.clock(),
                    reason: .adopt,
                    parent: nil
                )
                try self.insertGeneration(s, generation)
                changed = true
            }
            if let checkpoint, let latest = try self.latestCheckpointNumber(s, vm, number), checkpoint > latest {
                try self.advanceLatestCheckpoint(s, vm, number, from: latest, to: checkpoint)
                try self.insertCheckpoint(s, vm, number, checkpoint, ifNew: true)
                changed = true
            }
            return changed
        }
    }

    @discardableResult
    public func recordStateWrite(vmID: VMID, generation: UInt64, write: UInt64) throws -> Bool {
        let vm = vmID.description
        let gen = try Self.int64(generation, "generation")
        let value = try Self.int64(write, "state write")
        return try self.run(.write, "record state write \(write) of \(vm) generation \(generation)") { s in
            let changed = try s.execute(
                """
                UPDATE generation SET state_write = ?
                WHERE vm_id = ? AND generation = ? AND (state_write IS NULL OR state_write < ?)
                """,
                [.integer(value), .text(vm), .integer(gen), .integer(value)]
            )
            if changed == 1 { return true }
            guard try self.latestCheckpointNumber(s, vm, gen) != nil else {
                throw RegistryError(.unknownGeneration, "\(vm) has no generation \(generation)")
            }
            return false
        }
    }

    // MARK: - Lineage

    @discardableResult
    public func appendEvent(vmID: VMID, generation: UInt64, _ draft: LineageEventDraft) throws -> LineageEvent {
        let vm = vmID.description
        return try self.run(.write, "append a \(draft.kind) event for \(vm)") { s in
            try self.ensureIdentity(s, vm)
            return try self.insertEvent(s, vm, generation, draft)
        }
    }

    public func lineage(vmID: VMID?) throws -> [LineageEvent] {
        let vm = vmID?.description
        return try self.run(.read, "read lineage") { s in
            let rows: [SQLRow]
            if let vm {
                rows = try s.fetchAll("SELECT * FROM lineage_event WHERE vm_id = ? ORDER BY id", [.text(vm)])
            } else {
                rows = try s.fetchAll("SELECT * FROM lineage_event ORDER BY id", [])
            }
            return try rows.map(Self.event(from:))
        }
    }
}

// MARK: - Hosts

extension RegistryDatabase {
    @discardableResult
    public func registerHost(id: String, name: String, publicKey: [UInt8]) throws -> HostRecord {
        guard publicKey.count == 32, HostRecord.hostID(ofPublicKey: publicKey) == id else {
            throw RegistryError(.invalidArgument, "host id \(id) is not the id of the public key given with it")
        }
        return try self.run(.durableWrite, "register host \(id)") { s in
            try s.execute(
                """
                INSERT INTO host (host_id, name, public_key, registered_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (host_id) DO NOTHING
                """,
                [.text(id), .text(name), .text(publicKey.hexString), .integer(self.clock().microsecondsSinceEpoch)]
            )
            guard let row = try s.fetchOne("SELECT * FROM host WHERE host_id = ?", [.text(id)]) else {
                throw RegistryError(.conflict, "host \(id) vanished while it was registered")
            }
            let record = try Self.host(from: row)
            guard record.publicKey == publicKey else {
                throw RegistryError(.conflict, "host \(id) is registered with another public key")
            }
            return record
        }
    }

    public func host(id: String) throws -> HostRecord? {
        try self.run(.read, "read host \(id)") { s in
            try s.fetchOne("SELECT * FROM host WHERE host_id = ?", [.text(id)]).map(Self.host(from:))
        }
    }

    public func hosts() throws -> [HostRecord] {
        try self.run(.read, "read hosts") { s in
            try s.fetchAll("SELECT * FROM host ORDER BY registered_at, host_id", []).map(Self.host(from:))
        }
    }

    @discardableResult
    public func revokeHost(id: String, reason: String) throws -> HostRecord {
        try self.run(.durableWrite, "revoke host \(id)") { s in
            try s.execute(
                "UPDATE host SET revoked_at = ?, revoked_reason = ? WHERE host_id = ? AND revoked_at IS NULL",
                [.integer(self.clock().microsecondsSinceEpoch), .text(reason), .text(id)]
            )
            guard let row = try s.fetchOne("SELECT * FROM host WHERE host_id = ?", [.text(id)]) else {
                throw RegistryError(.invalidArgument, "no host \(id) is registered")
            }
            return try Self.host(from: row)
        }
    }

    static func host(from row: SQLRow) throws -> HostRecord {
        let keyText = try row.string("public_key")
        guard let key = [UInt8](hexString: keyText) else {
            throw RegistryError(.corrupt, "the registry holds a bad public_key for host \(try row.string("host_id"))")
        }
        return HostRecord(
            hostID: try row.string("host_id"),
            name: try row.string("name"),
            publicKey: key,
            registeredAt: Timestamp(microsecondsSinceEpoch: try row.int64("registered_at")),
            revokedAt: try row.optionalInt64("revoked_at").map { Timestamp(microsecondsSinceEpoch: $0) },
            revokedReason: try row.optionalString("revoked_reason")
        )
    }
}

// MARK: - Statements used inside transactions

extension RegistryDatabase {
    @discardableResult
    private func ensureIdentity(_ s: any SQLSession, _ vm: String) throws -> Identity {
        try s.execute(
            """
            INSERT INTO identity (vm_id, created_at, current_generation) VALUES (?, ?, NULL)
            ON CONFLICT (vm_id) DO NOTHING
            """,
            [.text(vm), .integer(self.clock().microsecondsSinceEpoch)]
        )
        guard let row = try s.fetchOne("SELECT vm_id, created_at FROM identity WHERE vm_id = ?", [.text(vm)]) else {
            throw RegistryError(.conflict, "identity \(vm) vanished while it was recorded")
        }
        return try Self.identity(from: row)
    }

    private func currentGenerationNumber(_ s: any SQLSession, _ vm: String) throws -> UInt64? {
        guard let row = try s.fetchOne("SELECT current_generation FROM identity WHERE vm_id = ?", [.text(vm)]) else {
            throw RegistryError(.unknownIdentity, "\(vm) has no identity record")
        }
        return try row.optionalInt64("current_generation").map { try Self.uint64($0, "generation") }
    }

    /// Compare-and-set of `identity.current_generation`.
    private func advanceCurrentGeneration(_ s: any SQLSession, _ vm: String, from old: UInt64?, to new: UInt64) throws {
        let oldValue = try old.map { try Self.int64($0, "generation") }
        let changed = try s.execute(
            """
            UPDATE identity SET current_generation = ?
            WHERE vm_id = ? AND current_generation IS NOT DISTINCT FROM ?
            """,
            [.integer(try Self.int64(new, "generation")), .text(vm), SQLValue(oldValue)]
        )
        guard changed == 1 else {
            throw RegistryError(.conflict, "the current generation of \(vm) changed while generation \(new) began")
        }
    }

    private func insertGeneration(_ s: any SQLSession, _ generation: Generation) throws {
        try s.execute(
            """
            INSERT INTO generation (vm_id, generation, created_at, reason,
                parent_vm_id, parent_generation, parent_checkpoint, latest_checkpoint)
            VALUES (?, ?, ?, ?, ?, ?, ?, 0)
            """,
            [
                .text(generation.vmID.description),
                .integer(try Self.int64(generation.generation, "generation")),
                .integer(generation.createdAt.microsecondsSinceEpoch),
                .text(generation.reason.rawValue),
                SQLValue(generation.parent?.vmID.description),
                SQLValue(try generation.parent.map { try Self.int64($0.generation, "parent generation") }),
                SQLValue(try generation.parent?.checkpoint.map { try Self.int64($0, "parent checkpoint") }),
            ]
        )
    }

    /// `generation.latest_checkpoint`, or nil when the generation has no record.
    private func latestCheckpointNumber(_ s: any SQLSession, _ vm: String, _ generation: Int64) throws -> Int64? {
        try s.fetchOne(
            "SELECT latest_checkpoint FROM generation WHERE vm_id = ? AND generation = ?",
            [.text(vm), .integer(generation)]
        ).map { try $0.int64("latest_checkpoint") }
    }

    /// Compare-and-set of `generation.latest_checkpoint`.
    private func advanceLatestCheckpoint(
        _ s: any SQLSession,
        _ vm: String,
        _ generation: Int64,
        from old: Int64,
        to new: Int64
    ) throws {
        let changed = try s.execute(
            "UPDATE generation SET latest_checkpoint = ? WHERE vm_id = ? AND generation = ? AND latest_checkpoint = ?",
            [.integer(new), .text(vm), .integer(generation), .integer(old)]
        )
        guard changed == 1 else {
            throw RegistryError(
                .conflict,
                "the latest checkpoint of \(vm) generation \(generation) changed while checkpoint \(new) was recorded"
            )
        }
    }

    private func insertCheckpoint(
        _ s: any SQLSession,
        _ vm: String,
        _ generation: Int64,
        _ checkpoint: Int64,
        ifNew: Bool
    ) throws {
        try s.execute(
            """
            INSERT INTO checkpoint (vm_id, generation, checkpoint, created_at, ran_after)
            VALUES (?, ?, ?, ?, FALSE)
            """ + (ifNew ? " ON CONFLICT (vm_id, generation, checkpoint) DO NOTHING" : ""),
            [.text(vm), .integer(generation), .integer(checkpoint), .integer(self.clock().microsecondsSinceEpoch)]
        )
    }

    private func insertEvent(
        _ s: any SQLSession,
        _ vm: String,
        _ generation: UInt64,
        _ draft: LineageEventDraft
    ) throws -> LineageEvent {
        let row = try s.fetchOne(
            """
            INSERT INTO lineage_event (vm_id, generation, kind, source_vm_id, source_generation,
                source_checkpoint, at, duration_micros, detail)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            RETURNING *
            """,
            [
                .text(vm),
                .integer(try Self.int64(generation, "generation")),
                .text(draft.kind.rawValue),
                SQLValue(draft.source?.vmID.description),
                SQLValue(try draft.source.map { try Self.int64($0.generation, "source generation") }),
                SQLValue(try draft.source?.checkpoint.map { try Self.int64($0, "source checkpoint") }),
                .integer(self.clock().microsecondsSinceEpoch),
                SQLValue(draft.durationMicros),
                .text(draft.detail),
            ]
        )
        guard let row else { throw RegistryError(.database, "INSERT INTO lineage_event returned no row") }
        return try Self.event(from: row)
    }
}

// MARK: - Rows and numbers

extension RegistryDatabase {
    static func identity(from row: SQLRow) throws -> Identity {
        Identity(
            vmID: try Self.vmID(row, "vm_id"),
            createdAt: Timestamp(microsecondsSinceEpoch: try row.int64("created_at"))
        )
    }

    static func generation(from row: SQLRow) throws -> Generation {
        Generation(
            vmID: try Self.vmID(row, "vm_id"),
            generation: try uint64(try row.int64("generation"), "generation"),
            createdAt: Timestamp(microsecondsSinceEpoch: try row.int64("created_at")),
            reason: Generation.Reason(rawValue: try row.string("reason")),
            parent: try Self.origin(row, "parent_vm_id", "parent_generation", "parent_checkpoint"),
            stateWrite: try row.optionalInt64("state_write").map { try uint64($0, "state_write") }
        )
    }

    static func checkpoint(from row: SQLRow) throws -> Checkpoint {
        Checkpoint(
            vmID: try Self.vmID(row, "vm_id"),
            generation: try uint64(try row.int64("generation"), "generation"),
            checkpoint: try uint64(try row.int64("checkpoint"), "checkpoint"),
            createdAt: Timestamp(microsecondsSinceEpoch: try row.int64("created_at")),
            ranAfter: try row.bool("ran_after")
        )
    }

    static func event(from row: SQLRow) throws -> LineageEvent {
        LineageEvent(
            id: try row.int64("id"),
            vmID: try Self.vmID(row, "vm_id"),
            generation: try uint64(try row.int64("generation"), "generation"),
            kind: LineageEvent.Kind(rawValue: try row.string("kind")),
            source: try Self.origin(row, "source_vm_id", "source_generation", "source_checkpoint"),
            at: Timestamp(microsecondsSinceEpoch: try row.int64("at")),
            durationMicros: try row.optionalInt64("duration_micros"),
            detail: try row.string("detail")
        )
    }

    /// A (vm-id, generation, checkpoint) triple of columns, nil when the vm-id or generation is NULL.
    private static func origin(
        _ row: SQLRow,
        _ vm: String,
        _ generation: String,
        _ checkpoint: String
    ) throws
        -> StateOrigin?
    {
        guard let vmID = try Self.optionalVMID(row, vm), let number = try row.optionalInt64(generation) else {
            return nil
        }
        return StateOrigin(
            vmID: vmID,
            generation: try uint64(number, generation),
            checkpoint: try row.optionalInt64(checkpoint).map { try uint64($0, checkpoint) }
        )
    }

    /// A stored vm-id column.
    static func vmID(_ row: SQLRow, _ column: String) throws -> VMID {
        guard let vm = try self.optionalVMID(row, column) else {
            throw RegistryError(.corrupt, "the registry holds a NULL \(column)")
        }
        return vm
    }

    /// A stored vm-id column that may be NULL.
    static func optionalVMID(_ row: SQLRow, _ column: String) throws -> VMID? {
        guard let text = try row.optionalString(column) else { return nil }
        guard let vm = VMID(text) else { throw RegistryError(.corrupt, "the registry holds a bad \(column) '\(text)'") }
        return vm
    }

    /// An unsigned number as the signed BIGINT the schema stores.
    static func int64(_ value: UInt64, _ what: String) throws -> Int64 {
        guard let result = Int64(exactly: value) else {
            throw RegistryError(.invalidArgument, "\(what) \(value) is larger than \(Int64.max)")
        }
        return result
    }

    /// A stored BIGINT as the unsigned number it stands for.
    static func uint64(_ value: Int64, _ what: String) throws -> UInt64 {
        guard let result = UInt64(exactly: value) else {
            throw RegistryError(.corrupt, "the registry holds a negative \(what) (\(value))")
        }
        return result
    }
}

// MARK: - Endorsement keys

extension RegistryDatabase {
    public func recordEndorsementKey(_ record: EndorsementKeyRecord) throws {
        let vm = record.vmID.description
        let generation = try Self.int64(record.generation, "generation")
        let parentGeneration = try record.parentGeneration.map { try Self.int64($0, "parent generation") }
        let what = "record the \(record.algorithm.rawValue) EK of \(vm) generation \(record.generation)"
        try self.run(.durableWrite, what) { s in
            let current = try s.fetchOne("SELECT current_generation FROM identity WHERE vm_id = ?", [.text(vm)])?
                .optionalInt64("current_generation")
            let existing = try s.fetchOne(
                "SELECT * FROM endorsement_key WHERE vm_id = ? AND generation = ? AND algorithm = ?",
                [.text(vm), .integer(generation), .text(record.algorithm.rawValue)]
            ).map(Self.endorsementKey(from:))
            if let current, generation <= current {
                // The generation is recorded: its keys are fixed.
                guard let existing, existing.matches(record) else {
                    throw RegistryError(
                        .conflict,
                        "\(vm) is at generation \(current): the EKs of generation \(record.generation) are fixed"
                    )
                }
                return
            }
            let values: [SQLValue] = [
                .text(record.publicKeyDigest.hexString), record.parentVMID.map { .text($0.description) } ?? .null,
                parentGeneration.map { .integer($0) } ?? .null, .integer(self.clock().microsecondsSinceEpoch),
                .text(vm), .integer(generation), .text(record.algorithm.rawValue),
            ]
            if existing == nil {
                try s.execute(
                    """
                    INSERT INTO endorsement_key (public_key_digest, parent_vm_id, parent_generation, recorded_at,
                        vm_id, generation, algorithm) VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                    values
                )
            } else {
                try s.execute(
                    """
                    UPDATE endorsement_key SET public_key_digest = ?, parent_vm_id = ?, parent_generation = ?,
                        recorded_at = ? WHERE vm_id = ? AND generation = ? AND algorithm = ?
                    """,
                    values
                )
            }
        }
    }

    public func endorsementKey(
        vmID: VMID,
        generation: UInt64,
        algorithm: EndorsementKeyRecord.Algorithm
    ) throws -> EndorsementKeyRecord? {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.run(.read, "read the \(algorithm.rawValue) EK of \(vm) generation \(generation)") { s in
            try s.fetchOne(
                "SELECT * FROM endorsement_key WHERE vm_id = ? AND generation = ? AND algorithm = ?",
                [.text(vm), .integer(number), .text(algorithm.rawValue)]
            ).map(Self.endorsementKey(from:))
        }
    }

    static func endorsementKey(from row: SQLRow) throws -> EndorsementKeyRecord {
        let vm = try Self.vmID(row, "vm_id")
        guard let algorithm = EndorsementKeyRecord.Algorithm(rawValue: try row.string("algorithm")),
            let digest = [UInt8](hexString: try row.string("public_key_digest")), digest.count == 32
        else {
            throw RegistryError(.corrupt, "the registry holds a bad endorsement_key row of \(vm)")
        }
        return EndorsementKeyRecord(
            vmID: vm,
            generation: try Self.uint64(try row.int64("generation"), "generation"),
            algorithm: algorithm,
            publicKeyDigest: digest,
            parentVMID: try Self.optionalVMID(row, "parent_vm_id"),
            parentGeneration: try row.optionalInt64("parent_generation").map { try Self.uint64($0, "generation") },
            recordedAt: Timestamp(microsecondsSinceEpoch: try row.int64("recorded_at"))
        )
    }
}
