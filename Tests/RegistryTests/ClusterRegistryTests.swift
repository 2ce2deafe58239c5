import Dispatch
import Foundation
import Registry
import Synchronization
import TestSupport
import Testing
import VMIdentity

/// What a cluster needs of the registry beyond the single-host semantics (which `RegistryDatabaseTests` runs on
/// both stores): hosts racing for one VM, hosts registering and revoking each other, the server going away.
@Suite(.serialized) struct ClusterRegistryTests {
    @Test(arguments: StoreKind.available) func hostsRacingForAVMsNextGenerationNeverBothWin(_ store: StoreKind) throws {
        try withRegistry(store) { registry, open in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            let hosts = [registry, try open()]
            let won = Mutex<[UInt64]>([])
            let conflicts = Atomic<Int>(0)
            let group = DispatchGroup()
            for host in hosts {
                DispatchQueue.global().async(group: group) {
                    for _ in 0..<40 {
                        do {
                            let generation = try host.beginGeneration(vmID: VM.a, reason: .rollback)
                            won.withLock { $0.append(generation.generation) }
                        } catch let error as RegistryError where error.code == .conflict || error.code == .database {
                            // SQLite reports a lost race as busy (database), PostgreSQL as a failed compare-and-set.
                            conflicts.add(1, ordering: .relaxed)
                        } catch {
                            Issue.record("unexpected error: \(error)")
                        }
                    }
                }
            }
            group.wait()
            let numbers = won.withLock { $0 }.sorted()
            #expect(Set(numbers).count == numbers.count, "a generation was issued twice: \(numbers)")
            #expect(numbers == Array(1...UInt64(numbers.count)))
            #expect(try registry.currentGeneration(vmID: VM.a)?.generation == UInt64(numbers.count))
            #expect(try registry.generations(vmID: VM.a).count == numbers.count + 1)
            #expect(numbers.count + conflicts.load(ordering: .relaxed) == 80)
        }
    }

