/// A value bound to a registry statement or read from one of its rows: the registry's columns are
/// `TEXT`, `BIGINT` and `BOOLEAN` (``Schema``), so these four cases cover every column of both stores.
enum SQLValue: Sendable, Hashable {
    case integer(Int64)
    case text(String)
    case boolean(Bool)
    case null

    init(_ value: Int64?) { self = value.map { .integer($0) } ?? .null }
    init(_ value: String?) { self = value.map { .text($0) } ?? .null }
}

/// One result row, by column name.
struct SQLRow: Sendable {
    var values: [String: SQLValue]

    func value(_ column: String) throws -> SQLValue {
        guard let value = self.values[column] else {
            throw RegistryError(.corrupt, "a registry row has no column \(column)")
        }
        return value
    }

    func optionalInt64(_ column: String) throws -> Int64? {
        switch try self.value(column) {
        case .integer(let value): return value
        case .null: return nil
        default: throw RegistryError(.corrupt, "the registry's \(column) is not a number")
        }
    }

    func int64(_ column: String) throws -> Int64 {
        guard let value = try self.optionalInt64(column) else {
            throw RegistryError(.corrupt, "the registry holds a NULL \(column)")
        }
        return value
    }

    func optionalString(_ column: String) throws -> String? {
        switch try self.value(column) {
        case .text(let value): return value
        case .null: return nil
        default: throw RegistryError(.corrupt, "the registry's \(column) is not text")
        }
    }

    func string(_ column: String) throws -> String {
        guard let value = try self.optionalString(column) else {
            throw RegistryError(.corrupt, "the registry holds a NULL \(column)")
        }
        return value
    }

    /// A `BOOLEAN` column: PostgreSQL returns a boolean, SQLite the integer 0 or 1.
    func bool(_ column: String) throws -> Bool {
        switch try self.value(column) {
        case .boolean(let value): return value
        case .integer(0): return false
        case .integer(1): return true
        default: throw RegistryError(.corrupt, "the registry's \(column) is not a boolean")
        }
    }
}

/// The statements of one transaction, in the SQL both stores accept (``Schema``): `?` placeholders,
/// bound in order.
protocol SQLSession {
    /// Runs a statement that returns no rows.
    /// - Returns: The number of rows it inserted, updated or deleted.
    @discardableResult
    func execute(_ sql: String, _ arguments: [SQLValue]) throws -> Int

    /// Runs a query and returns all its rows.
    func fetchAll(_ sql: String, _ arguments: [SQLValue]) throws -> [SQLRow]
}

extension SQLSession {
    func fetchOne(_ sql: String, _ arguments: [SQLValue]) throws -> SQLRow? {
        try self.fetchAll(sql, arguments).first
    }
}

/// How a registry operation's transaction is committed.
enum TransactionKind: Sendable {
    /// Reads only.
    case read
    /// A write that must survive a crash of vtpmd, not necessarily a power loss (checkpoints, "ran after").
    case write
    /// A write that must survive a power loss (generations and what is committed with them).
    case durableWrite
}

/// A database the registry's statements run on: SQLite (one file per host) or PostgreSQL (a cluster).
protocol RegistryBackend: Sendable {
    /// Where the registry is, for messages (a path, or a PostgreSQL URL without its password).
    var location: String { get }

    /// How long an operation may wait for the database: SQLite's busy timeout, PostgreSQL's per-step bound.
    var timeout: Duration { get }

    /// Runs `body` in one transaction, committed when it returns and rolled back when it throws.
    /// Errors of the database come back as ``RegistryError``s naming `operation`.
    func transaction<T>(_ kind: TransactionKind, _ operation: String, _ body: (any SQLSession) throws -> T) throws -> T

    /// Closes the database. Later calls throw.
    func close() throws
}
