import Dispatch
public import EndorsementCA
import Foundation
public import Logging
public import Registry
import Synchronization
import TPMWire
import VMIdentity
import _VTPMPosix

/// The separated CA signer: the only process that reads the host CA's private key. It issues an EK
/// certificate only for a request that matches what the registry records for that VM: an
/// ``EndorsementKeyRecord`` for the named vm-id, generation and algorithm, with this key's digest and this
/// origin, of a generation not older than the VM's recorded one. Every issuance and every refusal is logged
/// with the requesting process.
///
/// ``handle(_:peer:)`` is the policy, without sockets; ``serve(listener:)`` answers each connection on a thread
/// of its own (at most ``maximumConnections`` at once, two per process), each cut off
/// ``connectionTimeoutMilliseconds`` after it was accepted.
public final class CASignerService: Sendable {
    let ca: HostCA
    let registry: any RegistryStore
    let logger: Logger
    /// How long one connection may take to send its request and read the answer.
    public let connectionTimeoutMilliseconds: Int

    /// Creates a signer.
    /// - Parameters:
    ///   - ca: The host CA (its private key).
    ///   - registry: The registry the requests are checked against.
    ///   - logger: Where issuances and refusals go.
    ///   - connectionTimeoutMilliseconds: How long one connection may take.
    public init(ca: HostCA, registry: any RegistryStore, logger: Logger, connectionTimeoutMilliseconds: Int = 2000) {
        self.ca = ca
        self.registry = registry
        self.logger = logger
        self.connectionTimeoutMilliseconds = connectionTimeoutMilliseconds
    }

    /// Answers one request.
    /// - Parameters:
    ///   - request: The request.
    ///   - peer: Who asked, for the log (`pid 123 uid 59`).
    public func handle(_ request: SignerMessage.Request, peer: String) -> SignerMessage.Response {
        switch request {
        case .caCertificate:
            return SignerMessage.Response(
                status: .issued,
                message: "CA certificate",
                certificate: self.ca.certificateDER
            )
        case .issue(let vmID, let generation, let parent, let publicKeyDER):
            let what = "EK certificate for \(vmID) generation \(generation)"
            let key: EKPublicKey
            let digest: [UInt8]
            do {
                key = try EKPublicKey(subjectPublicKeyInfoDER: publicKeyDER)
                digest = try key.digest()
            } catch {
                return self.refuse("\(what): \(error)", peer: peer)
            }
            let algorithm: EndorsementKeyRecord.Algorithm = key.isRSA ? .rsa : .ecc
            let wanted = EndorsementKeyRecord(
                vmID: vmID,
                generation: generation,
                algorithm: algorithm,
                publicKeyDigest: digest,
                parentVMID: parent?.vmID,
                parentGeneration: parent?.generation
            )
            let recorded: EndorsementKeyRecord?
            let current: UInt64?
            do {
                recorded = try self.registry.endorsementKey(vmID: vmID, generation: generation, algorithm: algorithm)
                current = try self.registry.currentGeneration(vmID: vmID)?.generation
            } catch {
                self.logger.error("\(what) (\(algorithm.rawValue)) not issued to \(peer): registry: \(error)")
                return SignerMessage.Response(status: .failed, message: "registry \(self.registry.location): \(error)")
            }
            guard let recorded else {
                return self.refuse(
                    "\(what): the registry records no \(algorithm.rawValue) EK for this VM and generation",
                    peer: peer
                )
            }
            if let current, generation < current {
                return self.refuse("\(what): an older generation (the VM is at generation \(current))", peer: peer)
            }
            guard recorded.matches(wanted) else {
                let detail =
                    recorded.publicKeyDigest != digest
                    ? "the key is not the \(algorithm.rawValue) EK the registry records"
                    : "the origin is not the one the registry records"
                return self.refuse("\(what): \(detail)", peer: peer)
            }
            do {
                let request = EKCertificateRequest(
                    publicKey: key,
                    vmID: vmID,
                    generation: generation,
                    parentVMID: parent?.vmID,
                    parentGeneration: parent?.generation
                )
                let der = try self.ca.issueEKCertificate(request)
                self.logger.notice(
                    "issued \(what) (\(algorithm.rawValue), key \(Array(digest.prefix(8)).hexString), serial \(request.serialNumber.hexString)) to \(peer)"
                )
                return SignerMessage.Response(status: .issued, message: "issued", certificate: der)
            } catch {
                self.logger.error("\(what) not issued to \(peer): \(error)")
                return SignerMessage.Response(status: .failed, message: "\(error)")
            }
        }
    }

    private func refuse(_ reason: String, peer: String) -> SignerMessage.Response {
        self.logger.warning("refused \(reason) (asked by \(peer))")
        return SignerMessage.Response(status: .refused, message: reason)
    }

    /// How many connections are answered at once; a further one waits in the listen backlog.
    public static let maximumConnections = 16
    /// How many of them one process may hold.
    public static let maximumConnectionsPerProcess = 2

    /// Serves `listener` until accepting fails. Each connection is answered on a thread of its own and must
    /// deliver its request within ``connectionTimeoutMilliseconds`` of being accepted, however it paces its
    /// bytes; one process holds at most ``maximumConnectionsPerProcess`` of the ``maximumConnections``.
    /// - Throws: `PosixError` when accepting fails.
    public func serve(listener: Int32) throws -> Never {
        let slots = DispatchSemaphore(value: Self.maximumConnections)
        let perProcess = Mutex<[Int32: Int]>([:])
        while true {
            slots.wait()
            let connection: Int32
            do { connection = try Socket.accept(listener) } catch {
                slots.signal()
                throw error
            }
            let credentials = Socket.peerCredentials(connection)
            let pid = credentials?.pid ?? 0
            let admitted = perProcess.withLock { counts in
                guard counts[pid, default: 0] < Self.maximumConnectionsPerProcess else { return false }
                counts[pid, default: 0] += 1
                return true
            }
            guard admitted else {
                self.logger.warning(
                    "connection from pid \(pid) refused: it holds \(Self.maximumConnectionsPerProcess) already"
                )
                closeDescriptor(connection)
                slots.signal()
                continue
            }
            let peer = credentials.map { "pid \($0.pid) uid \($0.uid) gid \($0.gid)" } ?? "an unknown peer"
            let thread = Thread {
                self.answer(connection, peer: peer)
                closeDescriptor(connection)
                perProcess.withLock { counts in
                    counts[pid, default: 1] -= 1
                    if counts[pid] == 0 { counts[pid] = nil }
                }
                slots.signal()
            }
            thread.start()
        }
    }

    /// Reads one request from `connection` (of `peer`, for the log) and writes the answer.
    func answer(_ connection: Int32, peer: String) {
        let deadline = SignerMessage.deadline(in: self.connectionTimeoutMilliseconds)
        do {
            try Socket.setTimeouts(connection, milliseconds: self.connectionTimeoutMilliseconds)
            guard let bytes = try SignerMessage.receive(connection, deadline: deadline) else { return }
            let response: SignerMessage.Response
            do {
                response = self.handle(try SignerMessage.Request(decoding: bytes), peer: peer)
            } catch {
                response = self.refuse("a malformed request: \(error)", peer: peer)
            }
            try SignerMessage.send(connection, response.encoded())
        } catch {
            self.logger.warning("connection from \(peer) dropped: \(error)")
        }
    }
}
