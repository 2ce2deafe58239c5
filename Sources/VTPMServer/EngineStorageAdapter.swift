import Logging
import StateStore
import TPMEngine

/// Connects libtpms' NVRAM callbacks to the state directory, remembering why a call failed so
/// that CMD_INIT can report it.
final class EngineStorageAdapter: EngineStorage {
    let store: StateDirectory?
    let logger: Logger
    var lastFailure: StateStoreError? = nil

    init(store: StateDirectory?, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    func prepare() -> Bool {
        guard let store else {
            self.lastFailure = StateStoreError(.io, "no state directory configured")
            return false
        }
        do {
            try store.lock()
            return true
        } catch {
            self.fail(error)
            return false
        }
    }

    func load(_ name: String) -> StorageLoadResult {
        guard let store else { return .failure }
        do {
            guard let bytes = try store.load(name) else { return .notFound }
            return .data(bytes)
        } catch {
            self.fail(error)
            return .failure
        }
    }

    func store(_ name: String, _ data: [UInt8]) -> Bool {
        guard let store else { return false }
        do {
            try store.store(name, data)
            return true
        } catch {
            self.fail(error)
            return false
        }
    }

    func delete(_ name: String, mustExist: Bool) -> Bool {
        guard let store else { return false }
        do {
            let existed = try store.delete(name)
            return existed || !mustExist
        } catch {
            self.fail(error)
            return false
        }
    }

    private func fail(_ error: StateStoreError) {
        self.lastFailure = error
        self.logger.error("state storage: \(error.message)")
    }
}
