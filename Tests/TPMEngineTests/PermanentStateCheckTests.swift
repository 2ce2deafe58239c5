import Foundation
import Testing

@testable import TPMEngine

/// libtpms in memory, for the check of permanent states.
final class MemoryBlobs: EngineStorage {
    var blobs: [String: [UInt8]] = [:]
    func prepare() -> Bool { true }
    func load(_ name: String) -> StorageLoadResult { self.blobs[name].map { .data($0) } ?? .notFound }
    func store(_ name: String, _ data: [UInt8]) -> Bool {
        self.blobs[name] = data
        return true
    }
    func delete(_ name: String, mustExist: Bool) -> Bool { self.blobs.removeValue(forKey: name) != nil || !mustExist }
}

/// The check vtpmd makes on a permanent state before libtpms loads it (``PermanentStateCheck``), against
/// states the real libtpms manufactured and the input `make fuzz` found.
@Suite(.serialized)
struct PermanentStateCheckTests {
    /// TPM2_Startup(CLEAR) and TPM2_GetRandom(8).
    static let startup: [UInt8] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0]
    static let getRandom: [UInt8] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 8]

    /// A fresh TPM's permanent state, and where its audit hash algorithm lies.
    static func manufactured(_ engine: Engine, _ storage: MemoryBlobs) throws -> (blob: [UInt8], offset: Int) {
        try engine.initialize()
        var command = Self.startup
        _ = engine.process(&command)
        let blob = try engine.state(.permanent)
        engine.terminate()
        let algorithm = try #require(PermanentStateCheck.auditHashAlgorithm(blob))
        // libtpms manufactures with SHA-512 for command audit; find those two bytes where the reader says.
        #expect(algorithm == 0x000d)
        let offset = try #require(Self.offsetOfAuditAlgorithm(blob))
        return (blob, offset)
    }

    /// The offset the reader reaches, found by changing candidate bytes until the reader sees the change.
    static func offsetOfAuditAlgorithm(_ blob: [UInt8]) -> Int? {
        for offset in 0..<(blob.count - 1) where blob[offset] == 0x00 && blob[offset + 1] == 0x0d {
            var changed = blob
            changed[offset + 1] = 0x0b
            if PermanentStateCheck.auditHashAlgorithm(changed) == 0x000b { return offset }
        }
        return nil
    }

    @Test func aStateWithAnotherValidAlgorithmLoadsAndOneWithAnInvalidOneIsRefused() throws {
        let storage = MemoryBlobs()
        let engine = try Engine(storage: storage)
        let (blob, offset) = try Self.manufactured(engine, storage)
        // SHA-256 there: libtpms loads it and runs commands (the reader found the real field).
        var sha256 = blob
        sha256[offset + 1] = 0x0b
        storage.blobs = ["permall": sha256]
        try engine.initialize()
        var command = Self.getRandom
        // TPM_RC_INITIALIZE (0x100): the TPM runs and wants TPM2_Startup.
        #expect(engine.process(&command).map { Array($0[6..<10]) } == [0, 0, 1, 0])
        engine.terminate()
        // An algorithm libtpms does not have: refused on load and on SET_STATEBLOB, with the reason.
        var invalid = blob
        invalid[offset + 1] = 0x6f
        storage.blobs = ["permall": invalid]
        #expect(throws: EngineError.self) { try engine.initialize() }
        do { try engine.initialize() } catch {
            #expect(error.detail?.contains("0x6f") == true, "\(error)")
        }
        #expect(!engine.isRunning)
        #expect(throws: EngineError.self) { try engine.setState(.permanent, invalid) }
    }

    @Test func theInputTheFuzzerFoundIsRefusedAndTheEngineLivesOn() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Fuzz/regressions/libtpms-state/audit-hash-alg-null-deref")
        let input = [UInt8](try Data(contentsOf: url))
        // The fuzz target's first byte says "permanent state"; the rest is the blob.
        let blob = Array(input.dropFirst())
        let refusal = try #require(PermanentStateCheck.refusal(blob))
        #expect(refusal.contains("0x6f"))
        let storage = MemoryBlobs()
        let engine = try Engine(storage: storage)
        storage.blobs = ["permall": blob]
        #expect(throws: EngineError.self) { try engine.initialize() }
        storage.blobs = [:]
        try engine.initialize()
        var command = Self.startup
        #expect(engine.process(&command).map { Array($0[6..<10]) } == [0, 0, 0, 0])
    }

    @Test(arguments: [0, 1, 10, 100, 1000])
    func truncatedStatesAreLeftToLibtpms(_ length: Int) {
        // Nothing to say about a blob libtpms refuses itself: the reader stops without a verdict.
        #expect(PermanentStateCheck.refusal(Array(repeating: 0xff, count: length)) == nil)
    }
}
