import TPMEngine

/// libtpms' NVRAM for `vtpm-state`: serves blobs it was given and keeps every write in memory, so an
/// engine can run on a copy of a state directory that is never written back.
final class InMemoryEngineStorage: EngineStorage {
    private(set) var blobs: [String: [UInt8]]

    init(blobs: [String: [UInt8]] = [:]) { self.blobs = blobs }

    func prepare() -> Bool { true }

    func load(_ name: String) -> StorageLoadResult {
        guard let bytes = self.blobs[name] else { return .notFound }
        return .data(bytes)
    }

    func store(_ name: String, _ data: [UInt8]) -> Bool {
        self.blobs[name] = data
        return true
    }

    func delete(_ name: String, mustExist: Bool) -> Bool {
        self.blobs.removeValue(forKey: name) != nil || !mustExist
    }
}