    @Test(arguments: StoreKind.available) func hostsRegisterOnceAndRevokedHostsStayRevoked(_ store: StoreKind) throws {
        try withRegistry(store) { registry, open in
            let key1 = [UInt8](repeating: 1, count: 32)
            let key2 = [UInt8](repeating: 2, count: 32)
            let (id1, id2) = (HostRecord.hostID(ofPublicKey: key1), HostRecord.hostID(ofPublicKey: key2))
            let h1 = try registry.registerHost(id: id1, name: "host1", publicKey: key1)
            #expect(h1.name == "host1" && h1.publicKey == key1 && !h1.isRevoked && id1.count == 32)
            // Registering again (every start) changes nothing, from any connection.
            #expect(try open().registerHost(id: id1, name: "renamed", publicKey: key1) == h1)
            try registry.registerHost(id: id2, name: "host2", publicKey: key2)
            #expect(try registry.hosts().map(\.hostID) == [id1, id2])
            // A key under another host's id (to pass claims off as that host's) is refused.
            #expect(throws: RegistryError(.invalidArgument, "")) {
                try registry.registerHost(
                    id: HostRecord.hostID(ofPublicKey: [UInt8](repeating: 3, count: 32)),
                    name: "x",
                    publicKey: key2
                )
            }
            let revoked = try registry.revokeHost(id: id2, reason: "decommissioned")
            #expect(revoked.isRevoked && revoked.revokedReason == "decommissioned")
            // A revoked host that starts again stays revoked; revoking twice keeps the first reason.
            #expect(try registry.registerHost(id: id2, name: "host2", publicKey: key2).isRevoked)
            #expect(try registry.revokeHost(id: id2, reason: "again").revokedReason == "decommissioned")
            #expect(try registry.host(id: id1)?.isRevoked == false)
            #expect(try registry.host(id: "03") == nil)
            #expect(throws: RegistryError(.invalidArgument, "")) { try registry.revokeHost(id: "03", reason: "x") }
        }
    }

    @Test(.enabled(if: PostgresServer.isAvailable)) func aStoppedServerFailsEachCallWithinTheTimeoutAndComesBack()
        throws
    {
        let server = try PostgresServer()
        let settings = try PostgresSettings(url: server.url + "&connect_timeout=1", environment: [:])
        let registry = RegistryDatabase(postgres: settings)
        try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
        try server.stop()
        for _ in 0..<3 {
            let started = ContinuousClock.now
            let error = #expect(throws: RegistryError.self) { try registry.currentGeneration(vmID: VM.a) }
            #expect(error?.code == .unavailable, "\(String(describing: error))")
            // One connect attempt at most (refused at once on loopback, or the 1 s bound).
            #expect(ContinuousClock.now - started < .seconds(3))
        }
        try server.start()
        // The next call connects again; nothing was lost.
        #expect(try registry.currentGeneration(vmID: VM.a)?.generation == 0)
        #expect(try registry.beginGeneration(vmID: VM.a, reason: .rollback).generation == 1)
    }

    @Test(.enabled(if: PostgresServer.isAvailable)) func tlsIsUsedAndTheServerCertificateChecked() throws {
        let server = try PostgresServer(tlsOnly: true)
        func registry(_ parameters: String) throws -> RegistryDatabase {
            RegistryDatabase(
                postgres: try PostgresSettings(
                    url: "postgresql://postgres@127.0.0.1:\(server.port)/vtpm?connect_timeout=3&\(parameters)",
                    environment: [:]
                )
            )
        }
        // The server refuses a connection without TLS.
        let plain = #expect(throws: RegistryError.self) {
            try registry("sslmode=disable").currentGeneration(vmID: VM.a)
        }
        #expect(plain?.code == .unavailable && plain?.message.contains("28000") == true, "\(String(describing: plain))")
        // require: encrypted, the certificate not checked (libpq's meaning).
        try registry("sslmode=require").beginGeneration(vmID: VM.a, reason: .manufacture)
        // verify-full: the server's certificate must chain to sslrootcert.
        #expect(
            try registry("sslmode=verify-full&sslrootcert=\(server.certificate)").currentGeneration(vmID: VM.a)?
                .generation
                == 0
        )
        let forged = #expect(throws: RegistryError.self) {
            try registry("sslmode=verify-full&sslrootcert=\(server.otherCertificate)").currentGeneration(vmID: VM.a)
        }
        #expect(forged?.code == .unavailable)
    }

    @Test(.enabled(if: PostgresServer.isAvailable)) func aSchemaFromANewerBuildIsRefused() throws {
        let settings = try freshPostgresDatabase()
        let registry = RegistryDatabase(postgres: settings)
        #expect(try registry.schemaVersion() == 4)
        try registry.close()
        _ = try sharedPostgres.get().sql("UPDATE schema_version SET version = 99", database: settings.database)
        let newer = RegistryDatabase(postgres: settings)
        let error = #expect(throws: RegistryError.self) { try newer.currentGeneration(vmID: VM.a) }
        #expect(error?.code == .unsupportedSchemaVersion)
    }
}

@Suite struct PostgresSettingsTests {
    @Test func aTCPURLWithEveryPart() throws {
        let settings = try PostgresSettings(
            url: "postgresql://vtpm@db.example:6432/cluster?sslmode=require&connect_timeout=3",
            environment: [:]
        )
        #expect(settings.endpoint == .tcp(host: "db.example", port: 6432))
        #expect(settings.user == "vtpm" && settings.database == "cluster")
        #expect(settings.sslMode == .require && settings.timeout == .seconds(3))
        #expect(settings.description == "postgresql://vtpm@db.example:6432/cluster")
    }

