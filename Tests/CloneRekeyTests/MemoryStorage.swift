import TPMEngine

/// libtpms NVRAM in memory: what a staging state directory looks like to the engine.
final class MemoryStorage: EngineStorage {
    var blobs: [String: [UInt8]] = [:]
    var stores = 0

    func prepare() -> Bool { true }

    func load(_ name: String) -> StorageLoadResult {
        guard let bytes = self.blobs[name] else { return .notFound }
        return .data(bytes)
    }

    func store(_ name: String, _ data: [UInt8]) -> Bool {
        self.blobs[name] = data
        self.stores += 1
        return true
    }

    func delete(_ name: String, mustExist: Bool) -> Bool {
        self.blobs.removeValue(forKey: name) != nil || !mustExist
    }
}
