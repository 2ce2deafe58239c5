import Foundation
import Registry
import Synchronization
import TestSupport
import VMIdentity

/// VM identities used across the registry tests.
enum VM {
    static let a = VMID("aaaaaaaa-0000-4000-8000-00000000000a")!
    static let b = VMID("bbbbbbbb-0000-4000-8000-00000000000b")!
    static let c = VMID("cccccccc-0000-4000-8000-00000000000c")!
    static let d = VMID("dddddddd-0000-4000-8000-00000000000d")!
}

/// A clock that advances one second per reading, so records have distinct, ordered times.
final class TickingClock: Sendable {
    private let next = Mutex<Int64>(1_700_000_000_000_000)
    func now() -> Timestamp {
        self.next.withLock { value in
            defer { value += 1_000_000 }
            return Timestamp(microsecondsSinceEpoch: value)
        }
    }
}

/// Runs `body` with a fresh registry file in a temporary directory.
func withRegistry<T>(_ body: (RegistryDatabase, String) throws -> T) throws -> T {
    try withTemporaryDirectory { dir in
        let path = dir + "/registry.sqlite"
        let clock = TickingClock()
        let registry = try RegistryDatabase(sqlitePath: path, clock: { clock.now() })
        return try body(registry, path)
    }
}

/// The permission bits of `path`.
func permissions(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

/// The databases the registry's semantics are tested on: SQLite always, PostgreSQL where its server runs here
/// (as root, Debian's postgresql; CI installs it).
enum StoreKind: String, CustomStringConvertible, CaseIterable, Sendable {
    case sqlite, postgres

    static var available: [StoreKind] { PostgresServer.isAvailable ? [.sqlite, .postgres] : [.sqlite] }

    var description: String { self.rawValue }
}

/// One PostgreSQL server for the whole test process; each test gets a database of its own. Globals are never
/// released, so it is stopped (and its directory removed) when the process exits.
let sharedPostgres: Result<PostgresServer, any Error> = {
    defer { atexit { stopSharedPostgres() } }
    return Result { try PostgresServer() }
}()

private func stopSharedPostgres() {
    guard case .success(let server) = sharedPostgres else { return }
    try? server.stop()
    try? FileManager.default.removeItem(atPath: server.directory)
}

/// A fresh, empty PostgreSQL database on the shared server.
func freshPostgresDatabase() throws -> PostgresSettings {
    let server = try sharedPostgres.get()
    let name = "t_" + ExecutableLookup.randomToken(bytes: 6)
    _ = try server.sql("CREATE DATABASE \(name)")
    return try PostgresSettings(
        url: "postgresql://postgres@127.0.0.1:\(server.port)/\(name)?sslmode=disable&connect_timeout=5",
        environment: [:]
    )
}

/// Runs `body` with a fresh registry of `kind`, and a way to open a second connection to it (another
/// process, or another host).
func withRegistry<T>(
    _ kind: StoreKind,
    _ body: (RegistryDatabase, () throws -> RegistryDatabase) throws -> T
) throws -> T {
    let clock = TickingClock()
    switch kind {
    case .sqlite:
        return try withTemporaryDirectory { dir in
            let path = dir + "/registry.sqlite"
            let registry = try RegistryDatabase(sqlitePath: path, clock: { clock.now() })
            return try body(registry) { try RegistryDatabase(sqlitePath: path, clock: { clock.now() }) }
        }
    case .postgres:
        let settings = try freshPostgresDatabase()
        let registry = RegistryDatabase(postgres: settings, clock: { clock.now() })
        defer { try? registry.close() }
        return try body(registry) { RegistryDatabase(postgres: settings, clock: { clock.now() }) }
    }
}
