internal import GRDB
public import VMIdentity

/// The embedded registry: one SQLite file per host, shared by every vtpmd on it.
///
/// The default path is ``defaultPath`` (`/var/lib/vtpm/registry.sqlite`), overridable with
/// `--registry PATH`. A missing file is created with mode 0600 (and a missing directory with 0700);
/// an existing one must be a regular file that group and others cannot write. Several vtpmd processes
/// may use one file: every write is an IMMEDIATE transaction, and a busy database is retried for
/// `busyTimeout` seconds. The journal is a write-ahead log. Generations (and everything in the same
/// transaction as one) are committed with `synchronous=FULL`, so they survive a power loss. Checkpoints
/// and "ran after" marks, written on every savevm and the first command after it, are committed with
/// `synchronous=NORMAL`: one WAL append, no sync, so a snapshot costs about what swtpm's does. They
/// survive a crash of vtpmd or QEMU; a power loss may drop the last few, and a rollback to a checkpoint
/// the registry does not know is then taken for a move (``DecisionTable``: no rekey without evidence).
public final class SQLiteRegistry: RegistryStore {
    /// The documented default location of the registry file.
    public static let defaultPath = "/var/lib/vtpm/registry.sqlite"

    /// The registry file.
    public let path: String
    private let queue: DatabaseQueue
    private let clock: @Sendable () -> Timestamp

    /// Opens (creating if missing) the registry at `path` and brings its schema up to date.
    /// - Parameters:
    ///   - path: The registry file.
    ///   - busyTimeout: How long, in seconds, to wait for another process's transaction.
    ///   - clock: The source of `createdAt` and `at` times (tests pass a fixed clock).
    /// - Throws: ``RegistryError``: ``RegistryError/Code/notADatabase`` when the file is not an SQLite database,
    ///   ``RegistryError/Code/hostileFile`` for a symlink or a writable-by-others file,
    ///   ``RegistryError/Code/unsupportedSchemaVersion`` when a newer build wrote it.
    public init(
        path: String = SQLiteRegistry.defaultPath,
        busyTimeout: Double = 5,
        clock: @escaping @Sendable () -> Timestamp = { Timestamp.now() }
    ) throws {
        self.path = path
        self.clock = clock
        _ = try RegistryFile.prepare(path: path)
        var configuration = Configuration()
        configuration.busyMode = .timeout(busyTimeout)
        configuration.foreignKeysEnabled = true
        configuration.label = "vtpm.registry"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA journal_mode = WAL")
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        self.queue = try Self.mapErrors("open", path: path) {
            try DatabaseQueue(path: path, configuration: configuration)
        }
        try Self.mapErrors("migrate", path: path) {
            // A registry at the current version (every start but the first after an upgrade) needs no
            // write transaction; the migration re-checks the version inside its own.
            let current = try self.queue.read { db in Schema.isCurrent(db) }
            if !current { try self.queue.write { db in try Schema.migrate(db) } }
        }
    }

    /// Closes the database. Later calls throw.
    /// - Throws: ``RegistryError`` when SQLite cannot close (a statement still running).
    public func close() throws {
        try Self.mapErrors("close", path: self.path) { try self.queue.close() }
    }

