import Foundation
import Registry
import TestSupport
import Testing
import VMIdentity

/// The endorsement keys a rekey records before it asks the separated CA signer for their certificates.
@Suite struct EndorsementKeyRecordTests {
    static func record(
        _ vm: VMID,
        _ generation: UInt64,
        _ algorithm: EndorsementKeyRecord.Algorithm = .ecc,
        digest byte: UInt8,
        parent: VMID? = nil
    ) -> EndorsementKeyRecord {
        EndorsementKeyRecord(
            vmID: vm,
            generation: generation,
            algorithm: algorithm,
            publicKeyDigest: [UInt8](repeating: byte, count: 32),
            parentVMID: parent,
            parentGeneration: parent == nil ? nil : 4
        )
    }

    @Test(arguments: StoreKind.available) func aPendingGenerationsKeyIsReplacedARecordedOnesIsFixed(
        _ store: StoreKind
    ) throws {
        try withRegistry(store) { registry, _ in
            // Before the VM exists, generation 0 is pending: a rekey run again records new keys.
            try registry.recordEndorsementKey(Self.record(VM.a, 0, digest: 1))
            try registry.recordEndorsementKey(Self.record(VM.a, 0, digest: 2))
            try registry.recordEndorsementKey(Self.record(VM.a, 0, .rsa, digest: 3))
            #expect(try registry.endorsementKey(vmID: VM.a, generation: 0, algorithm: .ecc)?.publicKeyDigest.first == 2)
            #expect(try registry.endorsementKey(vmID: VM.a, generation: 0, algorithm: .rsa)?.publicKeyDigest.first == 3)
            #expect(try registry.endorsementKey(vmID: VM.a, generation: 1, algorithm: .ecc) == nil)
            #expect(try registry.endorsementKey(vmID: VM.b, generation: 0, algorithm: .ecc) == nil)
            // The rekey committed: generation 0 is the VM's, and its keys are fixed.
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            try registry.recordEndorsementKey(Self.record(VM.a, 0, digest: 2))
            let replaced = #expect(throws: RegistryError.self) {
                try registry.recordEndorsementKey(Self.record(VM.a, 0, digest: 9))
            }
            #expect(replaced?.code == .conflict)
            let reparented = #expect(throws: RegistryError.self) {
                try registry.recordEndorsementKey(Self.record(VM.a, 0, digest: 2, parent: VM.c))
            }
            #expect(reparented?.code == .conflict)
            // Nor can a key be added to a recorded generation that had none.
            try registry.beginGeneration(vmID: VM.b, reason: .manufacture)
            let added = #expect(throws: RegistryError.self) {
                try registry.recordEndorsementKey(Self.record(VM.b, 0, digest: 5))
            }
            #expect(added?.code == .conflict)
            // The next generation is pending again.
            try registry.recordEndorsementKey(Self.record(VM.a, 1, digest: 7, parent: VM.c))
            let next = try #require(try registry.endorsementKey(vmID: VM.a, generation: 1, algorithm: .ecc))
            #expect(next.parentVMID == VM.c && next.parentGeneration == 4 && next.publicKeyDigest.first == 7)
            #expect(next.recordedAt.microsecondsSinceEpoch > 0)
        }
    }

    @Test func aSetGroupIDDirectorySharesTheRegistryWithItsGroup() throws {
        try withTemporaryDirectory { dir in
            let shared = dir + "/shared"
            try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
            try FileManager.default.setAttributes([.posixPermissions: 0o2770], ofItemAtPath: shared)
            // As root, the directory's group is not the creator's (nogroup, 65534).
            let isRoot = geteuid() == 0
            if isRoot {
                try FileManager.default.setAttributes([.groupOwnerAccountID: 65534], ofItemAtPath: shared)
                try FileManager.default.setAttributes([.posixPermissions: 0o2770], ofItemAtPath: shared)
            }
            let registry = try RegistryDatabase(sqlitePath: shared + "/registry.sqlite")
            try registry.ensureIdentity(vmID: VM.a)
            #expect(try permissions(shared + "/registry.sqlite") == 0o660)
            let attributes = try FileManager.default.attributesOfItem(atPath: shared + "/registry.sqlite")
            if isRoot { #expect((attributes[.groupOwnerAccountID] as? NSNumber)?.uint32Value == 65534) }
            try registry.close()
            // Reopened: group write is accepted there (the file's group is the directory's).
            _ = try RegistryDatabase(sqlitePath: shared + "/registry.sqlite").identity(vmID: VM.a)
            // Elsewhere a group-writable registry is still refused.
            let plain = dir + "/plain.sqlite"
            _ = try RegistryDatabase(sqlitePath: plain)
            #expect(try permissions(plain) == 0o600)
            try FileManager.default.setAttributes([.posixPermissions: 0o660], ofItemAtPath: plain)
            let refused = #expect(throws: RegistryError.self) { try RegistryDatabase(sqlitePath: plain) }
            #expect(refused?.code == .hostileFile)
            // And so is one that others may write, shared directory or not.
            try FileManager.default.setAttributes([.posixPermissions: 0o662], ofItemAtPath: shared + "/registry.sqlite")
            #expect(throws: RegistryError.self) { try RegistryDatabase(sqlitePath: shared + "/registry.sqlite") }
        }
    }
}
