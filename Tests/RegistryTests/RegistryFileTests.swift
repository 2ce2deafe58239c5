import Foundation
import GRDB
import Registry
import TestSupport
import Testing
import VMIdentity

@Suite struct RegistryFileTests {
    @Test func createsTheFileWithMode0600() throws {
        try withRegistry { registry, path in
            #expect(try permissions(path) == 0o600)
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            #expect(try permissions(path) == 0o600)
            let dir = (path as NSString).deletingLastPathComponent
            // Nothing left behind but the database (and no world-readable journal).
            let names = try FileManager.default.contentsOfDirectory(atPath: dir)
            for name in names {
                #expect(try permissions(dir + "/" + name) == 0o600, "\(name)")
            }
            #expect(!names.contains { $0.hasPrefix(".") })
        }
    }

    @Test func createsAMissingDirectoryWithMode0700() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/var/lib/vtpm/registry.sqlite"
            let registry = try RegistryDatabase(sqlitePath: path)
            try registry.ensureIdentity(vmID: VM.a)
            #expect(try permissions(dir + "/var/lib/vtpm") == 0o700)
            #expect(try permissions(path) == 0o600)
        }
    }

    @Test func reopeningKeepsEverything() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/registry.sqlite"
            do {
                let registry = try RegistryDatabase(sqlitePath: path)
                try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
                _ = try registry.recordCheckpoint(vmID: VM.a, generation: 0)
                try registry.markRan(vmID: VM.a, generation: 0)
                try registry.appendEvent(vmID: VM.a, generation: 0, LineageEventDraft(kind: .manufacture))
                try registry.close()
            }
            let reopened = try RegistryDatabase(sqlitePath: path)
            #expect(try reopened.schemaVersion() == 4)
            #expect(try reopened.currentGeneration(vmID: VM.a)?.generation == 0)
            let latest = try #require(try reopened.latestCheckpoint(vmID: VM.a, generation: 0))
            #expect(latest.checkpoint == 1 && latest.ranAfter)
            #expect(try reopened.lineage(vmID: VM.a).map(\.kind) == [.manufacture])
            #expect(try reopened.recordCheckpoint(vmID: VM.a, generation: 0) == 2)
        }
    }

    @Test(arguments: [
        Array("this is not a database, it is a text file\n".utf8),
        [UInt8](repeating: 0, count: 4096),
        Array("SQLite format 3\0".utf8) + [UInt8](repeating: 0xFF, count: 1000),
    ])
    func rejectsAFileThatIsNotADatabase(contents: [UInt8]) throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/registry.sqlite"
            #expect(
                FileManager.default.createFile(
                    atPath: path,
                    contents: Data(contents),
                    attributes: [.posixPermissions: 0o600]
                )
            )
            let error = #expect(throws: RegistryError.self) { try RegistryDatabase(sqlitePath: path) }
            #expect(error?.code == .notADatabase, "\(String(describing: error))")
            #expect(error?.description.contains(path) == true)
            // The file is left as it was.
            #expect(FileManager.default.contents(atPath: path) == Data(contents))
        }
    }

    @Test func rejectsASymlink() throws {
        try withTemporaryDirectory { dir in
            let target = dir + "/real.sqlite"
            _ = try RegistryDatabase(sqlitePath: target)
            try FileManager.default.createSymbolicLink(atPath: dir + "/link.sqlite", withDestinationPath: target)
            #expect(throws: RegistryError(.hostileFile, "")) { try RegistryDatabase(sqlitePath: dir + "/link.sqlite") }
        }
    }

    @Test func rejectsAFileOthersCanWrite() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/registry.sqlite"
            _ = try RegistryDatabase(sqlitePath: path)
            try FileManager.default.setAttributes([.posixPermissions: 0o666], ofItemAtPath: path)
            #expect(throws: RegistryError(.hostileFile, "")) { try RegistryDatabase(sqlitePath: path) }
        }
    }

    @Test func rejectsASchemaFromANewerBuild() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/registry.sqlite"
            _ = try RegistryDatabase(sqlitePath: path)
            let queue = try DatabaseQueue(path: path)
            try queue.write { db in try db.execute(sql: "UPDATE schema_version SET version = 99") }
            try queue.close()
            #expect(throws: RegistryError(.unsupportedSchemaVersion, "")) { try RegistryDatabase(sqlitePath: path) }
        }
    }

    @Test func anEmptyExistingFileBecomesARegistry() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/registry.sqlite"
            #expect(
                FileManager.default.createFile(atPath: path, contents: Data(), attributes: [.posixPermissions: 0o600])
            )
            let registry = try RegistryDatabase(sqlitePath: path)
            #expect(try registry.schemaVersion() == 4)
        }
    }
}
