import Testing

@testable import TPMWire

/// The control channel's incremental decoder: bytes in, in any split; messages out, in order.
@Suite
struct ControlDecoderTests {
    static func decodeAll(_ decoder: inout ControlDecoder) -> [ControlDecoder.Message] {
        var out: [ControlDecoder.Message] = []
        while let message = decoder.next() { out.append(message) }
        return out
    }

    static func stateBlob(type: UInt32, body: [UInt8], flags: UInt32 = 0) -> [UInt8] {
        var w = ByteWriter()
        w.write(ControlCode.setStateBlob.rawValue)
        w.write(flags)
        w.write(type)
        w.write(UInt32(body.count))
        w.write(bytes: body)
        return w.bytes
    }

    static func hashData(_ body: [UInt8]) -> [UInt8] {
        var w = ByteWriter()
        w.write(ControlCode.hashData.rawValue)
        w.write(UInt32(body.count))
        w.write(bytes: body)
        return w.bytes
    }

    static let requests: [ControlRequest] = [
        .getCapability, .initialize(flags: 1), .shutdown, .getTPMEstablished, .setLocality(3), .hashStart, .hashEnd,
        .cancelTPMCommand, .storeVolatile, .resetTPMEstablished(locality: 3),
        .getStateBlob(flags: 1, type: 2, offset: 100), .stop, .getConfig, .setDataFD, .setBufferSize(4096),
        .getInfo(flags: 3, offset: 7), .vtpmGetIdentity,
    ]

    @Test func pipelinedMessagesComeOutInOrder() {
        var d = ControlDecoder(maximumBlobSize: 1 << 20)
        let blob = Self.stateBlob(type: 1, body: Array(0..<200))
        d.receive(Self.requests.flatMap(\.encoded) + blob + ControlRequest.getConfig.encoded)
        let expected =
            Self.requests.map { ControlDecoder.Message.request($0) }
            + [.setStateBlob(flags: 0, type: 1, blob: Array(0..<200)), .request(.getConfig)]
        #expect(Self.decodeAll(&d) == expected)
        #expect(d.phase == .idle && d.bufferedCount == 0)
    }

