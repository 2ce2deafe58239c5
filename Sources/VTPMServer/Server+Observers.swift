import Logging
import TPMWire
import _VTPMPosix

// Control connections beyond the one being served (QEMU's, for the life of the VM). swtpm leaves them
// in the listen backlog until the first one closes; vtpmd accepts them, answers read-only queries on
// them at once (so an operator's `vtpmctl identity` reaches a running VM), and parks a connection at its
// first other command until the served connection closes, when it is served next, in order of
// arrival: swtpm_ioctl and QEMU see swtpm's behaviour. Peers are ``ControlConnection``s too; what they
// sent waits in their decoder.

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
        self.control != nil && self.controlListener >= 0 && self.controlPeers.count < Self.maximumControlPeers
    }

    func acceptControlPeer() {
        guard let fd = try? Socket.accept(self.controlListener) else { return }
        self.controlPeers.append(ControlConnection(fd: fd, maximumBlobSize: self.configuration.maximumBlobSize))
        // A descriptor number closed earlier in this pass may come back: stale poll results must not apply.
        self.connectionEpoch += 1
        self.logger.debug(
            "control: another connection while one is served",
            metadata: ["peers": "\(self.controlPeers.count)"]
        )
    }

    /// Reads what a peer sent and answers its complete read-only queries; parks it at another command. A parked
    /// peer that hung up is dropped.
    func serveControlPeer(_ fd: Int32, _ events: PollEvents) {
        guard let index = self.controlPeers.firstIndex(where: { $0.fd == fd }) else { return }
        let peer = self.controlPeers[index]
        if peer.parked {
            if !events.intersection([.hangup, .error, .invalid]).isEmpty {
                self.logger.debug("control: a waiting connection hung up")
                self.dropControlPeer(at: index)
            }
            return
        }
        let received: (bytes: [UInt8], fds: [Int32])
        do {
            received = try Socket.receive(fd, max: Self.firstControlRead)
        } catch {
            self.dropControlPeer(at: index)
            return
        }
        guard !received.bytes.isEmpty else {
            received.fds.forEach(closeDescriptor)
            self.dropControlPeer(at: index)
            return
        }
        let now = ProcessControl.monotonicNanoseconds()
        self.receiveControl(received.bytes, descriptors: received.fds, on: peer, now: now)
        while let code = peer.decoder.nextCode {
            guard Self.isReadOnly(code) else {
                peer.parked = true
                return
            }
            guard let actions = self.stepControl(peer, now: now) else { return }
            for case .reply(let reply) in actions {
                // Never wait on a peer: one that does not read its replies is dropped when its buffer is full.
                guard (try? Socket.sendAvailable(fd, reply, from: 0)) == reply.count else {
                    self.logger.warning("control: a query client does not read its replies; closing it")
                    self.dropControlPeer(at: index)
                    return
                }
            }
        }
    }

    /// Closes peers whose read-only query did not arrive completely within the control deadline.
    func expireControlPeers(now: UInt64) {
        for index in self.controlPeers.indices.reversed() {
            let peer = self.controlPeers[index]
            if !peer.parked, let deadline = self.controlDeadline(peer), now >= deadline {
                self.logger.warning(
                    "control: incomplete query (\(peer.decoder.bufferedCount) bytes) at the deadline; closing"
                )
                self.dropControlPeer(at: index)
            }
        }
    }

    /// With no connection served, the first parked peer is served next, starting with what it sent (and the
    /// next one if that one closes at once), in order of arrival.
    func promoteControlPeer() {
        while self.control == nil, !self.shouldExit, let index = self.controlPeers.firstIndex(where: \.parked) {
            let peer = self.controlPeers.remove(at: index)
            peer.parked = false
            // Its deadline runs from now: it waited for its turn, not for its own bytes.
            peer.messageStarted = ProcessControl.monotonicNanoseconds()
            self.control = peer
            self.connectionEpoch += 1
            self.serveControlMessages()
        }
    }

    func dropControlPeer(at index: Int) {
        self.controlPeers[index].close()
        self.controlPeers.remove(at: index)
        self.connectionEpoch += 1
    }
}
