import Logging
internal import NIOConcurrencyHelpers
internal import NIOCore
internal import NIOPosix
internal import NIOSSL
internal import PostgresNIO

/// The registry of a cluster: one PostgreSQL database that every host's vtpmd and vtpm-state use.
///
/// The API is synchronous, as the registry's is: each operation sends its statements on one connection and
/// waits for each reply at most ``PostgresSettings/timeout``. A connection that timed out or broke is closed
/// and the next operation connects again, so a PostgreSQL that is stopped or unreachable makes each call
/// fail within the timeout with ``RegistryError/Code/unavailable``, never hang. The server is also told
/// (at connect) to end statements, lock waits and idle transactions of ours that outlive the timeout, so a
/// host that stops mid-transaction never holds another host's VM longer than that.
///
/// Transactions run at READ COMMITTED: the compare-and-set updates of ``RegistryDatabase`` re-check their
/// `WHERE` on the newest row version after waiting for another host's lock, so of two hosts racing for a VM's
/// next generation one updates the row and the other matches nothing and gets
/// ``RegistryError/Code/conflict``. Generations are committed synchronously (PostgreSQL's default);
/// checkpoints and "ran after" marks with `synchronous_commit = off`, as the SQLite registry commits them
/// without a sync.
final class PostgresBackend: RegistryBackend {
    let settings: PostgresSettings
    private let connection = NIOLockedValueBox<PostgresConnection?>(nil)
    /// The schema was checked (and migrated) on a connection of this process.
    private let migrated = NIOLockedValueBox(false)
    /// ``close()`` was called: later operations throw.
    private let closed = NIOLockedValueBox(false)
    /// postgres-nio's own log lines are not wanted: every failure reaches the caller as a RegistryError.
    static let logger = Logger(label: "vtpm.registry.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    var location: String { self.settings.description }
    var timeout: Duration { self.settings.timeout }

    /// Connects at the first operation, not here: a vtpmd starts while PostgreSQL is unreachable (its guest's
    /// TPM does not need the registry), and the schema is checked on the first connection.
    init(settings: PostgresSettings) {
        self.settings = settings
    }

    /// Brings the schema up to date once per process, on the first connection. A current schema is only
    /// read (a role with no CREATE right on the schema works); an old or missing one is migrated.
    private func migrateIfNeeded(_ session: Session) throws {
        guard !self.migrated.withLockedValue({ $0 }) else { return }
        if Schema.isCurrent(session) {
            self.migrated.withLockedValue { $0 = true }
            return
        }
        try session.execute("BEGIN", [])
        // Hosts starting together on an empty database take turns (the lock ends with the transaction).
        _ = try session.fetchAll("SELECT pg_advisory_xact_lock(7302546530227458)", [])
        try Schema.migrate(session, dialect: .postgresql)
        try session.execute("COMMIT", [])
        self.migrated.withLockedValue { $0 = true }
    }

    deinit {
        try? self.close()
    }

    func close() throws {
        self.closed.withLockedValue { $0 = true }
        let connection = self.connection.withLockedValue { value in
            defer { value = nil }
            return value
        }
        guard let connection else { return }
        do { try Self.wait(connection.close(), self.settings.timeout) } catch {
            throw RegistryError(.unavailable, "registry \(self.location): cannot close: \(error)")
        }
    }

    func transaction<T>(_ kind: TransactionKind, _ operation: String, _ body: (any SQLSession) throws -> T) throws -> T
    {
        guard !self.closed.withLockedValue({ $0 }) else {
            throw RegistryError(.invalidArgument, "registry \(self.location): cannot \(operation): it was closed")
        }
        return try self.connection.withLockedValue { slot in
            let session: Session
            do {
                session = Session(connection: try self.connected(&slot, operation), timeout: self.settings.timeout)
            } catch {
                throw self.mapError(error, operation)
            }
            do {
                try self.migrateIfNeeded(session)
                // Every read is one statement: no transaction around it (one round trip). A write's BEGIN
                // (and its commit mode) go out with its first statement, without waiting for their replies.
                if kind == .read { return try body(session) }
                session.enqueue("BEGIN")
                if kind == .write { session.enqueue("SET LOCAL synchronous_commit TO OFF") }
                let result = try body(session)
                try session.execute("COMMIT", [])
                return result
            } catch {
                let mapped = self.mapError(error, operation)
                // A connection in an unknown state (or one that cannot even roll back) is dropped: the next
                // operation connects again.
                if mapped.code == .unavailable || (try? session.execute("ROLLBACK", [])) == nil {
                    if let broken = slot { broken.close().whenComplete { _ in _ = broken } }
                    slot = nil
                }
                throw mapped
            }
        }
    }

    /// The open connection, or a new one.
    private func connected(_ slot: inout PostgresConnection?, _ operation: String) throws -> PostgresConnection {
        if let connection = slot, !connection.isClosed { return connection }
        slot = nil
        var configuration: PostgresConnection.Configuration
        switch self.settings.endpoint {
        case .tcp(let host, let port):
            configuration = PostgresConnection.Configuration(
                host: host,
                port: port,
                username: self.settings.user,
                password: try self.settings.password,
                database: self.settings.database,
                tls: try self.tls()
            )
        case .unixSocket(let path):
            configuration = PostgresConnection.Configuration(
                unixSocketPath: path,
                username: self.settings.user,
                password: try self.settings.password,
                database: self.settings.database
            )
        }
        let milliseconds =
            Int64(self.settings.timeout.components.seconds * 1000)
            + self.settings.timeout.components.attoseconds / 1_000_000_000_000_000
        configuration.options.connectTimeout = .milliseconds(milliseconds)
        configuration.options.additionalStartupParameters = [
            ("application_name", "vtpm"),
            ("statement_timeout", "\(milliseconds)"),
            ("lock_timeout", "\(milliseconds)"),
            ("idle_in_transaction_session_timeout", "\(milliseconds * 5)"),
        ]
        let future = PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.next(),
            configuration: configuration,
            id: 1,
            logger: Self.logger
        )
        do {
            let connection = try Self.wait(future, self.settings.timeout)
            slot = connection
            return connection
        } catch {
            // A connection that completes after the timeout is closed at once.
            future.whenSuccess { connection in connection.close().whenComplete { _ in _ = connection } }
            // Whatever keeps a connection from being made (the server down or unreachable, but also a refused
            // login or TLS handshake, which an operator fixes) leaves the registry unavailable: writes wait
            // for it and decisions refuse, nothing is dropped.
            let mapped = self.mapError(error, "connect (\(operation))")
            throw RegistryError(.unavailable, mapped.message)
        }
    }