    @Test func aMessageFedOneByteAtATimeComesOutOnceComplete() {
        var d = ControlDecoder(maximumBlobSize: 1 << 20)
        let stream = ControlRequest.initialize(flags: 1).encoded + Self.stateBlob(type: 2, body: [9, 8, 7])
        var out: [ControlDecoder.Message] = []
        for (i, byte) in stream.enumerated() {
            d.receive([byte])
            let got = Self.decodeAll(&d)
            out += got
            if i == 7 { #expect(got == [.request(.initialize(flags: 1))]) }
            if i < 7 { #expect(got.isEmpty && d.phase != .idle) }
        }
        #expect(out == [.request(.initialize(flags: 1)), .setStateBlob(flags: 0, type: 2, blob: [9, 8, 7])])
    }

    @Test func phasesTellWhichDeadlineRuns() {
        var d = ControlDecoder(maximumBlobSize: 1 << 20)
        #expect(d.phase == .idle)
        d.receive([0, 0])
        #expect(d.phase == .command(nil))
        d.receive([0, 2, 0])
        #expect(d.phase == .command(.initialize) && d.nextCode == .initialize)
        #expect(d.next() == nil)
        d.receive([0, 0, 0])
        #expect(d.next() == .request(.initialize(flags: 0)))
        d.receive(Array(Self.stateBlob(type: 1, body: Array(repeating: 1, count: 100)).prefix(20)))
        #expect(d.next() == nil)
        #expect(d.phase == .body(.setStateBlob) && d.nextCode == nil)
        d.receive(Self.hashData([]).prefix(2))
        // Still in the state blob's body: these bytes are part of it.
        #expect(d.phase == .body(.setStateBlob))
    }

    @Test func theShortLocalityFormIsTakenWhenNothingFollows() {
        // swtpm_ioctl writes 1 payload byte, QEMU 4.
        var d = ControlDecoder(maximumBlobSize: 1 << 20)
        d.receive([0, 0, 0, 5, 2])
        #expect(d.next() == .request(.setLocality(2)))
        d.receive([0, 0, 0, 0x0b, 3])
        #expect(d.next() == .request(.resetTPMEstablished(locality: 3)))
        d.receive([0, 0, 0, 5, 4, 0, 0, 0] + ControlRequest.stop.encoded)
        #expect(Self.decodeAll(&d) == [.request(.setLocality(4)), .request(.stop)])
        d.receive([0, 0, 0, 5])
        #expect(d.next() == nil)
        // QEMU's 4-byte form arriving in pieces: 2 or 3 payload bytes are not the short form; wait for the rest.
        d.receive([1, 0])
        #expect(d.next() == nil)
        d.receive([0])
        #expect(d.next() == nil)
        d.receive([0] + ControlRequest.stop.encoded)
        #expect(Self.decodeAll(&d) == [.request(.setLocality(1)), .request(.stop)])
    }

    @Test func hashDataIsHandedOutInChunksAsItArrives() {
        var d = ControlDecoder(maximumBlobSize: 16)
        let body = (0..<10_000).map { UInt8(truncatingIfNeeded: $0) }
        let stream = Self.hashData(body) + ControlRequest.hashEnd.encoded
        d.receive(stream.prefix(8 + 5000))
        #expect(Self.decodeAll(&d) == [.hashData(Array(body[0..<4096]))])
        #expect(d.phase == .body(.hashData))
        d.receive(stream.dropFirst(8 + 5000))
        #expect(
            Self.decodeAll(&d) == [
                .hashData(Array(body[4096..<8192])), .hashData(Array(body[8192...])), .hashDataEnd(length: 10_000),
                .request(.hashEnd),
            ]
        )
        // The blob limit does not apply to hash data; an empty one ends at once.
        d.receive(Self.hashData([]))
        #expect(Self.decodeAll(&d) == [.hashDataEnd(length: 0)])
    }

    @Test func anUnknownCodeDropsWhatCameWithIt() {
        var d = ControlDecoder(maximumBlobSize: 1 << 20)
        d.receive([0, 0, 0, 0x55, 1, 2, 3] + ControlRequest.stop.encoded)
        #expect(Self.decodeAll(&d) == [.unknownCommand(ControlCode(rawValue: 0x55))])
        #expect(d.phase == .idle)
        d.receive(ControlRequest.stop.encoded)
        #expect(d.next() == .request(.stop))
    }

    @Test func aBlobBeyondTheLimitIsRefusedBeforeItsBody() {
        var d = ControlDecoder(maximumBlobSize: 100)
        var header = ByteWriter()
        header.write(ControlCode.setStateBlob.rawValue)
        header.write(UInt32(0))
        header.write(UInt32(1))
        header.write(UInt32(101))
        d.receive(header.bytes)
        #expect(d.next() == .blobTooLarge(length: 101))
        var exact = ControlDecoder(maximumBlobSize: 100)
        exact.receive(Self.stateBlob(type: 1, body: Array(repeating: 0, count: 100)))
        #expect(exact.next() == .setStateBlob(flags: 0, type: 1, blob: Array(repeating: 0, count: 100)))
    }

    /// Random splits of a long pipelined stream give the same messages as one read.
    @Test func anySplitGivesTheSameMessages() {
        let stream =
            Self.requests.flatMap(\.encoded) + Self.stateBlob(type: 1, body: Array(repeating: 0xAB, count: 5000))
            + Self.hashData(Array(repeating: 1, count: 9000)) + ControlRequest.getInfo(flags: 1, offset: 0).encoded
        var whole = ControlDecoder(maximumBlobSize: 1 << 20)
        whole.receive(stream)
        let expected = Self.decodeAll(&whole)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            var d = ControlDecoder(maximumBlobSize: 1 << 20)
            var out: [ControlDecoder.Message] = []
            var offset = 0
            while offset < stream.count {
                let n = min(Int.random(in: 1...3000, using: &generator), stream.count - offset)
                d.receive(stream[offset..<(offset + n)])
                offset += n
                out += Self.decodeAll(&d)
            }
            // Hash chunks may be cut differently; their concatenation may not.
            #expect(Self.joinedHashData(out) == Self.joinedHashData(expected))
        }
    }

    static func joinedHashData(_ messages: [ControlDecoder.Message]) -> [ControlDecoder.Message] {
        var out: [ControlDecoder.Message] = []
        for message in messages {
            if case .hashData(let more) = message, case .hashData(let have)? = out.last {
                out[out.count - 1] = .hashData(have + more)
            } else {
                out.append(message)
            }
        }
        return out
    }
}
