/// A malformed message on the control or data channel, or in a state blob.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable {
            case truncated, trailingBytes, lengthOutOfRange, unknownCommand, invalidValue, badHeader, badVersion
        }
        let base: Base
        public static let truncated = Code(base: .truncated)
        public static let trailingBytes = Code(base: .trailingBytes)
        public static let lengthOutOfRange = Code(base: .lengthOutOfRange)
        public static let unknownCommand = Code(base: .unknownCommand)
        public static let invalidValue = Code(base: .invalidValue)
        public static let badHeader = Code(base: .badHeader)
        public static let badVersion = Code(base: .badVersion)
        public var description: String { "\(self.base)" }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { self.message }

    public static func == (lhs: WireError, rhs: WireError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }

    static func truncated(needed: Int, available: Int) -> WireError {
        WireError(.truncated, "truncated: needed \(needed) bytes, \(available) available")
    }
    static func trailingBytes(_ count: Int) -> WireError {
        WireError(.trailingBytes, "\(count) unexpected trailing bytes")
    }
    static func lengthOutOfRange(_ length: Int, max: Int) -> WireError {
        WireError(.lengthOutOfRange, "length \(length) out of range (maximum \(max))")
    }
}
