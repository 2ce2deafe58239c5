import Foundation
import Logging
import TestSupport
import Testing
import VMIdentity

@testable import StateStore

@Suite
struct IdentityTests {
    static let logger = Logger(label: "test.identity")

    @Test func newTPMsRecordTheirIdentityAndRekeysUpdateIt() throws {
        try withTemporaryDirectory { dir in
            let vm = VMID.random()
            let store = StateDirectory(path: dir, options: .init(), logger: Self.logger)
            store.identityForNewTPM = InstanceIdentity(vmID: vm, generation: 0)
            #expect(try store.identity() == nil)
            try store.store("permall", [0, 3, 0xab, 0x36, 0x47, 0x23, 1, 2, 3])
            let first = try #require(try store.identity())
            #expect(first.vmID == vm && first.generation == 0 && first.parent == nil)

            // A rekey staged during INIT and then discarded leaves the recorded identity alone.
            let clone = VMID.random()
            store.beginStaging()
            try store.recordIdentity(InstanceIdentity(vmID: clone, generation: 1, parent: vm))
            #expect(try store.identity()?.vmID == clone)
            store.discardStaged()
            #expect(try store.identity() == first)

            store.beginStaging()
            try store.recordIdentity(
                InstanceIdentity(vmID: clone, generation: 1, parent: vm, createdAt: first.createdAt)
            )
            try store.commitStaged()
            let second = try #require(try store.identity())
            #expect(second.vmID == clone && second.generation == 1 && second.parent == vm)
        }
    }

    @Test func damagedMarkersAreRefused() throws {
        try withTemporaryDirectory { dir in
            let store = StateDirectory(path: dir, options: .init(), logger: Self.logger)
            store.identityForNewTPM = InstanceIdentity(vmID: VMID.random(), generation: 7)
            try store.store("permall", [0, 3, 1, 2])
            let path = "\(dir)/\(StateDirectory.instanceName)"
            var bytes = try #require(fileBytes(path))
            bytes[bytes.count / 2] ^= 0x20
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            #expect(throws: StateStoreError.self) { try store.identity() }
        }
    }
}
