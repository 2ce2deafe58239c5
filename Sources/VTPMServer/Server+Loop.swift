import Logging
import Registry
import TPMWire
import _VTPMPosix

// The poll loop: I/O only. It reads what a peer sent into that peer's decoder (or, on the data channel,
// into the command buffer), asks the protocol core what to do (Server+Control, Server+Data), and carries
// out the actions it returns. No peer is ever waited on: partial messages stay in their decoders until
// more bytes come or their deadline passes, and replies a peer does not read wait in its outbox.

extension Server {
    /// How long a peer may leave replies unread before it is closed.
    static let replyDeadlineNanoseconds: UInt64 = 10_000_000_000

    /// Serves until SHUTDOWN, a termination signal, or (with --terminate) loss of the data
    /// connection. Returns the process exit status.
    public func run() -> Int32 {
        // After --runas: the registry's connections are made as the user the process runs as.
        self.identity?.writer.resume()
        FaultInjection.startServing()
        if let channel = self.cuseChannel {
            _ = self.runCUSE(channel)
        } else {
            self.serveChannels()
        }
        self.shutdownTPM()
        self.identity?.saveCheckpoint()
        // A clean stop: the registry learns the newest state committed (a later restore of an older
        // copy is then a rollback).
        self.identity?.recordStateWrite()
        if let identity = self.identity { identity.writer.stop(timeout: identity.registry.timeout) }
        self.cleanup()
        return self.exitStatus
    }

    /// The poll loop over the sockets (and a chardev's descriptor).
    private func serveChannels() {
        while !self.shouldExit {
            self.promoteControlPeer()
            if self.shouldExit { break }
            var fds: [(fd: Int32, events: PollEvents)] = [(self.signalDescriptor, .readable)]
            if let control = self.control {
                fds.append((control.fd, control.outbox.isEmpty ? .readable : .writable))
                if self.acceptsControlPeers { fds.append((self.controlListener, .readable)) }
            } else if self.controlListener >= 0 {
                fds.append((self.controlListener, .readable))
            }
            // A parked peer is not read (its command waits its turn), but its hang-up is seen: a client that gave
            // up frees its place.
            for peer in self.controlPeers { fds.append((peer.fd, peer.parked ? PollEvents() : .readable)) }
            if self.dataConnection >= 0 {
                fds.append((self.dataConnection, self.dataOutbox.isEmpty ? .readable : .writable))
            } else if self.dataListener >= 0 {
                fds.append((self.dataListener, .readable))
            }
            // Registry bookkeeping that is due (the write generation after an INIT) waits until nothing
            // else is: it never delays a reply.
            let idleWork = self.identity?.stateWriteDue == true
            let ready: [PollEvents]
            do {
                ready = try pollDescriptors(fds, timeoutMilliseconds: idleWork ? 0 : self.pollTimeout())
            } catch {
                self.logger.error("poll failed: \(error)")
                self.exitStatus = 1
                return
            }
            if idleWork && ready.allSatisfy(\.isEmpty) {
                self.identity?.recordStateWrite()
                continue
            }
            let epoch = self.connectionEpoch
            for (index, entry) in fds.enumerated() where !ready[index].isEmpty {
                if self.shouldExit || self.connectionEpoch != epoch { break }
                self.dispatch(entry.fd, ready[index])
            }
            self.expireDeadlines()
        }
    }

    private func dispatch(_ fd: Int32, _ events: PollEvents) {
        switch fd {
        case self.signalDescriptor:
            if let sig = ProcessControl.readSignal(self.signalDescriptor) {
                self.logger.info("terminating on signal \(sig)")
                self.shouldExit = true
            }
        case self.control?.fd:
            self.serveControlConnection(events)
        case self.controlListener:
            if self.control != nil {
                self.acceptControlPeer()
            } else if let fd = try? Socket.accept(self.controlListener) {
                self.control = ControlConnection(fd: fd, maximumBlobSize: self.configuration.maximumBlobSize)
                self.connectionEpoch += 1
            }
        case self.dataConnection:
            self.serveDataConnection(events)
        case self.dataListener:
            if let fd = try? Socket.accept(self.dataListener) {
                self.dataConnection = fd
                self.connectionEpoch += 1
            }
        default:
            self.serveControlPeer(fd, events)
        }
    }

    /// The earliest deadline of any connection, as a poll timeout (-1: none).
    func pollTimeout() -> Int32 {
        var deadlines: [UInt64] = []
        if let control = self.control {
            if let deadline = self.controlDeadline(control) { deadlines.append(deadline) }
            if !control.outbox.isEmpty { deadlines.append(control.outbox.since + Self.replyDeadlineNanoseconds) }
        }
        for peer in self.controlPeers where !peer.parked {
            if let deadline = self.controlDeadline(peer) { deadlines.append(deadline) }
        }
        if let deadline = self.dataDeadline { deadlines.append(deadline) }
        if !self.dataOutbox.isEmpty { deadlines.append(self.dataOutbox.since + Self.replyDeadlineNanoseconds) }
        guard let earliest = deadlines.min() else { return -1 }
        let now = ProcessControl.monotonicNanoseconds()
        return earliest > now ? Int32(min((earliest - now) / 1_000_000 + 1, 60_000)) : 0
    }

