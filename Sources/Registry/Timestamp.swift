import Foundation

/// A point in time as the registry stores it: microseconds since the Unix epoch (a `BIGINT` column).
public struct Timestamp: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Microseconds since 1970-01-01T00:00:00Z.
    public var microsecondsSinceEpoch: Int64

    /// Creates a timestamp.
    /// - Parameter microsecondsSinceEpoch: Microseconds since the Unix epoch.
    public init(microsecondsSinceEpoch: Int64) {
        self.microsecondsSinceEpoch = microsecondsSinceEpoch
    }

    /// The current wall-clock time.
    public static func now() -> Timestamp {
        Timestamp(microsecondsSinceEpoch: Int64((Date().timeIntervalSince1970 * 1_000_000).rounded()))
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool {
        lhs.microsecondsSinceEpoch < rhs.microsecondsSinceEpoch
    }

    /// ISO 8601 with microseconds, UTC.
    public var description: String {
        let seconds = self.microsecondsSinceEpoch.quotientAndRemainder(dividingBy: 1_000_000)
        let micros = seconds.remainder < 0 ? seconds.remainder + 1_000_000 : seconds.remainder
        let whole = seconds.remainder < 0 ? seconds.quotient - 1 : seconds.quotient
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        let text = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(whole)))
        let fraction = String(micros)
        return text.replacingOccurrences(
            of: "Z",
            with: "." + String(repeating: "0", count: 6 - fraction.count) + fraction + "Z"
        )
    }
}