    @Test func aUnixSocketDirectoryAndThePGEnvironment() throws {
        let settings = try PostgresSettings(
            url: "postgresql:///vtpm?host=/run/postgresql",
            environment: ["PGPORT": "5433", "PGUSER": "tss"]
        )
        #expect(settings.endpoint == .unixSocket(path: "/run/postgresql/.s.PGSQL.5433"))
        #expect(settings.user == "tss" && settings.database == "vtpm" && settings.sslMode == .disable)
        let encoded = try PostgresSettings(url: "postgresql://tss@%2Fvar%2Frun%2Fpostgresql/r", environment: [:])
        #expect(encoded.endpoint == .unixSocket(path: "/var/run/postgresql/.s.PGSQL.5432"))
    }

    @Test func thePasswordComesFromTheEnvironmentOrAPrivatePasswordFile() throws {
        try withTemporaryDirectory { dir in
            let file = dir + "/pgpass"
            try "# comment\nother:*:*:*:wrong\ndb:5432:vtpm:tss:s\\:cret\n".write(
                toFile: file,
                atomically: true,
                encoding: .utf8
            )
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
            let url = "postgresql://tss@db/vtpm?passfile=\(file)"
            #expect(try PostgresSettings(url: url, environment: [:]).password == "s:cret")
            #expect(try PostgresSettings(url: url, environment: ["PGPASSWORD": "env"]).password == "env")
            // A password file others can read is refused when named, ignored (as libpq does) when found.
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
            #expect(throws: RegistryError(.hostileFile, "")) { try PostgresSettings(url: url, environment: [:]) }
            #expect(
                try PostgresSettings(url: "postgresql://tss@db/vtpm", environment: ["PGPASSFILE": file]).password
                    == nil
            )
        }
    }

    @Test(arguments: [
        "postgresql://h/db?sslmode=sometimes", "postgresql://h:0/db", "postgresql://h/db?bogus=1",
        "postgresql://h/db?connect_timeout=0", "mysql://h/db", "postgresql://h/db?passfile=/nonexistent/pgpass",
    ])
    func badURLsAreRefusedNamingWhatIsWrong(_ url: String) throws {
        let error = #expect(throws: RegistryError.self) { try PostgresSettings(url: url, environment: [:]) }
        #expect(error?.code == .invalidArgument)
    }

    @Test func aPasswordInTheURLNeverReachesMessages() throws {
        let settings = try PostgresSettings(url: "postgresql://u:secret@h/db", environment: [:])
        #expect(try settings.password == "secret")
        #expect(!settings.description.contains("secret"))
        let error = #expect(throws: RegistryError.self) {
            try PostgresSettings(url: "postgresql://u:secret@h/db?sslmode=never", environment: [:])
        }
        #expect(error.map { !$0.description.contains("secret") } ?? false)
    }

    @Test func urlPartsAreDecodedOnceAndIPv6HostsLoseTheirBrackets() throws {
        let settings = try PostgresSettings(url: "postgresql://u%40x:50%25off@[::1]:5433/d%2Fb", environment: [:])
        #expect(settings.user == "u@x" && settings.database == "d/b")
        #expect(try settings.password == "50%off")
        #expect(settings.endpoint == .tcp(host: "::1", port: 5433))
    }

    @Test func aBrokenURLStillHidesItsPassword() throws {
        let broken = "postgresql://vtpm:pa ss/w#rd@db/vtpm"
        #expect(!PostgresSettings.redacted(broken).contains("pa ss"))
        let error = #expect(throws: RegistryError.self) { try PostgresSettings(url: broken, environment: [:]) }
        #expect(error.map { !$0.description.contains("pa ss") } ?? false, "\(String(describing: error))")
    }

    @Test func registryLocationsArePathsOrURLs() throws {
        guard case .sqlite(let path) = try RegistryLocation("/var/lib/vtpm/registry.sqlite", environment: [:]) else {
            Issue.record("not a SQLite path")
            return
        }
        #expect(path == "/var/lib/vtpm/registry.sqlite")
        #expect(try RegistryLocation("postgres://u@h/db", environment: [:]).isShared)
        #expect(throws: RegistryError(.invalidArgument, "")) {
            try RegistryLocation("relative.sqlite", environment: [:])
        }
    }
}
