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
            #expect(throws: StateStoreError.self) { try store.markerIdentity() }
        }
    }

    @Test func theIdentityTravelsInsideThePermanentStateAndWinsOverTheMarker() throws {
        try withTemporaryDirectory { dir in
            let a = InstanceIdentity(vmID: VMID.random(), generation: 3, parent: VMID("101"))
            var written: UInt64? = nil
            do {
                let store = StateDirectory(path: dir, options: .init(), logger: Self.logger)
                store.identityForNewTPM = a
                try store.store("permall", [0, 3, 1, 2])
                #expect(try store.identity() == a)
                written = store.permanentWriteGeneration
            }
            #expect(written != nil)
            // The permall alone, copied into an empty directory, still names A.
            try withTemporaryDirectory { other in
                try FileManager.default.copyItem(atPath: "\(dir)/tpm2-00.permall", toPath: "\(other)/tpm2-00.permall")
                let copy = StateDirectory(path: other, options: .init(), logger: Self.logger)
                #expect(try copy.identity() == a)
                #expect(try copy.markerIdentity() == nil)
                #expect(try copy.load("permall") == [0, 3, 1, 2])
                #expect(try copy.storedState().permanentWriteGeneration == written)
            }
            // A marker that disagrees loses to the record in the permanent state.
            let b = InstanceIdentity(vmID: VMID.random(), generation: 9)
            try Data(InstanceMarker.encode(b)).write(to: URL(fileURLWithPath: "\(dir)/\(StateDirectory.instanceName)"))
            do {
                let reopened = StateDirectory(path: dir, options: .init(), logger: Self.logger)
                #expect(try reopened.identity() == a)
                #expect(try reopened.markerIdentity()?.vmID == b.vmID)
            }
            // A flipped bit inside the identity record is refused before libtpms sees anything.
            let path = "\(dir)/tpm2-00.permall"
            var bytes = try #require(fileBytes(path))
            let magic = Array("VTPD".utf8)
            let at = try #require((0..<(bytes.count - 4)).first { Array(bytes[$0..<($0 + 4)]) == magic })
            bytes[at + 8] ^= 0x01
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let damaged = StateDirectory(path: dir, options: .init(), logger: Self.logger)
            #expect(throws: StateStoreError.self) { try damaged.identity() }
            #expect(throws: StateStoreError.self) { try damaged.load("permall") }
        }
    }

    @Test func aLinearStateFileCarriesTheIdentity() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/volume.raw"
            #expect(FileManager.default.createFile(atPath: path, contents: Data(count: 65536)))
            let a = InstanceIdentity(vmID: VMID("101"), generation: 0)
            let b = InstanceIdentity(vmID: VMID("102"), generation: 1, parent: VMID("101"))
            do {
                let store = StateDirectory(location: .linearFile(path), options: .init(), logger: Self.logger)
                store.identityForNewTPM = a
                try store.store("permall", [0, 3, 1, 2])
                #expect(try store.identity() == a)
                try store.recordIdentity(b)
            }
            let reopened = StateDirectory(location: .linearFile(path), options: .init(), logger: Self.logger)
            #expect(try reopened.identity() == b)
            #expect(try reopened.load("permall") == [0, 3, 1, 2])
        }
    }
}
