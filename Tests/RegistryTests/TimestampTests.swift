import Foundation
import Registry
import Testing

@Suite struct TimestampTests {
    /// The computed ISO 8601 text agrees with Foundation's formatter, across leap years, centuries and
    /// times before 1970.
    @Test func descriptionIsISO8601WithMicrosecondsInUTC() throws {
        #expect(Timestamp(microsecondsSinceEpoch: 0).description == "1970-01-01T00:00:00.000000Z")
        #expect(Timestamp(microsecondsSinceEpoch: -1).description == "1969-12-31T23:59:59.999999Z")
        #expect(Timestamp(microsecondsSinceEpoch: 951_782_400_000_001).description == "2000-02-29T00:00:00.000001Z")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5000 {
            // 1601 to 2400.
            let seconds = Int64.random(in: -11_644_473_600...13_569_465_600, using: &generator)
            let micros = Int64.random(in: 0..<1_000_000, using: &generator)
            let text = Timestamp(microsecondsSinceEpoch: seconds * 1_000_000 + micros).description
            let expected = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
            let fraction = String(micros)
            #expect(
                text == expected.dropLast() + "." + String(repeating: "0", count: 6 - fraction.count) + fraction + "Z"
            )
        }
    }
}
