/// Why a registry operation failed.
public struct RegistryError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is. New codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable {
            case notADatabase, corrupt, unsupportedSchemaVersion, hostileFile, io, invalidArgument,
                unknownIdentity, unknownGeneration, conflict, database, unavailable
        }
        let base: Base
        /// The file at the registry path is not an SQLite database (or is encrypted).
        public static let notADatabase = Code(base: .notADatabase)
        /// SQLite reports the database file as malformed, or a row holds a value this build cannot read.
        public static let corrupt = Code(base: .corrupt)
        /// The schema was written by a newer build (its `schema_version` is higher than this build knows).
        public static let unsupportedSchemaVersion = Code(base: .unsupportedSchemaVersion)
        /// A symlink, a non-regular file or a group/other-writable file where the registry should be.
        public static let hostileFile = Code(base: .hostileFile)
        /// Creating the registry file or its directory failed.
        public static let io = Code(base: .io)
        /// A vmID that is not a UUID, or a number out of range.
        public static let invalidArgument = Code(base: .invalidArgument)
        /// The vmID has no identity record.
        public static let unknownIdentity = Code(base: .unknownIdentity)
        /// The (vmID, generation) pair has no generation record.
        public static let unknownGeneration = Code(base: .unknownGeneration)
        /// A compare-and-set update matched no row: another writer changed the record first.
        public static let conflict = Code(base: .conflict)
        /// Any other SQLite error (busy beyond the timeout, read-only file, disk full, ...).
        public static let database = Code(base: .database)
        /// The registry's server did not answer within the timeout, the connection to it broke, or none could
        /// be made (PostgreSQL stopped or unreachable, a refused login or TLS handshake, too many connections),
        /// or another process held the SQLite file past the busy timeout. The operation either did nothing or,
        /// when the reply to its commit was lost, took effect: every write of the registry is idempotent or a
        /// compare-and-set, so retrying later is safe.
        public static let unavailable = Code(base: .unavailable)

        public var description: String { "\(self.base)" }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What failed, naming the path, the vmID or the SQL operation.
    public var message: String
    /// The SQLite extended result code, when SQLite reported the failure.
    public var sqliteCode: Int32?
    public var file: String
    public var line: UInt

    /// Creates an error.
    /// - Parameters:
    ///   - code: The kind of failure.
    ///   - message: What failed, naming the object.
    ///   - sqliteCode: The SQLite extended result code, if any.
    public init(_ code: Code, _ message: String, sqliteCode: Int32? = nil, file: String = #fileID, line: UInt = #line) {
        self.code = code
        self.message = message
        self.sqliteCode = sqliteCode
        self.file = file
        self.line = line
    }

    public var description: String {
        if let sqliteCode = self.sqliteCode { return "\(self.message) (SQLite code \(sqliteCode))" }
        return self.message
    }

    public static func == (lhs: RegistryError, rhs: RegistryError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }
}
