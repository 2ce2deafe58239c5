import Logging
import TPMWire
import _VTPMPosix

/// Control connections beyond the one being served (QEMU's, for the life of the VM). swtpm leaves them
/// in the listen backlog until the first one closes; vtpmd accepts them, answers read-only queries on
/// them at once (so an operator's `vtpmctl identity` reaches a running VM), and parks a connection at its
/// first other command until the served connection closes, when it is served next, in order of
/// arrival: swtpm_ioctl and QEMU see swtpm's behaviour.
struct ControlPeer {
    let fd: Int32
    /// Bytes received and not yet answered.
    var buffer: [UInt8] = []
    /// Descriptors that came with them (SET_DATAFD), handed on when the peer is served.
    var descriptors: [Int32] = []
    /// When the first byte of the unanswered message arrived (for the control deadline).
    var since: UInt64 = 0
    /// Waiting to be served (its buffer starts with a command that is not read-only).
    var parked = false
}

extension Server {
    /// At most this many extra control connections are held; others wait in the listen backlog.
    static let maximumControlPeers = 8

    /// Commands a peer may have answered while another connection is being served: they read state and
    /// change nothing.
    static func isReadOnly(_ code: ControlCode) -> Bool {
        switch code {
        case .getCapability, .getInfo, .getConfig, .getTPMEstablished, .vtpmGetIdentity: true
        default: false
        }
    }

    /// Whether the listener should be polled for another peer while a connection is served.
    var acceptsControlPeers: Bool {
        self.controlConnection >= 0 && self.controlListener >= 0 && self.controlPeers.count < Self.maximumControlPeers
    }

    /// The poll timeout that ends the earliest peer's control deadline (-1: none pending).
    func controlPeerTimeout() -> Int32 {
        let now = ProcessControl.monotonicNanoseconds()
        var timeout: Int32 = -1
        for peer in self.controlPeers where !peer.parked && !peer.buffer.isEmpty {
            let end = peer.since + Self.controlDeadlineNanoseconds
            let ms = end > now ? Int32(min((end - now) / 1_000_000 + 1, 60_000)) : 0
            timeout = timeout < 0 ? ms : min(timeout, ms)
        }
        return timeout
    }

    func acceptControlPeer() {
        guard let fd = try? Socket.accept(self.controlListener) else { return }
        self.controlPeers.append(ControlPeer(fd: fd))
        // A descriptor number closed earlier in this pass may come back: stale poll results must not apply.
        self.connectionEpoch += 1
        self.logger.debug(
            "control: another connection while one is served",
            metadata: ["peers": "\(self.controlPeers.count)"]
        )
    }

    /// Reads what a peer sent and answers its complete read-only queries; parks it at another command.
    func serveControlPeer(_ fd: Int32) {
        guard let index = self.controlPeers.firstIndex(where: { $0.fd == fd }) else { return }
        let more: [UInt8]
        do {
            let received = try Socket.receive(fd, max: Self.firstControlRead)
            more = received.bytes
            self.controlPeers[index].descriptors += received.fds
        } catch {
            self.dropControlPeer(at: index)
            return
        }
        guard !more.isEmpty else {
            self.dropControlPeer(at: index)
            return
        }
        if self.controlPeers[index].buffer.isEmpty {
            self.controlPeers[index].since = ProcessControl.monotonicNanoseconds()
        }
        self.controlPeers[index].buffer.append(contentsOf: more)
        while self.controlPeers[index].buffer.count >= 4 {
            let buffer = self.controlPeers[index].buffer
            let code = ControlCode(rawValue: buffer.readBigEndianUInt32(at: 0))
            guard Self.isReadOnly(code), let rule = code.payloadRule else {
                self.controlPeers[index].parked = true
                return
            }
            let size: Int
            switch rule {
            case .exactly(let n), .atLeast(let n): size = 4 + n
            default:
                self.controlPeers[index].parked = true
                return
            }
            guard buffer.count >= size else { return }
            let reply: [UInt8]
            do {
                let request = try ControlRequest(code: code, payload: Array(buffer[4..<size]))
                reply = self.handle(request, passedDescriptor: nil)
            } catch {
                reply = self.errorReply(code, ControlResult.badParameter)
            }
            self.controlPeers[index].buffer.removeFirst(size)
            self.controlPeers[index].since = ProcessControl.monotonicNanoseconds()
            // Descriptors belong to a command that passes one (SET_DATAFD); with nothing left to serve, those
            // that came with queries are closed.
            if self.controlPeers[index].buffer.isEmpty {
                for passed in self.controlPeers[index].descriptors { closeDescriptor(passed) }
                self.controlPeers[index].descriptors = []
            }
            // Never wait on a peer: one that does not read its replies is dropped when its buffer is full.
            guard (try? Socket.sendWithoutWaiting(fd, reply)) == true else {
                self.logger.warning("control: a query client does not read its replies; closing it")
                self.dropControlPeer(at: index)
                return
            }
        }
    }

    /// Closes peers whose read-only query did not arrive completely within the control deadline.
    func expireControlPeers() {
        let now = ProcessControl.monotonicNanoseconds()
        for index in self.controlPeers.indices.reversed() {
            let peer = self.controlPeers[index]
            if !peer.parked && !peer.buffer.isEmpty && now >= peer.since + Self.controlDeadlineNanoseconds {
                self.logger.warning("control: incomplete query (\(peer.buffer.count) bytes) at the deadline; closing")
                self.dropControlPeer(at: index)
            }
        }
    }

    /// With no connection served, the first parked peer is served next, starting with what it sent.
    func promoteControlPeer() {
        guard self.controlConnection < 0, let index = self.controlPeers.firstIndex(where: \.parked) else { return }
        let peer = self.controlPeers.remove(at: index)
        self.controlConnection = peer.fd
        self.connectionEpoch += 1
        self.serveControl(received: (peer.buffer, peer.descriptors))
    }

    func dropControlPeer(at index: Int) {
        closeDescriptor(self.controlPeers[index].fd)
        for fd in self.controlPeers[index].descriptors { closeDescriptor(fd) }
        self.controlPeers.remove(at: index)
        self.connectionEpoch += 1
    }
}
