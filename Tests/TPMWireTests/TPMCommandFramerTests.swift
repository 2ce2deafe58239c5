import Testing

@testable import TPMWire

/// The data channel's framing over the caller's buffer.
@Suite
struct TPMCommandFramerTests {
    static let getRandom: [UInt8] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 8]

    /// Feeds `chunks` as reads would deliver them (each cut to the framer's read limit).
    static func feed(
        _ chunks: [[UInt8]],
        framer: inout TPMCommandFramer,
        buffer: inout [UInt8],
        allowSendCommand: Bool = true
    ) -> [TPMCommandFramer.Step] {
        var steps: [TPMCommandFramer.Step] = []
        for chunk in chunks {
            var rest = chunk[...]
            while !rest.isEmpty {
                let n = min(rest.count, framer.readLimit(in: buffer))
                buffer.replaceSubrange(framer.filled..<(framer.filled + n), with: rest.prefix(n))
                rest = rest.dropFirst(n)
                steps.append(
                    framer.received(n, in: buffer, maximumCommand: 4096, allowSendCommand: allowSendCommand)
                )
            }
        }
        return steps
    }

    @Test func aCommandInPiecesIsFramedOnceComplete() {
        var buffer = [UInt8](repeating: 0, count: 4096 + 16)
        var framer = TPMCommandFramer(capacity: buffer.count)
        let pieces = Self.getRandom.map { [$0] }
        let steps = Self.feed(pieces, framer: &framer, buffer: &buffer)
        #expect(steps.dropLast().allSatisfy { $0 == .needMore })
        #expect(steps.last == .frame(.init(command: 0..<12, sendCommandLocality: nil)))
        #expect(Array(buffer[0..<12]) == Self.getRandom && !framer.isInFrame)
    }

    @Test func bytesBeyondTheSizeFieldInTheFirstReadAreAnError() {
        var buffer = [UInt8](repeating: 0, count: 4096 + 16)
        var framer = TPMCommandFramer(capacity: buffer.count)
        let steps = Self.feed([Self.getRandom + Self.getRandom], framer: &framer, buffer: &buffer)
        #expect(steps == [.malformed("12 bytes beyond the size field")])
        // Later reads are limited to what is missing: a second command cannot join the first.
        let split = Self.feed(
            [Array(Self.getRandom.prefix(5)), Array(Self.getRandom.dropFirst(5)) + [1, 2]],
            framer: &framer,
            buffer: &buffer
        )
        #expect(split.prefix(3) == [.needMore, .needMore, .frame(.init(command: 0..<12, sendCommandLocality: nil))])
    }

    @Test(
        arguments: [
            ([0x80, 0x01, 0, 0, 0, 6, 0, 0, 1, 0x7b], "size field 6 outside 10...4096"),
            ([0x80, 0x01, 0, 0, 0x20, 0, 0, 0, 1, 0x7b], "size field 8192 outside 10...4096"),
        ] as [([UInt8], String)]
    )
    func sizeFieldsOutOfRangeAreRejected(header: [UInt8], reason: String) {
        var buffer = [UInt8](repeating: 0, count: 4096 + 16)
        var framer = TPMCommandFramer(capacity: buffer.count)
        #expect(Self.feed([header], framer: &framer, buffer: &buffer) == [.malformed(reason)])
        #expect(!framer.isInFrame)
    }

    @Test func sendCommandFramingCarriesALocality() {
        var buffer = [UInt8](repeating: 0, count: 4096 + 16)
        var framer = TPMCommandFramer(capacity: buffer.count)
        let frame: [UInt8] = [0, 0, 0, 8, 3, 0, 0, 0, 12] + Self.getRandom
        #expect(
            Self.feed([frame], framer: &framer, buffer: &buffer)
                == [.frame(.init(command: 9..<21, sendCommandLocality: 3))]
        )
        #expect(
            Self.feed([frame], framer: &framer, buffer: &buffer, allowSendCommand: false)
                == [.malformed("TCG send-command framing on a QEMU data channel")]
        )
    }

    @Test func anExpiredFrameSaysHowMuchArrived() {
        var buffer = [UInt8](repeating: 0, count: 4096 + 16)
        var framer = TPMCommandFramer(capacity: buffer.count)
        _ = Self.feed([Array(Self.getRandom.prefix(11))], framer: &framer, buffer: &buffer)
        #expect(framer.isInFrame && framer.readLimit(in: buffer) == 1)
        #expect(framer.expire(in: buffer) == "11 of 12 bytes arrived")
        #expect(!framer.isInFrame)
    }
}
