public import EndorsementCA
import TPMWire
public import VMIdentity
import _VTPMPosix

/// The separated CA signer's protocol, on a UNIX stream socket: one request, one response, then the
/// connection closes. Each message is a 4-byte big-endian length and that many bytes (at most
/// ``maximumLength``); every field is bounds-checked when read.
///
/// Request: version (1 byte, 1), operation (1 byte: 1 = issue an EK certificate, 2 = the CA certificate);
/// for an issue: vm-id (2-byte length + UTF-8), generation (8 bytes), a parent flag (1 byte) and, when 1,
/// the parent's vm-id and generation, then the EK's DER SubjectPublicKeyInfo (2-byte length + bytes).
/// Response: status (1 byte: 0 issued, 1 refused, 2 failed), message (2-byte length + UTF-8), certificate
/// (2-byte length + DER, empty unless issued).
public enum SignerMessage {
    /// The largest message either side accepts.
    public static let maximumLength = 16 * 1024

    /// What a client asks.
    public enum Request: Hashable, Sendable {
        /// An EK certificate for this VM, generation and key.
        case issue(vmID: VMID, generation: UInt64, parent: (vmID: VMID, generation: UInt64)?, publicKey: [UInt8])
        /// The CA's certificate.
        case caCertificate

        public static func == (lhs: Request, rhs: Request) -> Bool { lhs.encoded() == rhs.encoded() }
        public func hash(into hasher: inout Hasher) { hasher.combine(self.encoded()) }

        /// The request's bytes, without the length prefix.
        public func encoded() -> [UInt8] {
            var w = ByteWriter()
            w.write(UInt8(1))
            switch self {
            case .caCertificate:
                w.write(UInt8(2))
            case .issue(let vmID, let generation, let parent, let publicKey):
                w.write(UInt8(1))
                w.writeSized16(Array(vmID.description.utf8))
                w.write(generation)
                if let parent {
                    w.write(UInt8(1))
                    w.writeSized16(Array(parent.vmID.description.utf8))
                    w.write(parent.generation)
                } else {
                    w.write(UInt8(0))
                }
                w.writeSized16(publicKey)
            }
            return w.bytes
        }

        /// Reads a request.
        /// - Throws: ``EndorsementCAError`` (`invalidRequest`) naming the field that does not parse.
        public init(decoding bytes: [UInt8]) throws {
            var r = ByteReader(bytes)
            do {
                let version = try r.readUInt8()
                guard version == 1 else { throw EndorsementCAError(.invalidRequest, "request version \(version)") }
                switch try r.readUInt8() {
                case 2:
                    self = .caCertificate
                case 1:
                    let vmID = try Self.vmID(try r.readSized16(max: 64), "vm-id")
                    let generation = try r.readUInt64()
                    var parent: (vmID: VMID, generation: UInt64)? = nil
                    switch try r.readUInt8() {
                    case 0: break
                    case 1: parent = (try Self.vmID(try r.readSized16(max: 64), "parent vm-id"), try r.readUInt64())
                    case let flag: throw EndorsementCAError(.invalidRequest, "parent flag \(flag)")
                    }
                    let publicKey = try r.readSized16(max: 2048)
                    self = .issue(vmID: vmID, generation: generation, parent: parent, publicKey: publicKey)
                case let operation:
                    throw EndorsementCAError(.invalidRequest, "unknown operation \(operation)")
                }
            } catch let error as EndorsementCAError {
                throw error
            } catch {
                throw EndorsementCAError(.invalidRequest, "truncated request: \(error)")
            }
            guard r.remaining == 0 else {
                throw EndorsementCAError(.invalidRequest, "\(r.remaining) bytes after the request")
            }
        }

        private static func vmID(_ bytes: [UInt8], _ field: String) throws -> VMID {
            guard let text = String(validating: bytes, as: UTF8.self), let vm = VMID(text) else {
                throw EndorsementCAError(.invalidRequest, "\(field) is not a UUID")
            }
            return vm
        }
    }

    /// What the signer answers.
    public struct Response: Hashable, Sendable {
        public enum Status: UInt8, Sendable {
            case issued = 0
            case refused = 1
            case failed = 2
        }
        public var status: Status
        public var message: String
        /// The certificate (DER), empty unless issued.
        public var certificate: [UInt8]

        public init(status: Status, message: String, certificate: [UInt8] = []) {
            self.status = status
            self.message = message
            self.certificate = certificate
        }

        /// The response's bytes, without the length prefix.
        public func encoded() -> [UInt8] {
            var w = ByteWriter()
            w.write(self.status.rawValue)
            w.writeSized16(Array(self.message.utf8.prefix(4096)))
            w.writeSized16(self.certificate)
            return w.bytes
        }

        /// Reads a response.
        /// - Throws: ``EndorsementCAError`` (`unavailable`) for bytes out of protocol.
        public init(decoding bytes: [UInt8]) throws {
            var r = ByteReader(bytes)
            do {
                guard let status = Status(rawValue: try r.readUInt8()) else {
                    throw EndorsementCAError(.unavailable, "the CA signer answered an unknown status")
                }
                self.status = status
                self.message = String(decoding: try r.readSized16(max: 4096), as: UTF8.self)
                self.certificate = try r.readSized16(max: Int(UInt16.max))
            } catch let error as EndorsementCAError {
                throw error
            } catch {
                throw EndorsementCAError(.unavailable, "the CA signer's answer is truncated")
            }
            guard r.remaining == 0 else { throw EndorsementCAError(.unavailable, "bytes after the CA signer's answer") }
        }
    }

    /// Sends one length-prefixed message.
    static func send(_ fd: Int32, _ payload: [UInt8]) throws(PosixError) {
        var w = ByteWriter(capacity: payload.count + 4)
        w.write(UInt32(payload.count))
        w.write(bytes: payload)
        try Socket.sendAll(fd, w.bytes)
    }

    /// Receives one length-prefixed message whole before `deadline` (monotonic nanoseconds): a peer that
    /// sends slowly is cut off there, however it paces its bytes. Nil when the peer closed before its first
    /// byte.
    /// - Throws: ``EndorsementCAError`` for a bad length, a message cut short or the deadline; `PosixError`.
    static func receive(_ fd: Int32, deadline: UInt64) throws -> [UInt8]? {
        guard let header = try self.readExactly(fd, 4, allowEmpty: true, deadline: deadline) else { return nil }
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        guard length <= self.maximumLength else {
            throw EndorsementCAError(.invalidRequest, "message of \(length) bytes (at most \(self.maximumLength))")
        }
        guard let body = try self.readExactly(fd, length, allowEmpty: length == 0, deadline: deadline) else {
            return []
        }
        return body
    }

    /// Monotonic nanoseconds `milliseconds` from now.
    static func deadline(in milliseconds: Int) -> UInt64 {
        ProcessControl.monotonicNanoseconds() + UInt64(max(0, milliseconds)) * 1_000_000
    }

    private static func readExactly(_ fd: Int32, _ count: Int, allowEmpty: Bool, deadline: UInt64) throws -> [UInt8]? {
        var buffer: [UInt8] = []
        guard readUntilFilled(&buffer, from: fd, to: count, deadline: deadline) else {
            let timedOut = ProcessControl.monotonicNanoseconds() >= deadline
            if buffer.isEmpty && allowEmpty && !timedOut { return nil }
            throw timedOut
                ? EndorsementCAError(.unavailable, "no whole message within the deadline (\(buffer.count) bytes)")
                : EndorsementCAError(.invalidRequest, "message cut short after \(buffer.count) of \(count) bytes")
        }
        return buffer
    }
}
