internal import GRDB
public import VMIdentity

/// The embedded registry: one SQLite file per host, shared by every vtpmd on it.
///
/// The default path is ``RegistryDatabase/defaultSQLitePath`` (`/var/lib/vtpm/registry.sqlite`), overridable
/// with `--registry PATH`. A missing file is created with mode 0600 (and a missing directory with 0700);
/// an existing one must be a regular file that group and others cannot write. Several vtpmd processes
/// may use one file: every write is an IMMEDIATE transaction, and a busy database is retried for
/// `busyTimeout` seconds. The journal is a write-ahead log. Generations (and everything in the same
/// transaction as one) are committed with `synchronous=FULL`, so they survive a power loss. Checkpoints
/// and "ran after" marks, written on every savevm and the first command after it, are committed with
/// `synchronous=NORMAL`: one WAL append, no sync, so a snapshot costs about what swtpm's does. They
/// survive a crash of vtpmd or QEMU; a power loss may drop the last few, and a rollback to a checkpoint
/// the registry does not know is then taken for a move (``DecisionTable``: no rekey without evidence).
final class SQLiteBackend: RegistryBackend {
    let path: String
    let timeout: Duration
    private let queue: DatabaseQueue

    var location: String { self.path }

    init(path: String, busyTimeout: Double) throws {
        self.path = path
        self.timeout = .milliseconds(Int64(busyTimeout * 1000))
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
        // A registry at the current version (every start but the first after an upgrade) needs no
        // write transaction; the migration re-checks the version inside its own.
        let current = try self.transaction(.read, "read the schema version") { s in Schema.isCurrent(s) }
        if !current {
            try self.transaction(.durableWrite, "migrate") { s in try Schema.migrate(s, dialect: .sqlite) }
        }
    }

    func close() throws {
        try Self.mapErrors("close", path: self.path) { try self.queue.close() }
    }

    func transaction<T>(_ kind: TransactionKind, _ operation: String, _ body: (any SQLSession) throws -> T) throws -> T
    {
        try Self.mapErrors(operation, path: self.path) {
            switch kind {
            case .read:
                return try self.queue.read { db in try body(Session(db: db)) }
            case .write:
                return try self.queue.write { db in try body(Session(db: db)) }
            case .durableWrite:
                // Committed with `synchronous=FULL`: the WAL is synced before it returns.
                return try self.queue.inDatabase { db in
                    try db.execute(sql: "PRAGMA synchronous = FULL")
                    defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
                    var result: T? = nil
                    try db.inTransaction(.immediate) {
                        result = try body(Session(db: db))
                        return .commit
                    }
                    guard let result else {
                        throw RegistryError(.conflict, "\(operation): the transaction produced no result")
                    }
                    return result
                }
            }
        }
    }

    /// GRDB's database inside a transaction.
    struct Session: SQLSession {
        let db: Database

        func execute(_ sql: String, _ arguments: [SQLValue]) throws -> Int {
            try self.db.execute(sql: sql, arguments: Self.arguments(arguments))
            return self.db.changesCount
        }

        func fetchAll(_ sql: String, _ arguments: [SQLValue]) throws -> [SQLRow] {
            try Row.fetchAll(self.db, sql: sql, arguments: Self.arguments(arguments)).map { row in
                var values: [String: SQLValue] = [:]
                for (column, value) in row {
                    switch value.storage {
                    case .int64(let number): values[column] = .integer(number)
                    case .string(let text): values[column] = .text(text)
                    case .null: values[column] = .null
                    case .double, .blob:
                        throw RegistryError(.corrupt, "the registry's \(column) holds a value of the wrong type")
                    }
                }
                return SQLRow(values: values)
            }
        }

        static func arguments(_ values: [SQLValue]) -> StatementArguments {
            StatementArguments(
                values.map { value -> (any DatabaseValueConvertible)? in
                    switch value {
                    case .integer(let number): return number
                    case .text(let text): return text
                    case .boolean(let flag): return flag
                    case .null: return nil
                    }
                }
            )
        }
    }

    /// Runs `body`, turning GRDB's errors into ``RegistryError``s that name the operation and the file.
    static func mapErrors<T>(_ operation: String, path: String, _ body: () throws -> T) throws -> T {
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
            case .SQLITE_BUSY, .SQLITE_LOCKED:
                // Another process held the database past the busy timeout: it passes.
                throw RegistryError(
                    .unavailable,
                    "registry \(path): cannot \(operation): busy: \(detail)",
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

extension RegistryDatabase {
    /// The documented default location of the SQLite registry file.
    public static let defaultSQLitePath = "/var/lib/vtpm/registry.sqlite"

    /// Opens (creating if missing) the SQLite registry at `path` and brings its schema up to date.
    /// - Parameters:
    ///   - path: The registry file.
    ///   - busyTimeout: How long, in seconds, to wait for another process's transaction.
    ///   - clock: The source of `createdAt` and `at` times (tests pass a fixed clock).
    /// - Throws: ``RegistryError``: ``RegistryError/Code/notADatabase`` when the file is not an SQLite database,
    ///   ``RegistryError/Code/hostileFile`` for a symlink or a writable-by-others file,
    ///   ``RegistryError/Code/unsupportedSchemaVersion`` when a newer build wrote it.
    public convenience init(
        sqlitePath path: String = RegistryDatabase.defaultSQLitePath,
        busyTimeout: Double = 5,
        clock: @escaping @Sendable () -> Timestamp = { Timestamp.now() }
    ) throws {
        self.init(backend: try SQLiteBackend(path: path, busyTimeout: busyTimeout), clock: clock)
    }
}
