import Foundation

/// Which registry to open: a SQLite file (an absolute path) or a PostgreSQL database (a `postgresql://` URL),
/// as `registry =` in the host configuration and `--registry` name it.
public enum RegistryLocation: Sendable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresSettings)

    /// Reads a `registry` value.
    /// - Parameters:
    ///   - text: An absolute path, or a `postgresql://` (or `postgres://`) URL.
    ///   - environment: The `PG*` variables a URL falls back on.
    /// - Throws: ``RegistryError/Code/invalidArgument``.
    public init(_ text: String, environment given: [String: String]? = nil) throws {
        let environment = given ?? ProcessInfo.processInfo.environment
        if PostgresSettings.isURL(text) {
            self = .postgres(try PostgresSettings(url: text, environment: environment))
        } else {
            guard text.hasPrefix("/") else {
                throw RegistryError(
                    .invalidArgument,
                    "registry '\(text)' is neither an absolute path nor a postgresql:// URL"
                )
            }
            self = .sqlite(path: text)
        }
    }

    /// Whether `text` would be read as a registry location (an absolute path or a PostgreSQL URL), without
    /// reading a password file: for configuration checks.
    public static func isValid(_ text: String) -> Bool {
        text.hasPrefix("/") || PostgresSettings.isURL(text)
    }

    /// Opens the registry (creating the SQLite file or the PostgreSQL schema if missing).
    /// - Throws: ``RegistryError``.
    public func open(clock: @escaping @Sendable () -> Timestamp = { Timestamp.now() }) throws -> RegistryDatabase {
        switch self {
        case .sqlite(let path): return try RegistryDatabase(sqlitePath: path, clock: clock)
        case .postgres(let settings): return RegistryDatabase(postgres: settings, clock: clock)
        }
    }

    /// Whether this is a cluster's shared registry.
    public var isShared: Bool {
        if case .postgres = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .sqlite(let path): return path
        case .postgres(let settings): return settings.description
        }
    }
}
