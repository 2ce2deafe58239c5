import Foundation
import Synchronization
import _VTPMPosix

/// A real PostgreSQL server (Debian's postgresql 15) for the cluster-registry tests: a fresh cluster made
/// with initdb in a temporary directory owned by the postgres user (PostgreSQL refuses to run as root),
/// listening on 127.0.0.1 at a free port and on a socket in that directory, with one database. Stopped and
/// removed when released; ``stop()`` and ``start()`` make an outage.
public final class PostgresServer: Sendable {
    public let directory: String
    public let port: UInt16
    public let database: String
    /// With `tlsOnly`: TCP connections must use TLS; the server's self-signed certificate (127.0.0.1), and
    /// one from an unrelated issuer.
    public let tlsOnly: Bool
    public let niceness: Int
    public var certificate: String { "\(self.directory)/server.crt" }
    public var otherCertificate: String { "\(self.directory)/other.crt" }
    private let binaries: String
    /// The postmaster, run in the foreground (pg_ctl's background start would hand the server this process's
    /// descriptors, and Foundation's Process would never see pg_ctl exit).
    private let server = Mutex<Daemon?>(nil)

    /// Whether this machine has PostgreSQL's server programs and can run them as the postgres user.
    public static var isAvailable: Bool {
        ProcessControl.effectiveUserID == 0 && self.binaryDirectory() != nil
            && (try? runCommand("id", ["-u", "postgres"]))?.status == 0
    }

    static func binaryDirectory() -> String? {
        guard let versions = try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql") else {
            return nil
        }
        return versions.sorted().reversed().map { "/usr/lib/postgresql/\($0)/bin" }
            .first { FileManager.default.isExecutableFile(atPath: "\($0)/pg_ctl") }
    }

    /// Makes and starts the cluster, then creates `database`.
    /// - Parameters:
    ///   - tlsOnly: TLS on, and TCP connections without it refused (pg_hba `hostnossl ... reject`).
    ///   - niceness: The server's `nice` value (a load test keeps its own load from starving a bystander).
    public init(database: String = "vtpm", tlsOnly: Bool = false, niceness: Int = 0) throws {
        self.tlsOnly = tlsOnly
        self.niceness = niceness
        guard let binaries = Self.binaryDirectory() else { throw PostgresServerError("PostgreSQL is not installed") }
        self.binaries = binaries
        self.database = database
        self.port = try freePort()
        self.directory = "/tmp/pg-" + ExecutableLookup.randomToken(bytes: 5)
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: false)
        try self.check(runCommand("chown", ["postgres:postgres", self.directory]), "chown")
        try self.check(
            self.asPostgres("initdb", ["-D", "\(self.directory)/data", "-A", "trust", "-U", "postgres", "--no-sync"]),
            "initdb"
        )
        if tlsOnly { try self.makeCertificates() }
        try self.start()
        try self.check(
            self.asPostgres("psql", self.psqlArguments + ["-c", "CREATE DATABASE \(database)"]),
            "CREATE DATABASE"
        )
    }

    deinit {
        try? self.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    /// The registry URL over TCP on loopback.
    public var url: String { "postgresql://postgres@127.0.0.1:\(self.port)/\(self.database)?sslmode=disable" }

    /// The registry URL over the server's unix socket.
    public var socketURL: String {
        "postgresql:///\(self.database)?host=\(self.directory)&port=\(self.port)&user=postgres"
    }

    private func makeCertificates() throws {
        for (name, subject) in [("server", "127.0.0.1"), ("other", "someone else")] {
            try self.check(
                runCommand(
                    "openssl",
                    [
                        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                        "-keyout", "\(self.directory)/\(name).key", "-out", "\(self.directory)/\(name).crt",
                        "-subj", "/CN=\(subject)", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    ]
                ),
                "openssl req"
            )
        }
        try self.check(runCommand("chown", ["postgres:postgres", "\(self.directory)/server.key"]), "chown")
        try self.check(runCommand("chmod", ["0600", "\(self.directory)/server.key"]), "chmod")
        try "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n".write(
            toFile: "\(self.directory)/data/pg_hba.conf",
            atomically: false,
            encoding: .utf8
        )
    }

    /// Starts the server (again) and waits until it accepts connections.
    public func start() throws {
        let daemon = try Daemon(
            "nice",
            ["-n", "\(self.niceness)", "setpriv"] + self.setprivArguments + [
                "\(self.binaries)/postgres", "-D", "\(self.directory)/data", "-p", "\(self.port)", "-k", self.directory,
                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300",
            ]
                + (self.tlsOnly
                    ? [
                        "-c", "ssl=on", "-c", "ssl_cert_file=\(self.certificate)", "-c",
                        "ssl_key_file=\(self.directory)/server.key",
                    ]
                    : []),
            environment: ["HOME": self.directory]
        )
        self.server.withLock { $0 = daemon }
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            let ready = try self.asPostgres(
                "pg_isready",
                ["-h", self.directory, "-p", "\(self.port)", "-U", "postgres"]
            )
            if ready.status == 0 { return }
            guard ContinuousClock.now < deadline else {
                throw PostgresServerError("PostgreSQL did not get ready: \(daemon.output)")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    /// Stops the server at once (`-m immediate`: connections are cut, as in a crash or a network loss).
    public func stop() throws {
        guard let daemon = self.server.withLock({ $0.take() }) else { return }
        let result = try self.asPostgres("pg_ctl", ["-D", "\(self.directory)/data", "-m", "immediate", "-w", "stop"])
        guard daemon.waitForExit(timeout: .seconds(10)) != nil else {
            daemon.kill()
            throw PostgresServerError("PostgreSQL did not stop: \(result.output)")
        }
    }

    /// Whether the server runs.
    public var isRunning: Bool { self.server.withLock { $0 != nil } }

    /// Runs SQL with psql (on `database`, else the server's database) and returns its unaligned output.
    public func sql(_ statement: String, database: String? = nil) throws -> String {
        let result = try self.asPostgres(
            "psql",
            self.psqlArguments + ["-d", database ?? self.database, "-At", "-c", statement]
        )
        try self.check(result, "psql")
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private var psqlArguments: [String] {
        ["-h", self.directory, "-p", "\(self.port)", "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
    }

    private func asPostgres(_ program: String, _ arguments: [String]) throws -> CommandResult {
        let path =
            FileManager.default.isExecutableFile(atPath: "\(self.binaries)/\(program)")
            ? "\(self.binaries)/\(program)" : program
        return try runCommand(
            "setpriv",
            self.setprivArguments + [path] + arguments,
            environment: ["HOME": self.directory]
        )
    }

    private var setprivArguments: [String] { ["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"] }

    private func check(_ result: CommandResult, _ what: String) throws {
        guard result.status == 0 else { throw PostgresServerError("\(what) failed: \(result.output)") }
    }
}

public struct PostgresServerError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
