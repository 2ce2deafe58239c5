import Foundation
import _VTPMPosix

/// Where a PostgreSQL registry is and how to log in, read from a libpq-style URL
/// (`postgresql://user@host:port/db?sslmode=require`) and the standard `PG*` environment variables.
///
/// - The host is a name or address (TCP), or an absolute directory (`?host=/run/postgresql` or a percent-
///   encoded `postgresql://%2Frun%2Fpostgresql/db`) holding the server's socket `.s.PGSQL.<port>`.
///   Defaults: `PGHOST`, else `/var/run/postgresql`; port `PGPORT`, else 5432; user `PGUSER`, else the
///   process's user; database `PGDATABASE`, else the user name.
/// - The password: in the URL (discouraged: it ends up in configuration files), else `PGPASSWORD`, else the
///   first matching line of the password file (`?passfile=`, `PGPASSFILE`, else `~/.pgpass`; libpq's
///   `host:port:database:user:password` format with `*` wildcards), which is ignored unless only its owner
///   can read it. None is also fine (peer or trust authentication).
/// - TLS: `sslmode=disable|prefer|require|verify-full` (`PGSSLMODE`; default `prefer` over TCP, as libpq),
///   `sslrootcert=FILE` (`PGSSLROOTCERT`) for verify-full. Unix sockets never use TLS.
/// - `connect_timeout=SECONDS` (`PGCONNECT_TIMEOUT`; default 2) bounds the connection and each statement.
public struct PostgresSettings: Sendable, CustomStringConvertible {
    public enum Endpoint: Sendable, Hashable {
        case tcp(host: String, port: Int)
        /// The socket file itself (the directory + `/.s.PGSQL.<port>`).
        case unixSocket(path: String)
    }

    public enum SSLMode: String, Sendable {
        case disable, prefer, require
        case verifyFull = "verify-full"
    }

    public var endpoint: Endpoint
    public var sslMode: SSLMode
    public var rootCertificate: String?
    /// The bound on connecting and on each statement.
    public var timeout: Duration
    /// The user and database the URL or the environment named; nil: the effective user's name, read when
    /// connecting (vtpmd connects after `--runas`).
    let givenUser: String?
    let givenDatabase: String?
    /// Where the password comes from, read when connecting.
    let passwordSource: PasswordSource

    enum PasswordSource: Sendable {
        case given(String)
        /// A password file named by `passfile=` (required) or `PGPASSFILE`, else nil: `~/.pgpass` of the
        /// effective user.
        case file(String?, required: Bool)
    }

    /// The user to log in as.
    public var user: String { self.givenUser ?? ProcessControl.effectiveUser()?.name ?? "postgres" }

    /// The database.
    public var database: String { self.givenDatabase ?? self.user }

    /// The password, from the URL, `PGPASSWORD`, or the password file; nil when none applies.
    /// - Throws: ``RegistryError`` when a password file named explicitly cannot be used.
    public var password: String? {
        get throws {
            switch self.passwordSource {
            case .given(let password):
                return password
            case .file(let path, let required):
                guard let file = path ?? ProcessControl.effectiveUser().map({ "\($0.home)/.pgpass" }) else {
                    return nil
                }
                let host: String
                let port: Int
                switch self.endpoint {
                case .tcp(let name, let number): (host, port) = (name, number)
                case .unixSocket(let path):
                    host = "localhost"
                    port = Int(path.split(separator: ".").last ?? "") ?? 5432
                }
                return try PasswordFile.lookup(
                    path: file,
                    host: host,
                    port: port,
                    database: self.database,
                    user: self.user,
                    required: required
                )
            }
        }
    }

    /// Whether `text` names a PostgreSQL registry (`postgresql://` or `postgres://`).
    public static func isURL(_ text: String) -> Bool {
        text.hasPrefix("postgresql://") || text.hasPrefix("postgres://")
    }