    private func tls() throws -> PostgresConnection.Configuration.TLS {
        guard self.settings.sslMode != .disable else { return .disable }
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch self.settings.sslMode {
        case .disable: return .disable
        case .prefer, .require:
            if let root = self.settings.rootCertificate {
                // As libpq's require with a root certificate (verify-ca): the chain, not the name.
                configuration.certificateVerification = .noHostnameVerification
                configuration.trustRoots = .file(root)
            } else {
                // As libpq: encryption, no check of the server's certificate.
                configuration.certificateVerification = .none
            }
        case .verifyFull:
            configuration.certificateVerification = .fullVerification
            if let root = self.settings.rootCertificate { configuration.trustRoots = .file(root) }
        }
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: configuration) } catch {
            throw RegistryError(.invalidArgument, "registry \(self.location): TLS: \(error)")
        }
        return self.settings.sslMode == .prefer ? .prefer(context) : .require(context)
    }

    /// Waits for `future` at most `timeout`.
    static func wait<Value: Sendable>(_ future: EventLoopFuture<Value>, _ timeout: Duration) throws -> Value {
        let promise = future.eventLoop.makePromise(of: Value.self)
        future.cascade(to: promise)
        let timer = future.eventLoop.scheduleTask(in: .nanoseconds(Self.nanoseconds(timeout))) {
            promise.fail(TimedOut())
        }
        defer { timer.cancel() }
        return try promise.futureResult.wait()
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }

    struct TimedOut: Error, CustomStringConvertible {
        var description: String { "no answer in time" }
    }

    /// PostgreSQL's and the connection's errors as ``RegistryError``s naming the operation.
    private func mapError(_ error: any Error, _ operation: String) -> RegistryError {
        let prefix = "registry \(self.location): cannot \(operation)"
        switch error {
        case let error as RegistryError:
            return error
        case is TimedOut:
            return RegistryError(.unavailable, "\(prefix): no answer within \(self.settings.timeout)")
        case let error as PSQLError:
            guard error.code == .server else {
                return RegistryError(.unavailable, "\(prefix): \(error.code)")
            }
            let state = error.serverInfo?[.sqlState] ?? "?"
            let message = error.serverInfo?[.message] ?? "server error"
            switch state {
            // unique_violation: another writer inserted the row first.
            case "23505":
                return RegistryError(.conflict, "\(prefix): \(message) (SQLSTATE \(state))")
            // What passes or an operator fixes while the request can wait: connection exceptions (08),
            // insufficient resources (53: too many connections, disk full), operator intervention (57: our
            // statement_timeout, shutdown, cannot connect now), system errors (58), lock_not_available,
            // a standby after a failover (25006), a refused login (28), serialization failures and deadlocks
            // (40001, 40P01: the transaction did nothing).
            case _ where ["08", "53", "57", "58", "28"].contains(String(state.prefix(2))),
                "55P03", "25006", "40001", "40P01":
                return RegistryError(.unavailable, "\(prefix): \(message) (SQLSTATE \(state))")
            default:
                return RegistryError(.database, "\(prefix): \(message) (SQLSTATE \(state))")
            }
        case let error as PostgresDecodingError:
            return RegistryError(.corrupt, "\(prefix): column \(error.columnName): \(error.code)")
        default:
            return RegistryError(.unavailable, "\(prefix): \(error)")
        }
    }

    /// One connection inside a transaction.
    final class Session: SQLSession {
        let connection: PostgresConnection
        let timeout: Duration
        /// Statements sent without waiting for their replies (PostgreSQL answers in order).
        private var pending: [EventLoopFuture<PostgresQueryResult>] = []

        init(connection: PostgresConnection, timeout: Duration) {
            self.connection = connection
            self.timeout = timeout
        }

        /// Sends a statement without arguments and without waiting: its reply is checked with the next
        /// statement's.
        func enqueue(_ sql: String) {
            self.pending.append(self.connection.query(PostgresQuery(unsafeSQL: sql), logger: PostgresBackend.logger))
        }

        func execute(_ sql: String, _ arguments: [SQLValue]) throws -> Int {
            try self.run(sql, arguments).metadata.rows ?? 0
        }

        func fetchAll(_ sql: String, _ arguments: [SQLValue]) throws -> [SQLRow] {
            try self.run(sql, arguments).rows.map { row in
                var values: [String: SQLValue] = [:]
                for cell in row {
                    guard cell.bytes != nil else {
                        values[cell.columnName] = .null
                        continue
                    }
                    switch cell.dataType {
                    case .int8, .int4, .int2: values[cell.columnName] = .integer(try cell.decode(Int64.self))
                    case .bool: values[cell.columnName] = .boolean(try cell.decode(Bool.self))
                    case .text, .varchar: values[cell.columnName] = .text(try cell.decode(String.self))
                    case .void:
                        // Functions called for their effect (pg_advisory_xact_lock).
                        values[cell.columnName] = .null
                    default:
                        throw RegistryError(
                            .corrupt,
                            "the registry's \(cell.columnName) has the unexpected type \(cell.dataType)"
                        )
                    }
                }
                return SQLRow(values: values)
            }
        }

        private func run(_ sql: String, _ arguments: [SQLValue]) throws -> PostgresQueryResult {
            var binds = PostgresBindings(capacity: arguments.count)
            for argument in arguments {
                switch argument {
                case .integer(let number): binds.append(number)
                case .text(let text): binds.append(text)
                case .boolean(let flag): binds.append(flag)
                case .null: binds.appendNull()
                }
            }
            let query = PostgresQuery(unsafeSQL: Self.numberedPlaceholders(sql), binds: binds)
            let future = self.connection.query(query, logger: PostgresBackend.logger)
            let earlier = self.pending
            self.pending = []
            do {
                let result = try PostgresBackend.wait(future, self.timeout)
                for reply in earlier { _ = try PostgresBackend.wait(reply, self.timeout) }
                return result
            } catch {
                // An earlier statement's failure is the cause (this one then failed in an aborted transaction).
                for reply in earlier { _ = try PostgresBackend.wait(reply, self.timeout) }
                throw error
            }
        }

        /// `?` placeholders as PostgreSQL's `$1`, `$2`, ... (the registry's SQL has no `?` in literals).
        static func numberedPlaceholders(_ sql: String) -> String {
            var result = ""
            result.reserveCapacity(sql.utf8.count + 16)
            var number = 0
            for character in sql {
                if character == "?" {
                    number += 1
                    result += "$\(number)"
                } else {
                    result.append(character)
                }
            }
            return result
        }
    }
}

extension RegistryDatabase {
    /// The PostgreSQL registry `settings` names. It connects at the first operation and then brings the
    /// schema up to date (hosts starting at once on an empty database take turns); each operation throws
    /// ``RegistryError/Code/unavailable`` while the server cannot be reached within the timeout, and
    /// ``RegistryError/Code/unsupportedSchemaVersion`` when a newer build wrote the schema.
    /// - Parameters:
    ///   - settings: Where the database is and how to log in.
    ///   - clock: The source of `createdAt` and `at` times.
    public convenience init(
        postgres settings: PostgresSettings,
        clock: @escaping @Sendable () -> Timestamp = { Timestamp.now() }
    ) {
        self.init(backend: PostgresBackend(settings: settings), clock: clock)
    }
}
