import Crypto
import Foundation
import SwiftASN1
import X509
import _VTPMPosix

#if canImport(Glibc)
import Glibc
#endif

extension HostCA {
    /// Creates a CA in `directory`: a new ECDSA P-384 key written to `ca-key.pem` (mode 0600) and a self-signed
    /// CA certificate written to `ca.pem` (mode 0644).
    ///
    /// The directory is created with mode 0700 if it is missing; an existing one must be owned by us and not
    /// writable by group or others. Each file is written atomically (temp file, fsync, rename, directory fsync),
    /// the key first. An exclusive lock on `ca.lock` in the directory serializes concurrent creators.
    /// - Parameters:
    ///   - directory: The CA directory.
    ///   - subject: The CA's name, `CN=...,O=...` (RFC 4514 order), or a bare common name.
    /// - Returns: The new CA.
    /// - Throws: ``EndorsementCAError``: `alreadyExists` when the directory already holds a key or certificate
    ///   (never overwritten), `hostileFile`, `io`, `invalidRequest` for a subject that does not parse.
    public static func create(at directory: String, subject: String = HostCA.defaultSubject) throws -> HostCA {
        let handle = try Self.openDirectory(directory, create: true)
        defer { handle.close() }
        return try Self.withLock(handle) { try Self.createLocked(handle, subject: subject) }
    }

    /// Loads the CA in `directory`.
    ///
    /// Refuses a key file that is a symlink, not a regular file, owned by another user, or accessible to group or
    /// others (it must be 0600 or 0400), and a key that does not belong to the certificate.
    /// - Parameter directory: The CA directory.
    /// - Returns: The CA.
    /// - Throws: ``EndorsementCAError``: `notFound`, `hostileFile`, `malformedKey`, `malformedCertificate`,
    ///   `keyMismatch`, `io`.
    public static func load(from directory: String) throws -> HostCA {
        let handle = try Self.openDirectory(directory, create: false)
        defer { handle.close() }
        return try Self.loadFiles(handle)
    }

    /// Loads the CA in `directory`, creating it first (as ``create(at:subject:)``) if the directory holds none.
    /// Safe when several processes start at once: the check and the creation happen under `ca.lock`.
    /// - Parameters:
    ///   - directory: The CA directory.
    ///   - subject: The CA's name if it has to be created.
    /// - Returns: The CA.
    /// - Throws: ``EndorsementCAError`` as ``create(at:subject:)`` and ``load(from:)``.
    public static func loadOrCreate(at directory: String, subject: String = HostCA.defaultSubject) throws -> HostCA {
        let handle = try Self.openDirectory(directory, create: true)
        defer { handle.close() }
        return try Self.withLock(handle) {
            if try Self.status(handle, Self.keyFileName) == nil,
                try Self.status(handle, Self.certificateFileName) == nil
            {
                return try Self.createLocked(handle, subject: subject)
            }
            return try Self.loadFiles(handle)
        }
    }

    private static let lockFileName = "ca.lock"
    private static let maximumFileSize = 64 * 1024

    private static func createLocked(_ handle: DirectoryHandle, subject: String) throws -> HostCA {
        for name in [Self.keyFileName, Self.certificateFileName] where try Self.status(handle, name) != nil {
            throw EndorsementCAError(
                .alreadyExists,
                "\(handle.describe(name)) exists; refusing to overwrite an existing CA"
            )
        }
        let ca = try Self.generate(directory: handle.path, subject: subject)
        try Self.write(handle, Self.keyFileName, Array(ca.privateKey.pemRepresentation.utf8), mode: 0o600)
        try Self.write(handle, Self.certificateFileName, Array(ca.certificatePEM.utf8), mode: 0o644)
        return ca
    }

    private static func loadFiles(_ handle: DirectoryHandle) throws -> HostCA {
        let keyPath = handle.describe(Self.keyFileName)
        guard let status = try Self.status(handle, Self.keyFileName) else {
            throw EndorsementCAError(.notFound, "\(keyPath) does not exist; create the CA first")
        }
        guard status.kind != .symlink else {
            throw EndorsementCAError(.hostileFile, "\(keyPath) is a symbolic link; refusing to follow it")
        }
        guard status.kind == .regular else {
            throw EndorsementCAError(.hostileFile, "\(keyPath) is not a regular file")
        }
        guard Self.isTrustedOwner(status.owner, directory: try Self.status(handle, ".")?.owner) else {
            throw EndorsementCAError(.hostileFile, "\(keyPath) is owned by uid \(status.owner), not by us")
        }
        guard status.mode & 0o077 == 0 else {
            throw EndorsementCAError(
                .hostileFile,
                "\(keyPath) has mode 0\(String(status.mode, radix: 8)); the CA key must be 0600"
            )
        }
        let keyBytes = try Self.read(handle, Self.keyFileName)
        guard let certificateBytes = try Self.readIfPresent(handle, Self.certificateFileName) else {
            throw EndorsementCAError(
                .notFound,
                "\(handle.describe(Self.certificateFileName)) does not exist (incomplete CA directory)"
            )
        }
        let key: P384.Signing.PrivateKey
        do {
            key = try P384.Signing.PrivateKey(pemRepresentation: String(decoding: keyBytes, as: UTF8.self))
        } catch {
            throw EndorsementCAError(.malformedKey, "\(keyPath) is not a PEM ECDSA P-384 private key")
        }
        let certificate: Certificate
        do {
            certificate = try Certificate(pemEncoded: String(decoding: certificateBytes, as: UTF8.self))
        } catch {
            throw EndorsementCAError(
                .malformedCertificate,
                "\(handle.describe(Self.certificateFileName)) is not a PEM certificate: \(error)"
            )
        }
        guard let certificateKey = P384.Signing.PublicKey(certificate.publicKey),
            certificateKey.x963Representation == key.publicKey.x963Representation
        else {
            throw EndorsementCAError(
                .keyMismatch,
                "\(keyPath) does not hold the private key of \(handle.describe(Self.certificateFileName))"
            )
        }
        do {
            return try HostCA(directory: handle.path, privateKey: key, certificate: certificate)
        } catch {
            throw EndorsementCAError(.malformedCertificate, "cannot re-encode the CA certificate: \(error)")
        }
    }