    /// Closes or answers whatever missed its deadline.
    private func expireDeadlines() {
        let now = ProcessControl.monotonicNanoseconds()
        if let control = self.control {
            if !control.outbox.isEmpty && now >= control.outbox.since + Self.replyDeadlineNanoseconds {
                self.logger.warning("control: the client does not read its replies; closing it")
                self.closeControlConnection()
            } else if let deadline = self.controlDeadline(control), now >= deadline {
                self.perform(self.expireControl(control), on: control)
            }
        }
        self.expireControlPeers(now: now)
        if self.dataConnection >= 0 {
            if !self.dataOutbox.isEmpty && now >= self.dataOutbox.since + Self.replyDeadlineNanoseconds {
                self.closeDataConnection(byPeer: true, reason: "responses not read")
            } else if let deadline = self.dataDeadline, now >= deadline {
                self.performData(self.expireData())
            }
        }
    }

    // MARK: Control connection

    private func serveControlConnection(_ events: PollEvents) {
        guard let control = self.control else { return }
        if !control.outbox.isEmpty {
            do {
                try control.outbox.flush(to: control.fd)
            } catch {
                self.logger.debug("control: reply failed: \(error)")
                self.closeControlConnection()
                return
            }
            if control.outbox.isEmpty {
                // The time spent waiting for the peer to read does not count against its next message.
                control.messageStarted = ProcessControl.monotonicNanoseconds()
                self.serveControlMessages()
            }
            return
        }
        let received: (bytes: [UInt8], fds: [Int32])
        do {
            received = try Socket.receive(control.fd, max: Self.firstControlRead)
        } catch {
            self.closeControlConnection()
            return
        }
        guard !received.bytes.isEmpty else {
            received.fds.forEach(closeDescriptor)
            self.closeControlConnection()
            return
        }
        self.receiveControl(
            received.bytes,
            descriptors: received.fds,
            on: control,
            now: ProcessControl.monotonicNanoseconds()
        )
        self.serveControlMessages()
    }

    /// Executes the served connection's complete messages in order, while its replies go out.
    func serveControlMessages() {
        while let control = self.control, control.outbox.isEmpty, !self.shouldExit,
            let actions = self.stepControl(control, now: ProcessControl.monotonicNanoseconds())
        {
            self.perform(actions, on: control)
        }
    }

    /// Carries out the core's actions for the served connection. A reply that cannot be sent closes the
    /// connection, but what the command did stands: a data descriptor it took is adopted, SHUTDOWN still ends
    /// the process.
    private func perform(_ actions: [ConnectionAction], on control: ControlConnection) {
        for action in actions {
            let current = self.control === control
            switch action {
            case .reply(let bytes):
                guard current else { continue }
                do {
                    try control.outbox.send(bytes, to: control.fd, now: ProcessControl.monotonicNanoseconds())
                } catch {
                    self.logger.debug("control: reply failed: \(error)")
                    self.closeControlConnection()
                }
            case .adoptDataDescriptor(let fd):
                self.dataConnection = fd
                self.dataFromControl = true
                self.connectionEpoch += 1
            case .close(let reason):
                guard current else { continue }
                self.logger.debug("control connection closed", metadata: ["reason": "\(reason)"])
                control.outbox.drain(to: control.fd, timeoutMilliseconds: 100)
                self.closeControlConnection()
            case .exit:
                if current { control.outbox.drain(to: control.fd, timeoutMilliseconds: 1000) }
                self.shouldExit = true
            }
        }
    }

    // MARK: Data connection

    private func serveDataConnection(_ events: PollEvents) {
        let fd = self.dataConnection
        if !self.dataOutbox.isEmpty {
            do {
                try self.dataOutbox.flush(to: fd)
            } catch {
                self.closeDataConnection(byPeer: true, reason: "write failed: \(error)")
            }
            return
        }
        let limit = self.dataFramer.readLimit(in: self.readBuffer)
        let n: Int
        do {
            n = try Socket.read(fd, into: &self.readBuffer, at: self.dataFramer.filled, count: limit)
        } catch {
            self.closeDataConnection(byPeer: true, reason: "read failed: \(error)")
            return
        }
        if n == 0 {
            self.closeDataConnection(byPeer: true, reason: "end of stream")
            return
        }
        self.performData(self.receivedData(n, now: ProcessControl.monotonicNanoseconds()))
    }

    private func performData(_ actions: [ConnectionAction]) {
        let fd = self.dataConnection
        for action in actions {
            guard self.dataConnection == fd, fd >= 0 else { return }
            switch action {
            case .reply(let bytes):
                do {
                    try self.dataOutbox.send(bytes, to: fd, now: ProcessControl.monotonicNanoseconds())
                } catch {
                    self.closeDataConnection(byPeer: true, reason: "write failed: \(error)")
                }
            case .close(let reason):
                self.dataOutbox.drain(to: fd, timeoutMilliseconds: 100)
                self.closeDataConnection(byPeer: false, reason: reason)
            case .adoptDataDescriptor, .exit:
                preconditionFailure("the data channel's core returned a control action")
            }
        }
    }
}
