import TPMWire
import _VTPMPosix

/// Where the control channel listens: `--unix PATH` or `--tcp HOST:PORT`.
enum Endpoint: Hashable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)

    /// Parses `HOST:PORT` (HOST an IPv4 address or `localhost`).
    static func tcp(parsing text: String) -> Endpoint? {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        guard let port = UInt16(text[text.index(after: colon)...]), port > 0 else { return nil }
        if host == "localhost" || host.isEmpty { host = "127.0.0.1" }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts.allSatisfy({ UInt8($0) != nil }) else { return nil }
        return .tcp(host: host, port: port)
    }

    var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): "tcp:\(host):\(port)"
        }
    }
}

/// One connection to a control channel (vtpmd or swtpm). Commands are sent one at a time (the
/// protocol has no pipelining) and every read has a deadline.
final class ControlConnection {
    let endpoint: Endpoint
    let timeoutMilliseconds: Int
    private let fd: Int32

    init(_ endpoint: Endpoint, timeoutMilliseconds: Int) throws(VTPMCtlError) {
        self.endpoint = endpoint
        self.timeoutMilliseconds = timeoutMilliseconds
        do {
            switch endpoint {
            case .unix(let path): self.fd = try Socket.connectUnix(path: path)
            case .tcp(let host, let port): self.fd = try Socket.connectTCP(host: host, port: port)
            }
        } catch {
            throw VTPMCtlError(.connection, "cannot connect to the control channel \(endpoint): \(error)")
        }
    }

    deinit { closeDescriptor(self.fd) }

    /// Sends one complete request.
    func send(_ bytes: [UInt8], for command: ControlCode) throws(VTPMCtlError) {
        do {
            try Socket.sendAll(self.fd, bytes)
        } catch {
            throw VTPMCtlError(.connection, "\(command): cannot send the request to \(self.endpoint): \(error)")
        }
    }

    /// Reads exactly `count` bytes of the reply to `command`, within the timeout.
    func read(_ count: Int, of command: ControlCode, what: String = "reply") throws(VTPMCtlError) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        let clock = ContinuousClock()
        let deadline = clock.now + .milliseconds(self.timeoutMilliseconds)
        while bytes.count < count {
            let left = deadline - clock.now
            let leftMs = Int32(
                clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
            )
            guard leftMs > 0 else {
                throw VTPMCtlError(
                    .timeout,
                    "\(command): no complete \(what) from \(self.endpoint) within \(self.timeoutMilliseconds) ms "
                        + "(\(bytes.count) of \(count) bytes)"
                )
            }
            let more: [UInt8]
            do {
                guard try waitReadable(self.fd, timeoutMilliseconds: leftMs) else { continue }
                more = try Socket.read(self.fd, max: min(count - bytes.count, 1 << 16))
            } catch {
                throw VTPMCtlError(.connection, "\(command): reading the \(what) failed: \(error)")
            }
            guard !more.isEmpty else {
                throw VTPMCtlError(
                    .closed,
                    "\(command): \(self.endpoint) closed the connection after \(bytes.count) of \(count) bytes "
                        + "of the \(what)"
                )
            }
            bytes.append(contentsOf: more)
        }
        return bytes
    }

    /// Reads a be32 of the reply.
    func readUInt32(of command: ControlCode, what: String) throws(VTPMCtlError) -> UInt32 {
        try self.read(4, of: command, what: what).readBigEndianUInt32(at: 0)
    }

    /// Sends `request` and reads the 4-byte result that starts every reply (error replies are only
    /// these 4 bytes in swtpm; the caller reads the rest of a success reply).
    func begin(_ request: ControlRequest) throws(VTPMCtlError) -> UInt32 {
        let command = request.code
        try self.send(request.encoded, for: command)
        return try self.readUInt32(of: command, what: "result")
    }

    /// Sends `request`, whose whole reply is the 4-byte result, and fails on a non-zero result.
    func simple(_ request: ControlRequest, hints: [UInt32: String] = [:]) throws(VTPMCtlError) {
        let result = try self.begin(request)
        guard result == ControlResult.success else {
            throw VTPMCtlError.failed(request.code, result, hint: hints[result])
        }
    }
}

extension ControlRequest {
    /// The request's command code (the first four bytes of its wire form).
    var code: ControlCode { ControlCode(rawValue: self.encoded.readBigEndianUInt32(at: 0)) }
}
