import Crypto
import TPMWire
import Testing
import VMIdentity

@testable import StateStore

@Suite
struct SourceClaimTests {
    static let key = try! HostKey(bytes: [UInt8](repeating: 0x5a, count: 32))
    static let otherKey = try! HostKey(bytes: [UInt8](repeating: 0xa5, count: 32))
    static let vm = VMID("6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e")!
    static let plain: [UInt8] = [0, 4, 0x45, 0x63, 0x78, 0x89] + [UInt8](repeating: 7, count: 300)

    static func blob() throws -> [UInt8] {
        try MigrationBlob.encode(Self.plain, stateKey: nil, keepStateKeyLayer: false, migrationKey: nil)
    }

    @Test func vmIDsParseAndPrint() throws {
        #expect(Self.vm.description == "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e")
        #expect(VMID("6F1C1A52-3C1E-4A57-9D0E-4F3B2A1C0D9E") == Self.vm)
        // Near-UUIDs are names (Proxmox-style ids), never UUIDs.
        for nearUUID in [
            "6f1c1a52", "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9", "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9g",
            "6f1c1a523c1e4a579d0e4f3b2a1c0d9e", "6f1c1a52-3c1e-4a57-9d0e4-f3b2a1c0d9e",
        ] {
            #expect(VMID(nearUUID)?.isUUID == false, "\(nearUUID)")
        }
        #expect(VMID("") == nil)
        let random = VMID.random()
        #expect(VMID(random.description) == random && random != VMID.random())
    }

    @Test func claimsRoundTripAndLeaveSwtpmsBlob() throws {
        let claim = SourceClaim(vmID: Self.vm, generation: 3, checkpoint: 17)
        let original = try Self.blob()
        let claimed = try SourceClaim.attach(claim, to: original, blobType: 2, hostKey: Self.key)
        // Signed: the host id (16) and an Ed25519 signature (64, not the MAC's 32).
        #expect(claimed.count == original.count + 6 + SourceClaim.fixedSize + 16 + 16 + 32)
        let (stripped, found) = try SourceClaim.detach(from: claimed, blobType: 2, hostKey: Self.key)
        #expect(found == claim && stripped == original)
        #expect(
            try MigrationBlob.decode(claimed, stateFlagEncrypted: false, stateKey: nil, migrationKey: nil) == Self.plain
        )
        // A blob without a claim is foreign.
        let (same, none) = try SourceClaim.detach(from: original, blobType: 2, hostKey: Self.key)
        #expect(none == nil && same == original)
    }

    @Test func namedVMIDsTravelInVersion4Claims() throws {
        let claim = SourceClaim(vmID: try #require(VMID("101")), generation: 2, checkpoint: 5)
        let original = try Self.blob()
        let claimed = try SourceClaim.attach(claim, to: original, blobType: 1, hostKey: Self.key)
        #expect(claimed.count == original.count + 6 + SourceClaim.fixedSize + 16 + 32 + 1 + 3)
        let (stripped, found) = try SourceClaim.detach(from: claimed, blobType: 1, hostKey: Self.key)
        #expect(found == claim && stripped == original)
        #expect(throws: StateStoreError.self) {
            try SourceClaim.detach(from: claimed, blobType: 1, hostKey: Self.otherKey)
        }
    }

    @Test func everyByteOfAClaimedBlobIsCovered() throws {
        let claimed = try SourceClaim.attach(
            SourceClaim(vmID: Self.vm, generation: 1, checkpoint: 2),
            to: try Self.blob(),
            blobType: 1,
            hostKey: Self.key
        )
        // Any single-bit flip (beyond the total-length field, which the container checks) is refused.
        for index in stride(from: 4, to: claimed.count, by: 5) where !(6..<10).contains(index) {
            var damaged = claimed
            damaged[index] ^= 0x01
            #expect(throws: StateStoreError.self, "flip at \(index)") {
                let (_, claim) = try SourceClaim.detach(from: damaged, blobType: 1, hostKey: Self.key)
                Issue.record("flip at \(index) accepted, claim \(String(describing: claim))")
            }
        }
        #expect(throws: StateStoreError(.integrity, "")) {
            try SourceClaim.detach(from: claimed, blobType: 1, hostKey: Self.otherKey)
        }
        #expect(throws: StateStoreError(.integrity, "")) {
            try SourceClaim.detach(from: claimed, blobType: 2, hostKey: Self.key)
        }
        #expect(throws: StateStoreError.self) {
            try SourceClaim.detach(from: Array(claimed.dropLast(3)), blobType: 1, hostKey: Self.key)
        }
    }

    @Test func anotherHostsClaimVerifiesWithTheKeyItRegisteredAndNothingElse() throws {
        let claim = SourceClaim(vmID: Self.vm, generation: 4, checkpoint: 9)
        let original = try Self.blob()
        // Host "other" signs; this host (key) receives.
        let claimed = try SourceClaim.attach(claim, to: original, blobType: 1, hostKey: Self.otherKey)
        var asked: [String] = []
        let (stripped, found) = try SourceClaim.detach(from: claimed, blobType: 1, hostKey: Self.key) {
            id throws(StateStoreError) in
            asked.append(id)
            return Self.otherKey.publicKey
        }
        #expect(found == claim && stripped == original && asked == [Self.otherKey.id])
        // The registry does not know the signer, or revoked it: refused with the reason.
        let refused = #expect(throws: StateStoreError.self) {
            try SourceClaim.detach(from: claimed, blobType: 1, hostKey: Self.key) { id throws(StateStoreError) in
                throw StateStoreError(.integrity, "host \(id) is unknown")
            }
        }
        #expect(refused?.message == "host \(Self.otherKey.id) is unknown")
        // A key registered under the signer's id that is not its key (or a forged signature): refused.
        #expect(throws: StateStoreError(.integrity, "")) {
            try SourceClaim.detach(from: claimed, blobType: 1, hostKey: Self.key) { _ throws(StateStoreError) in
                Self.key.publicKey
            }
        }
        // The host id is the public key's hash, and the signing key is derived from the host key file only.
        #expect(HostID.of(publicKey: Self.otherKey.publicKey).hexString == Self.otherKey.id)
        #expect(try HostKey(bytes: [UInt8](repeating: 0xa5, count: 32)).publicKey == Self.otherKey.publicKey)
        #expect(Self.key.id != Self.otherKey.id && Self.key.id.count == 32)
    }

    @Test func claimsOfEarlierBuildsStillVerifyWithTheHostKeyMAC() throws {
        let original = try Self.blob()
        var container = try BlobContainer(decoding: original)
        var w = ByteWriter(capacity: 64)
        w.write(bytes: SourceClaim.magic)
        w.write(UInt16(1))
        w.write(bytes: try #require(Self.vm.uuidBytes))
        w.write(UInt64(2))
        w.write(UInt64(6))
        let input = SourceClaim.macInput(w.bytes, container, 1, domain: SourceClaim.domain)
        w.write(bytes: Array(HMAC<SHA256>.authenticationCode(for: input, using: Self.key.symmetricKey)))
        container.records.append(BlobContainer.Record(tag: SourceClaim.tag, value: w.bytes))
        let legacy = container.encoded
        let (stripped, found) = try SourceClaim.detach(from: legacy, blobType: 1, hostKey: Self.key)
        #expect(found == SourceClaim(vmID: Self.vm, generation: 2, checkpoint: 6) && stripped == original)
        #expect(throws: StateStoreError(.integrity, "")) {
            try SourceClaim.detach(from: legacy, blobType: 1, hostKey: Self.otherKey)
        }
    }
}