    /// The schema version of the open file.
    /// - Throws: ``RegistryError``.
    public func schemaVersion() throws -> Int64 {
        try self.read("read the schema version") { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT version FROM schema_version") else {
                throw RegistryError(.corrupt, "schema_version is empty")
            }
            return try row.decode(Int64.self, forColumn: "version")
        }
    }

    // MARK: - Identities and generations

    @discardableResult
    public func ensureIdentity(vmID: VMID) throws -> Identity {
        let vm = vmID.description
        return try self.write("record identity \(vm)") { db in try self.ensureIdentity(db, vm) }
    }

    public func identity(vmID: VMID) throws -> Identity? {
        let vm = vmID.description
        return try self.read("read identity \(vm)") { db in
            try Row.fetchOne(db, sql: "SELECT vm_id, created_at FROM identity WHERE vm_id = ?", arguments: [vm])
                .map(Self.identity(from:))
        }
    }

    public func currentGeneration(vmID: VMID) throws -> Generation? {
        let vm = vmID.description
        return try self.read("read the current generation of \(vm)") { db in
            try Row.fetchOne(
                db,
                sql: """
                    SELECT g.* FROM generation g
                    JOIN identity i ON i.vm_id = g.vm_id AND i.current_generation = g.generation
                    WHERE i.vm_id = ?
                    """,
                arguments: [vm]
            ).map(Self.generation(from:))
        }
    }

    public func generation(vmID: VMID, generation: UInt64) throws -> Generation? {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.read("read generation \(generation) of \(vm)") { db in
            try Row.fetchOne(
                db,
                sql: "SELECT * FROM generation WHERE vm_id = ? AND generation = ?",
                arguments: [vm, number]
            ).map(Self.generation(from:))
        }
    }

    public func generations(vmID: VMID?) throws -> [Generation] {
        let vm = vmID?.description
        return try self.read("read generations") { db in
            let rows: [Row]
            if let vm {
                rows = try Row.fetchAll(
                    db,
                    sql: "SELECT * FROM generation WHERE vm_id = ? ORDER BY generation",
                    arguments: [vm]
                )
            } else {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM generation ORDER BY vm_id, generation")
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
        return try self.durableWrite("begin a generation of \(vm)") { db in
            try self.ensureIdentity(db, vm)
            let current = try self.currentGenerationNumber(db, vm)
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
            try self.advanceCurrentGeneration(db, vm, from: current, to: next)
            try self.insertGeneration(db, generation)
            if let event {
                _ = try self.insertEvent(db, vm, next, event)
            }
            return generation
        }
    }

    // MARK: - Checkpoints

    public func recordCheckpoint(vmID: VMID, generation: UInt64) throws -> UInt64 {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.write("record a checkpoint of \(vm) generation \(generation)") { db in
            guard let latest = try self.latestCheckpointNumber(db, vm, number) else {
                throw RegistryError(.unknownGeneration, "\(vm) has no generation \(generation)")
            }
            if latest > 0,
                let row = try Row.fetchOne(
                    db,
                    sql: "SELECT ran_after FROM checkpoint WHERE vm_id = ? AND generation = ? AND checkpoint = ?",
                    arguments: [vm, number, latest]
                ),
                try !row.decode(Bool.self, forColumn: "ran_after")
            {
                return try Self.uint64(latest, "checkpoint")
            }
            guard latest < Int64.max else {
                throw RegistryError(.invalidArgument, "checkpoint of \(vm) would exceed \(Int64.max)")
            }
            let next = latest + 1
            try self.advanceLatestCheckpoint(db, vm, number, from: latest, to: next)
            try db.execute(
                sql: """
                    INSERT INTO checkpoint (vm_id, generation, checkpoint, created_at, ran_after)
                    VALUES (?, ?, ?, ?, FALSE)
                    """,
                arguments: [vm, number, next, self.clock().microsecondsSinceEpoch]
            )
            return try Self.uint64(next, "checkpoint")
        }
    }

    @discardableResult
    public func recordCheckpoint(vmID: VMID, generation: UInt64, number: UInt64) throws -> Bool {
        let vm = vmID.description
        let gen = try Self.int64(generation, "generation")
        let wanted = try Self.int64(number, "checkpoint")
        return try self.write("record checkpoint \(number) of \(vm) generation \(generation)") { db in
            guard let latest = try self.latestCheckpointNumber(db, vm, gen) else {
                throw RegistryError(.unknownGeneration, "\(vm) has no generation \(generation)")
            }
            guard wanted > latest else { return false }
            try self.advanceLatestCheckpoint(db, vm, gen, from: latest, to: wanted)
            try db.execute(
                sql: """
                    INSERT INTO checkpoint (vm_id, generation, checkpoint, created_at, ran_after)
                    VALUES (?, ?, ?, ?, FALSE)
                    """,
                arguments: [vm, gen, wanted, self.clock().microsecondsSinceEpoch]
            )
            return true
        }
    }

    @discardableResult
    public func markRan(vmID: VMID, generation: UInt64) throws -> Bool {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.write("mark \(vm) generation \(generation) as run") { db in
            try db.execute(
                sql: """
                    UPDATE checkpoint SET ran_after = TRUE
                    WHERE vm_id = ? AND generation = ? AND ran_after = FALSE
                    AND checkpoint = (SELECT latest_checkpoint FROM generation WHERE vm_id = ? AND generation = ?)
                    """,
                arguments: [vm, number, vm, number]
            )
            return db.changesCount == 1
        }
    }

    public func latestCheckpoint(vmID: VMID, generation: UInt64) throws -> Checkpoint? {
        let vm = vmID.description
        let number = try Self.int64(generation, "generation")
        return try self.read("read the latest checkpoint of \(vm) generation \(generation)") { db in
            try Row.fetchOne(
                db,
                sql: """
                    SELECT c.* FROM checkpoint c
                    JOIN generation g ON g.vm_id = c.vm_id AND g.generation = c.generation
                        AND g.latest_checkpoint = c.checkpoint
                    WHERE g.vm_id = ? AND g.generation = ?
                    """,
                arguments: [vm, number]
            ).map(Self.checkpoint(from:))
        }
    }

    @discardableResult
    public func recordArrival(_ origin: StateOrigin) throws -> Bool {
        let vm = origin.vmID.description
        let number = try Self.int64(origin.generation, "generation")
        let checkpoint = try origin.checkpoint.map { try Self.int64($0, "checkpoint") }
        return try self.durableWrite("record the arrival of \(origin)") { db in
            var changed = false
            try self.ensureIdentity(db, vm)
            let current = try self.currentGenerationNumber(db, vm)
            if current.map({ origin.generation > $0 }) ?? true {
                try self.advanceCurrentGeneration(db, vm, from: current, to: origin.generation)
                let generation = Generation(
                    vmID: origin.vmID,
                    generation: origin.generation,
                    createdAt: self.clock(),
                    reason: .adopt,
                    parent: nil
                )
                try self.insertGeneration(db, generation)
                changed = true
            }
            if let checkpoint, let latest = try self.latestCheckpointNumber(db, vm, number), checkpoint > latest {
                try self.advanceLatestCheckpoint(db, vm, number, from: latest, to: checkpoint)
                try db.execute(
                    sql: """
                        INSERT INTO checkpoint (vm_id, generation, checkpoint, created_at, ran_after)
                        VALUES (?, ?, ?, ?, FALSE)
                        ON CONFLICT (vm_id, generation, checkpoint) DO NOTHING
                        """,
                    arguments: [vm, number, checkpoint, self.clock().microsecondsSinceEpoch]
                )
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
        return try self.write("record state write \(write) of \(vm) generation \(generation)") { db in
            try db.execute(
                sql: """
                    UPDATE generation SET state_write = ?
                    WHERE vm_id = ? AND generation = ? AND (state_write IS NULL OR state_write < ?)
                    """,
                arguments: [value, vm, gen, value]
            )
            if db.changesCount == 1 { return true }
            guard try self.latestCheckpointNumber(db, vm, gen) != nil else {
                throw RegistryError(.unknownGeneration, "\(vm) has no generation \(generation)")
            }
            return false
        }
    }

    // MARK: - Lineage

    @discardableResult
    public func appendEvent(vmID: VMID, generation: UInt64, _ draft: LineageEventDraft) throws -> LineageEvent {
        let vm = vmID.description
        return try self.write("append a \(draft.kind) event for \(vm)") { db in
            try self.ensureIdentity(db, vm)
            return try self.insertEvent(db, vm, generation, draft)
        }
    }

    public func lineage(vmID: VMID?) throws -> [LineageEvent] {
        let vm = vmID?.description
        return try self.read("read lineage") { db in
            let rows: [Row]
            if let vm {
                rows = try Row.fetchAll(
                    db,
                    sql: "SELECT * FROM lineage_event WHERE vm_id = ? ORDER BY id",
                    arguments: [vm]
                )
            } else {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM lineage_event ORDER BY id")
            }
            return try rows.map(Self.event(from:))
        }
    }
}

// MARK: - Statements used inside transactions

extension SQLiteRegistry {
    @discardableResult
    private func ensureIdentity(_ db: Database, _ vm: String) throws -> Identity {
        try db.execute(
            sql: """
                INSERT INTO identity (vm_id, created_at, current_generation) VALUES (?, ?, NULL)
                ON CONFLICT (vm_id) DO NOTHING
                """,
            arguments: [vm, self.clock().microsecondsSinceEpoch]
        )
        guard
            let row = try Row.fetchOne(
                db,
                sql: "SELECT vm_id, created_at FROM identity WHERE vm_id = ?",
                arguments: [vm]
            )
        else {
            throw RegistryError(.conflict, "identity \(vm) vanished while it was recorded")
        }
        return try Self.identity(from: row)
    }

    private func currentGenerationNumber(_ db: Database, _ vm: String) throws -> UInt64? {
        guard
            let row = try Row.fetchOne(
                db,
                sql: "SELECT current_generation FROM identity WHERE vm_id = ?",
                arguments: [vm]
            )
        else {
            throw RegistryError(.unknownIdentity, "\(vm) has no identity record")
        }
        return try row.decode(Int64?.self, forColumn: "current_generation").map { try Self.uint64($0, "generation") }
    }

    /// Compare-and-set of `identity.current_generation`.
    private func advanceCurrentGeneration(_ db: Database, _ vm: String, from old: UInt64?, to new: UInt64) throws {
        let oldValue = try old.map { try Self.int64($0, "generation") }
        try db.execute(
            sql: """
                UPDATE identity SET current_generation = ?
                WHERE vm_id = ? AND current_generation IS NOT DISTINCT FROM ?
                """,
            arguments: [try Self.int64(new, "generation"), vm, oldValue]
        )
        guard db.changesCount == 1 else {
            throw RegistryError(.conflict, "the current generation of \(vm) changed while generation \(new) began")
        }
    }

    private func insertGeneration(_ db: Database, _ generation: Generation) throws {
        try db.execute(
            sql: """
                INSERT INTO generation (vm_id, generation, created_at, reason,
                    parent_vm_id, parent_generation, parent_checkpoint, latest_checkpoint)
                VALUES (?, ?, ?, ?, ?, ?, ?, 0)
                """,
            arguments: [
                generation.vmID.description,
                try Self.int64(generation.generation, "generation"),
                generation.createdAt.microsecondsSinceEpoch,
                generation.reason.rawValue,
                generation.parent?.vmID.description,
                try generation.parent.map { try Self.int64($0.generation, "parent generation") },
                try generation.parent?.checkpoint.map { try Self.int64($0, "parent checkpoint") },
            ]
        )
    }

    /// `generation.latest_checkpoint`, or nil when the generation has no record.
    private func latestCheckpointNumber(_ db: Database, _ vm: String, _ generation: Int64) throws -> Int64? {
        try Row.fetchOne(
            db,
            sql: "SELECT latest_checkpoint FROM generation WHERE vm_id = ? AND generation = ?",
            arguments: [vm, generation]
        ).map { try $0.decode(Int64.self, forColumn: "latest_checkpoint") }
    }

    /// Compare-and-set of `generation.latest_checkpoint`.
    private func advanceLatestCheckpoint(
        _ db: Database,
        _ vm: String,
        _ generation: Int64,
        from old: Int64,
        to new: Int64
    ) throws {
        try db.execute(
            sql: """
                UPDATE generation SET latest_checkpoint = ?
                WHERE vm_id = ? AND generation = ? AND latest_checkpoint = ?
                """,
            arguments: [new, vm, generation, old]
        )
        guard db.changesCount == 1 else {
            throw RegistryError(
                .conflict,
                "the latest checkpoint of \(vm) generation \(generation) changed while checkpoint \(new) was recorded"
            )
        }
    }

    private func insertEvent(
        _ db: Database,
        _ vm: String,
        _ generation: UInt64,
        _ draft: LineageEventDraft
    ) throws -> LineageEvent {
        let row = try Row.fetchOne(
            db,
            sql: """
                INSERT INTO lineage_event (vm_id, generation, kind, source_vm_id, source_generation,
                    source_checkpoint, at, duration_micros, detail)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                RETURNING *
                """,
            arguments: [
                vm,
                try Self.int64(generation, "generation"),
                draft.kind.rawValue,
                draft.source?.vmID.description,
                try draft.source.map { try Self.int64($0.generation, "source generation") },
                try draft.source?.checkpoint.map { try Self.int64($0, "source checkpoint") },
                self.clock().microsecondsSinceEpoch,
                draft.durationMicros,
                draft.detail,
            ]
        )
        guard let row else { throw RegistryError(.database, "INSERT INTO lineage_event returned no row") }
        return try Self.event(from: row)
    }
}

// MARK: - Rows, numbers, errors

extension SQLiteRegistry {
    private static func identity(from row: Row) throws -> Identity {
        Identity(
            vmID: try Self.vmID(row, "vm_id"),
            createdAt: Timestamp(microsecondsSinceEpoch: try row.decode(Int64.self, forColumn: "created_at"))
        )
    }

    private static func generation(from row: Row) throws -> Generation {
        var parent: StateOrigin? = nil
        if let parentVM = try Self.optionalVMID(row, "parent_vm_id"),
            let parentGeneration = try row.decode(Int64?.self, forColumn: "parent_generation")
        {
            parent = StateOrigin(
                vmID: parentVM,
                generation: try uint64(parentGeneration, "parent_generation"),
                checkpoint: try row.decode(Int64?.self, forColumn: "parent_checkpoint").map {
                    try uint64($0, "parent_checkpoint")
                }
            )
        }
        return Generation(
            vmID: try Self.vmID(row, "vm_id"),
            generation: try uint64(try row.decode(Int64.self, forColumn: "generation"), "generation"),
            createdAt: Timestamp(microsecondsSinceEpoch: try row.decode(Int64.self, forColumn: "created_at")),
            reason: Generation.Reason(rawValue: try row.decode(String.self, forColumn: "reason")),
            parent: parent,
            stateWrite: try row.decode(Int64?.self, forColumn: "state_write").map { try uint64($0, "state_write") }
        )
    }

    private static func checkpoint(from row: Row) throws -> Checkpoint {
        Checkpoint(
            vmID: try Self.vmID(row, "vm_id"),
            generation: try uint64(try row.decode(Int64.self, forColumn: "generation"), "generation"),
            checkpoint: try uint64(try row.decode(Int64.self, forColumn: "checkpoint"), "checkpoint"),
            createdAt: Timestamp(microsecondsSinceEpoch: try row.decode(Int64.self, forColumn: "created_at")),
            ranAfter: try row.decode(Bool.self, forColumn: "ran_after")
        )
    }

    private static func event(from row: Row) throws -> LineageEvent {
        var source: StateOrigin? = nil
        if let sourceVM = try Self.optionalVMID(row, "source_vm_id"),
            let sourceGeneration = try row.decode(Int64?.self, forColumn: "source_generation")
        {
            source = StateOrigin(
                vmID: sourceVM,
                generation: try uint64(sourceGeneration, "source_generation"),
                checkpoint: try row.decode(Int64?.self, forColumn: "source_checkpoint").map {
                    try uint64($0, "source_checkpoint")
                }
            )
        }
        return LineageEvent(
            id: try row.decode(Int64.self, forColumn: "id"),
            vmID: try Self.vmID(row, "vm_id"),
            generation: try uint64(try row.decode(Int64.self, forColumn: "generation"), "generation"),
            kind: LineageEvent.Kind(rawValue: try row.decode(String.self, forColumn: "kind")),
            source: source,
            at: Timestamp(microsecondsSinceEpoch: try row.decode(Int64.self, forColumn: "at")),
            durationMicros: try row.decode(Int64?.self, forColumn: "duration_micros"),
            detail: try row.decode(String.self, forColumn: "detail")
        )
    }

    /// A stored vm-id column.
    private static func vmID(_ row: Row, _ column: String) throws -> VMID {
        guard let vm = try self.optionalVMID(row, column) else {
            throw RegistryError(.corrupt, "the registry holds a NULL \(column)")
        }
        return vm
    }

    /// A stored vm-id column that may be NULL.
    private static func optionalVMID(_ row: Row, _ column: String) throws -> VMID? {
        guard let text = try row.decode(String?.self, forColumn: column) else { return nil }
        guard let vm = VMID(text) else { throw RegistryError(.corrupt, "the registry holds a bad \(column) '\(text)'") }
        return vm
    }

    /// An unsigned number as the signed BIGINT the schema stores.
    private static func int64(_ value: UInt64, _ what: String) throws -> Int64 {
        guard let result = Int64(exactly: value) else {
            throw RegistryError(.invalidArgument, "\(what) \(value) is larger than \(Int64.max)")
        }
        return result
    }

    /// A stored BIGINT as the unsigned number it stands for.
    private static func uint64(_ value: Int64, _ what: String) throws -> UInt64 {
        guard let result = UInt64(exactly: value) else {
            throw RegistryError(.corrupt, "the registry holds a negative \(what) (\(value))")
        }
        return result
    }

    private func read<T>(_ operation: String, _ body: (Database) throws -> T) throws -> T {
        try Self.mapErrors(operation, path: self.path) { try self.queue.read(body) }
    }

    private func write<T>(_ operation: String, _ body: (Database) throws -> T) throws -> T {
        try Self.mapErrors(operation, path: self.path) { try self.queue.write(body) }
    }

    /// A write committed with `synchronous=FULL` (the WAL is synced before it returns).
    private func durableWrite<T>(_ operation: String, _ body: (Database) throws -> T) throws -> T {
        try Self.mapErrors(operation, path: self.path) {
            try self.queue.inDatabase { db in
                try db.execute(sql: "PRAGMA synchronous = FULL")
                defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
                var result: T? = nil
                try db.inTransaction(.immediate) {
                    result = try body(db)
                    return .commit
                }
                guard let result else {
                    throw RegistryError(.conflict, "\(operation): the transaction produced no result")
                }
                return result
            }
        }
    }

    /// Runs `body`, turning GRDB's errors into ``RegistryError``s that name the operation and the file.
    private static func mapErrors<T>(_ operation: String, path: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as RegistryError {
            throw error
        } catch let error as DatabaseError {
            let code = error.extendedResultCode.rawValue
            let detail = error.message ?? "\(error.resultCode)"
            switch error.resultCode {
            case .SQLITE_NOTADB:
                throw RegistryError(
                    .notADatabase,
                    "\(path) is not an SQLite database (\(operation)): \(detail)",
                    sqliteCode: code
                )
            case .SQLITE_CORRUPT:
                throw RegistryError(
                    .corrupt,
                    "the registry \(path) is corrupt (\(operation)): \(detail)",
                    sqliteCode: code
                )
            default:
                throw RegistryError(
                    .database,
                    "registry \(path): cannot \(operation): \(detail)",
                    sqliteCode: code
                )
            }
        } catch let error as RowDecodingError {
            throw RegistryError(.corrupt, "registry \(path): cannot \(operation): unexpected row: \(error)")
        } catch {
            throw RegistryError(.database, "registry \(path): cannot \(operation): \(error)")
        }
    }
}