    // MARK: File system, through _VTPMPosix

    private static func openDirectory(_ path: String, create: Bool) throws -> DirectoryHandle {
        if create {
            do { try makeDirectories(path, mode: 0o700) } catch {
                throw EndorsementCAError(.io, "cannot create the CA directory \(path): \(error)")
            }
        }
        let handle: DirectoryHandle
        do {
            handle = try DirectoryHandle.open(path)
        } catch {
            let code: EndorsementCAError.Code = error.isNotFound ? .notFound : .io
            throw EndorsementCAError(code, "cannot open the CA directory: \(error)")
        }
        do {
            guard let status = try handle.status(".") else {
                throw EndorsementCAError(.notFound, "the CA directory \(path) vanished")
            }
            guard Self.isTrustedOwner(status.owner, directory: status.owner), status.mode & 0o022 == 0 else {
                throw EndorsementCAError(
                    .hostileFile,
                    "the CA directory \(path) must be owned by us and not writable by group or others "
                        + "(owner uid \(status.owner), mode 0\(String(status.mode, radix: 8)))"
                )
            }
            return handle
        } catch {
            handle.close()
            if let error = error as? EndorsementCAError { throw error }
            throw EndorsementCAError(.io, "cannot inspect the CA directory: \(error)")
        }
    }

    /// Files of the CA are ours; root (an operator's vtpm-state) also trusts a CA directory that another
    /// user owns alone (the package's, owned by the swtpm user), and that user's files in it.
    private static func isTrustedOwner(_ owner: UInt32, directory: UInt32?) -> Bool {
        owner == Self.effectiveUserID() || (Self.effectiveUserID() == 0 && owner == directory)
    }

    /// Our effective uid, as the owner of a file we just created would have it.
    private static func effectiveUserID() -> UInt32 {
        UInt32(truncatingIfNeeded: geteuid())
    }

    private static func status(_ handle: DirectoryHandle, _ name: String) throws -> FileStatus? {
        do {
            return try handle.status(name)
        } catch {
            throw EndorsementCAError(.io, "cannot stat: \(error)")
        }
    }

    private static func read(_ handle: DirectoryHandle, _ name: String) throws -> [UInt8] {
        guard let bytes = try Self.readIfPresent(handle, name) else {
            throw EndorsementCAError(.notFound, "\(handle.describe(name)) does not exist")
        }
        return bytes
    }

    private static func readIfPresent(_ handle: DirectoryHandle, _ name: String) throws -> [UInt8]? {
        do {
            return try handle.readFile(
                name,
                maxSize: Self.maximumFileSize,
                strictMode: true,
                trustedOwner: handle.exclusiveOwner()
            )
        } catch let error as HostileFileError {
            throw EndorsementCAError(.hostileFile, error.description)
        } catch {
            throw EndorsementCAError(.io, "cannot read \(handle.describe(name)): \(error)")
        }
    }

    private static func write(_ handle: DirectoryHandle, _ name: String, _ bytes: [UInt8], mode: UInt32) throws {
        do {
            try handle.writeFileAtomically(name, contents: bytes, mode: mode, durable: true)
        } catch {
            throw EndorsementCAError(.io, "cannot write: \(error)")
        }
    }

    /// Runs `body` holding the exclusive lock on `ca.lock`, waiting up to 30 s for another holder.
    private static func withLock<T>(_ handle: DirectoryHandle, _ body: () throws -> T) throws -> T {
        let deadline = Date(timeIntervalSinceNow: 30)
        var descriptor: Int32? = nil
        while descriptor == nil {
            do {
                descriptor = try handle.lock(Self.lockFileName)
            } catch  where error.isWouldBlock && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.02)
            } catch {
                throw EndorsementCAError(.io, "cannot lock the CA directory: \(error)")
            }
        }
        defer { descriptor.map(closeDescriptor) }
        return try body()
    }
}