    /// Reads a registry URL.
    /// - Parameters:
    ///   - url: `postgresql://...`.
    ///   - environment: The `PG*` variables to fall back on (the process's by default).
    /// - Throws: ``RegistryError/Code/invalidArgument`` naming what is wrong.
    public init(url: String, environment given: [String: String]? = nil) throws {
        let environment = given ?? ProcessInfo.processInfo.environment
        guard Self.isURL(url), let components = URLComponents(string: url) else {
            throw RegistryError(.invalidArgument, "'\(Self.redacted(url))' is not a postgresql:// URL")
        }
        var parameters: [String: String] = [:]
        for item in components.queryItems ?? [] {
            guard let value = item.value, !value.isEmpty else {
                throw RegistryError(.invalidArgument, "registry URL parameter '\(item.name)' has no value")
            }
            guard Self.parameters.contains(item.name) else {
                throw RegistryError(
                    .invalidArgument,
                    "registry URL parameter '\(item.name)' is unknown (known: \(Self.parameters.sorted().joined(separator: ", ")))"
                )
            }
            parameters[item.name] = value
        }
        func setting(_ parameter: String, _ variable: String) -> String? {
            parameters[parameter] ?? environment[variable].flatMap { $0.isEmpty ? nil : $0 }
        }
        // Components are decoded once, here (URLComponents' decoded accessors would be decoded twice).
        func decoded(_ text: String?) -> String? { text?.removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 } }
        var urlHost = decoded(components.percentEncodedHost)
        if let bracketed = urlHost, bracketed.hasPrefix("["), bracketed.hasSuffix("]") {
            urlHost = String(bracketed.dropFirst().dropLast())
        }
        let host = urlHost ?? setting("host", "PGHOST") ?? "/var/run/postgresql"
        let portText = components.port.map(String.init) ?? setting("port", "PGPORT") ?? "5432"
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw RegistryError(.invalidArgument, "registry port '\(portText)' is not a port number")
        }
        let path = components.percentEncodedPath
        let modeText = setting("sslmode", "PGSSLMODE") ?? "prefer"
        guard let mode = SSLMode(rawValue: modeText) else {
            throw RegistryError(
                .invalidArgument,
                "registry sslmode '\(modeText)' is not disable, prefer, require or verify-full"
            )
        }
        let timeoutText = setting("connect_timeout", "PGCONNECT_TIMEOUT") ?? "2"
        guard let seconds = Int(timeoutText), (1...3600).contains(seconds) else {
            throw RegistryError(.invalidArgument, "registry connect_timeout '\(timeoutText)' is not 1 to 3600 seconds")
        }
        self.endpoint =
            host.hasPrefix("/") ? .unixSocket(path: "\(host)/.s.PGSQL.\(port)") : .tcp(host: host, port: port)
        self.givenUser = decoded(components.percentEncodedUser) ?? setting("user", "PGUSER")
        self.givenDatabase =
            decoded(path.hasPrefix("/") ? String(path.dropFirst()) : path) ?? setting("dbname", "PGDATABASE")
        self.sslMode = host.hasPrefix("/") ? .disable : mode
        self.rootCertificate = setting("sslrootcert", "PGSSLROOTCERT")
        self.timeout = .seconds(seconds)
        if let password = components.percentEncodedPassword?.removingPercentEncoding {
            self.passwordSource = .given(password)
        } else if let password = environment["PGPASSWORD"], !password.isEmpty {
            self.passwordSource = .given(password)
        } else {
            self.passwordSource = .file(setting("passfile", "PGPASSFILE"), required: parameters["passfile"] != nil)
        }
        // A password file named in the URL must be usable now, not at the first connection.
        if parameters["passfile"] != nil { _ = try self.password }
    }

    static let parameters: Set<String> = [
        "host", "port", "user", "dbname", "sslmode", "sslrootcert", "passfile", "connect_timeout",
    ]

    /// The URL as given, without a password.
    public var description: String {
        let host: String
        switch self.endpoint {
        case .tcp(let name, let port): host = name.contains(":") ? "[\(name)]:\(port)" : "\(name):\(port)"
        case .unixSocket(let path): host = path
        }
        return "postgresql://\(self.user)@\(host)/\(self.database)"
    }

    /// `url` with anything between `://` and `@` after a colon (the password) replaced, for messages:
    /// a plain scan, so that a URL too broken to parse does not leak it either.
    public static func redacted(_ url: String) -> String {
        guard let scheme = url.range(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        guard let at = rest.lastIndex(of: "@") else { return url }
        let userInfo = rest[..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return String(url[..<colon]) + ":***" + String(rest[at...])
    }
}

/// libpq's password file (`~/.pgpass`): `hostname:port:database:username:password` per line, `*` matching
/// anything, `\:` and `\\` escaped, `#` comments.
enum PasswordFile {
    /// The password of the first line that matches, or nil.
    /// - Parameter required: The file was named explicitly: a missing one, or one others can read, is an error.
    static func lookup(
        path: String,
        host: String,
        port: Int,
        database: String,
        user: String,
        required: Bool
    ) throws -> String? {
        // The file's own status (a symbolic link is not followed) and its bytes through one descriptor: the
        // calls vtpmd's seccomp filter allows (a reconnect reads the file again under it).
        let (directory, name) = splitPath(path)
        let status: FileStatus?
        let handle: DirectoryHandle
        do {
            handle = try DirectoryHandle.open(directory)
            status = try handle.status(name)
        } catch {
            if required { throw RegistryError(.invalidArgument, "registry password file \(path) cannot be read") }
            return nil
        }
        defer { handle.close() }
        guard let status else {
            if required { throw RegistryError(.invalidArgument, "registry password file \(path) cannot be read") }
            return nil
        }
        guard status.kind == .regular, status.mode & 0o077 == 0 else {
            // libpq ignores such a file too.
            if required {
                throw RegistryError(
                    .hostileFile,
                    "registry password file \(path) must be a regular file only its owner can read"
                )
            }
            return nil
        }
        guard let bytes = try? handle.readFile(name, maxSize: 1 << 20, strictMode: false),
            let text = String(validating: bytes, as: UTF8.self)
        else {
            throw RegistryError(.invalidArgument, "registry password file \(path) is not a text file")
        }
        let wanted = [host, String(port), database, user]
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) where !line.hasPrefix("#") {
            let fields = self.fields(String(line))
            guard fields.count == 5 else { continue }
            if zip(fields.prefix(4), wanted).allSatisfy({ $0 == "*" || $0 == $1 }) { return fields[4] }
        }
        return nil
    }

    /// A line split at unescaped colons.
    static func fields(_ line: String) -> [String] {
        var fields: [String] = []
        var current = ""
        var escaped = false
        for character in line {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == ":" {
                fields.append(current)
                current = ""
            } else {
                current.append(character)
            }
        }
        fields.append(current)
        return fields
    }
}
