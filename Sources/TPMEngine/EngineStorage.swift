/// What `EngineStorage.load` found.
public enum StorageLoadResult: Sendable {
    /// The blob's bytes (as libtpms wrote them).
    case data([UInt8])
    /// No such blob. For "permall" this lets libtpms manufacture a new TPM, so a storage must only
    /// answer it for a directory with no trace of an earlier TPM.
    case notFound
    /// The blob exists but cannot be used (corrupt, hostile, wrong key): libtpms fails the init.
    case failure
}

/// Persistence for libtpms' NVRAM callbacks. Called only on the engine's thread, from inside
/// `Engine` calls (initialize, process, ...).
public protocol EngineStorage: AnyObject {
    /// Prepares storage before libtpms loads anything (takes the directory lock). False fails the init.
    func prepare() -> Bool
    /// Loads the blob named `name` ("permall", "volatilestate", "savestate").
    func load(_ name: String) -> StorageLoadResult
    /// Stores a blob durably; false puts libtpms into failure mode.
    func store(_ name: String, _ data: [UInt8]) -> Bool
    /// Deletes a blob; a missing blob is an error only with `mustExist`.
    func delete(_ name: String, mustExist: Bool) -> Bool
}
