import Foundation
import Registry
import Synchronization
import TestSupport
import VMIdentity

/// VM identities used across the registry tests.
enum VM {
    static let a = VMID("aaaaaaaa-0000-4000-8000-00000000000a")!
    static let b = VMID("bbbbbbbb-0000-4000-8000-00000000000b")!
    static let c = VMID("cccccccc-0000-4000-8000-00000000000c")!
    static let d = VMID("dddddddd-0000-4000-8000-00000000000d")!
}

/// A clock that advances one second per reading, so records have distinct, ordered times.
final class TickingClock: Sendable {
    private let next = Mutex<Int64>(1_700_000_000_000_000)
    func now() -> Timestamp {
        self.next.withLock { value in
            defer { value += 1_000_000 }
            return Timestamp(microsecondsSinceEpoch: value)
        }
    }
}

/// Runs `body` with a fresh registry file in a temporary directory.
func withRegistry<T>(_ body: (SQLiteRegistry, String) throws -> T) throws -> T {
    try withTemporaryDirectory { dir in
        let path = dir + "/registry.sqlite"
        let clock = TickingClock()
        let registry = try SQLiteRegistry(path: path, clock: { clock.now() })
        return try body(registry, path)
    }
}

/// The permission bits of `path`.
func permissions(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}
