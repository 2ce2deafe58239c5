/// A VM identity: the one vm-id type every module uses (vtpmd, the registry, the state files, the
/// EK certificates, vtpm-state).
///
/// Two forms:
/// - a **UUID** (libvirt, OpenStack, KubeVirt key their VMs by one): 16 bytes, written in the
///   canonical lower-case 8-4-4-4-12 form; text in either case parses to the same value;
/// - a **name** (Proxmox numbers its VMs: `101`): 1 to 64 characters of `A-Z a-z 0-9 . _ -`,
///   starting with a letter or digit, so that it is a safe file-name component. Names are
///   case-sensitive. A name that parses as a UUID *is* that UUID.
///
/// Binary form (state files, blob claims): `u8 kind` then, for kind 1, the 16 UUID bytes; for
/// kind 2, `u8 length` and the name's bytes.
public struct VMID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    private enum Storage: Hashable, Sendable {
        case uuid([UInt8])
        case name(String)
    }

    private let storage: Storage

    /// The longest name accepted.
    public static let maximumNameLength = 64

    /// Parses a UUID (either case) or a name; nil for anything else.
    /// - Parameter text: The vm-id as written by an operator or a configuration.
    public init?(_ text: String) {
        if let bytes = Self.parseUUID(text) {
            self.storage = .uuid(bytes)
        } else if Self.isValidName(text) {
            self.storage = .name(text)
        } else {
            return nil
        }
    }

    /// A UUID from its 16 bytes; nil for any other count.
    /// - Parameter uuidBytes: The UUID's bytes in network order.
    public init?(uuidBytes: [UInt8]) {
        guard uuidBytes.count == 16 else { return nil }
        self.storage = .uuid(uuidBytes)
    }

    /// A random (version 4) UUID.
    public static func random() -> VMID {
        var generator = SystemRandomNumberGenerator()
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        return VMID(storage: .uuid(bytes))
    }

    private init(storage: Storage) { self.storage = storage }

    /// The 16 bytes of a UUID identity; nil for a name.
    public var uuidBytes: [UInt8]? {
        if case .uuid(let bytes) = self.storage { return bytes }
        return nil
    }

    /// Whether this identity is a UUID.
    public var isUUID: Bool { self.uuidBytes != nil }

    /// The canonical text: a lower-case UUID, or the name as given.
    public var description: String {
        switch self.storage {
        case .name(let name):
            return name
        case .uuid(let bytes):
            let digits = Array("0123456789abcdef")
            var text = ""
            text.reserveCapacity(36)
            for (index, byte) in bytes.enumerated() {
                if [4, 6, 8, 10].contains(index) { text.append("-") }
                text.append(digits[Int(byte >> 4)])
                text.append(digits[Int(byte & 0x0f)])
            }
            return text
        }
    }

    public static func < (lhs: VMID, rhs: VMID) -> Bool { lhs.description < rhs.description }

    // MARK: binary form

    /// `u8 kind | payload`, as state files and blob claims store it.
    public var encoded: [UInt8] {
        switch self.storage {
        case .uuid(let bytes): return [1] + bytes
        case .name(let name): return [2, UInt8(name.utf8.count)] + Array(name.utf8)
        }
    }

    /// Decodes the binary form at the start of `bytes`.
    /// - Returns: The identity and how many bytes it took, or nil when the bytes are not a valid
    ///   identity (unknown kind, short, a name that is not valid).
    public static func decode(prefixOf bytes: ArraySlice<UInt8>) -> (vmID: VMID, count: Int)? {
        guard let kind = bytes.first else { return nil }
        let rest = bytes.dropFirst()
        switch kind {
        case 1:
            guard rest.count >= 16 else { return nil }
            return (VMID(storage: .uuid(Array(rest.prefix(16)))), 17)
        case 2:
            guard let length = rest.first, rest.count >= 1 + Int(length),
                let vmID = VMID(nameBytes: Array(rest.dropFirst().prefix(Int(length))))
            else { return nil }
            return (vmID, 2 + Int(length))
        default:
            return nil
        }
    }

    /// A name from the bytes of the binary form's kind 2: nil unless they are a valid name, and never a UUID
    /// (a UUID has its own kind; spelling one as a name is not a second encoding of it).
    /// - Parameter nameBytes: The name's UTF-8 bytes.
    public init?(nameBytes: [UInt8]) {
        let name = String(decoding: nameBytes, as: UTF8.self)
        guard Self.isValidName(name), Self.parseUUID(name) == nil else { return nil }
        self.storage = .name(name)
    }

    // MARK: Codable (as its canonical text)

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let parsed = VMID(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not a vm-id")
        }
        self = parsed
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.description)
    }

    // MARK: syntax

    /// What a vm-id must look like, for error messages.
    public static let syntax =
        "a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) or a name of 1 to 64 characters "
        + "A-Z a-z 0-9 . _ - starting with a letter or digit"

    /// Whether `text` is a valid name (not checking whether it is also a UUID).
    public static func isValidName(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard (1...Self.maximumNameLength).contains(bytes.count), let first = bytes.first,
            Self.isAlphanumeric(first)
        else { return false }
        return bytes.allSatisfy {
            Self.isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
    }

    /// The 16 bytes of `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case), or nil.
    static func parseUUID(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count == 36 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16)
        var high: UInt8? = nil
        for (index, char) in chars.enumerated() {
            if [8, 13, 18, 23].contains(index) {
                guard char == UInt8(ascii: "-") else { return nil }
                continue
            }
            guard let nibble = Self.hexValue(char) else { return nil }
            if let h = high {
                bytes.append(h << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        return bytes.count == 16 ? bytes : nil
    }

    private static func hexValue(_ char: UInt8) -> UInt8? {
        switch char {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return char - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return char - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return char - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
