public import EndorsementCA
import VMIdentity
import _VTPMPosix

/// The client of the separated CA signer (``CASignerService``), an ``EKCertificateIssuer``: vtpmd and
/// `vtpm-state` use it when `ca-signer` names the signer's socket, and then never read the CA key. The
/// EK must be recorded in the registry before its certificate is asked for.
public struct CASignerClient: EKCertificateIssuer {
    /// The signer's UNIX socket.
    public var socketPath: String
    /// How long one request may take, connecting included.
    public var timeoutMilliseconds: Int

    public init(socketPath: String, timeoutMilliseconds: Int = 5000) {
        self.socketPath = socketPath
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    public func issueEKCertificate(_ request: EKCertificateRequest) throws -> [UInt8] {
        let response = try self.exchange(
            .issue(
                vmID: request.vmID,
                generation: request.generation,
                parent: request.parentVMID.map { ($0, request.parentGeneration ?? 0) },
                publicKey: try request.publicKey.subjectPublicKeyInfoDER()
            )
        )
        switch response.status {
        case .issued: return response.certificate
        case .refused: throw EndorsementCAError(.refused, "CA signer \(self.socketPath) refused: \(response.message)")
        case .failed: throw EndorsementCAError(.signing, "CA signer \(self.socketPath) failed: \(response.message)")
        }
    }

    /// The CA certificate (DER), from the signer.
    /// - Throws: ``EndorsementCAError`` (`unavailable`).
    public func caCertificate() throws -> [UInt8] {
        let response = try self.exchange(.caCertificate)
        guard response.status == .issued, !response.certificate.isEmpty else {
            throw EndorsementCAError(.unavailable, "CA signer \(self.socketPath): \(response.message)")
        }
        return response.certificate
    }

    /// Sends `request` and reads the answer.
    /// - Throws: ``EndorsementCAError`` (`unavailable`) when the signer cannot be reached or answers out of
    ///   protocol.
    public func exchange(_ request: SignerMessage.Request) throws -> SignerMessage.Response {
        let deadline = SignerMessage.deadline(in: self.timeoutMilliseconds)
        let fd: Int32
        do {
            fd = try Socket.connectUnix(path: self.socketPath, timeoutMilliseconds: self.timeoutMilliseconds)
        } catch {
            throw EndorsementCAError(.unavailable, "cannot reach the CA signer: \(error)")
        }
        defer { closeDescriptor(fd) }
        do {
            try Socket.setTimeouts(fd, milliseconds: self.timeoutMilliseconds)
            try SignerMessage.send(fd, request.encoded())
            guard let bytes = try SignerMessage.receive(fd, deadline: deadline) else {
                throw EndorsementCAError(.unavailable, "CA signer \(self.socketPath) closed without answering")
            }
            return try SignerMessage.Response(decoding: bytes)
        } catch let error as EndorsementCAError {
            throw error
        } catch {
            throw EndorsementCAError(.unavailable, "CA signer \(self.socketPath): \(error)")
        }
    }
}
