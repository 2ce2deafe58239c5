import TPMWire

/// A VM's identity: a UUID (16 bytes), written in the usual 8-4-4-4-12 lower-case hex form.
public struct VMID: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let bytes: [UInt8]

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case); nil for anything else.
    public init?(_ text: String) {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12], let bytes = [UInt8](hexString: groups.joined()) else {
            return nil
        }
        self.bytes = bytes
    }

    /// Exactly 16 bytes.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// A random (version 4) UUID.
    public static func random() -> VMID {
        var generator = SystemRandomNumberGenerator()
        var b = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        b[6] = (b[6] & 0x0f) | 0x40
        b[8] = (b[8] & 0x3f) | 0x80
        return VMID(bytes: b)!
    }

    public var description: String {
        let hex = self.bytes.hexString
        let chars = Array(hex)
        return String(chars[0..<8]) + "-" + String(chars[8..<12]) + "-" + String(chars[12..<16]) + "-"
            + String(chars[16..<20]) + "-" + String(chars[20..<32])
    }

    public static func < (lhs: VMID, rhs: VMID) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }
}
