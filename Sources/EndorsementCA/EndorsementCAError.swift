/// Why a host CA could not be created or loaded, or an EK certificate could not be issued or read.
///
/// Compared by ``code`` only; ``message`` names the object (path, field, structure) and what went wrong.
/// No message ever contains key material.
public struct EndorsementCAError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of failure. A struct over a private enum so that new codes can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable {
            case alreadyExists, notFound, hostileFile, io, malformedKey, malformedCertificate, keyMismatch
            case malformedPublicArea, unsupportedKey, invalidRequest, signing, refused, unavailable
        }
        let base: Base
        /// `create` found a CA key or certificate in the directory and refuses to overwrite it.
        public static let alreadyExists = Code(base: .alreadyExists)
        /// The CA directory, key or certificate does not exist (or is incomplete).
        public static let notFound = Code(base: .notFound)
        /// A symlink, a non-regular file, a file owned by another user, or a key readable by group/others.
        public static let hostileFile = Code(base: .hostileFile)
        /// A file system operation failed.
        public static let io = Code(base: .io)
        /// The CA private key file could not be decoded.
        public static let malformedKey = Code(base: .malformedKey)
        /// A certificate (the CA's or an EK certificate) could not be decoded or lacks a required field.
        public static let malformedCertificate = Code(base: .malformedCertificate)
        /// The CA private key does not belong to the CA certificate.
        public static let keyMismatch = Code(base: .keyMismatch)
        /// A marshalled TPM2B_PUBLIC is truncated, overlong or inconsistent.
        public static let malformedPublicArea = Code(base: .malformedPublicArea)
        /// A key type, curve or size this module does not certify.
        public static let unsupportedKey = Code(base: .unsupportedKey)
        /// An ``EKCertificateRequest`` field is out of range or badly formed.
        public static let invalidRequest = Code(base: .invalidRequest)
        /// Building or signing a certificate failed.
        public static let signing = Code(base: .signing)
        /// The separated CA signer refused the request (it does not match what the registry records).
        public static let refused = Code(base: .refused)
        /// The separated CA signer could not be reached, or answered out of protocol.
        public static let unavailable = Code(base: .unavailable)
        public var description: String { "\(self.base)" }
    }

    /// What failed.
    public var code: Code
    /// A human-readable explanation naming the object and the operation.
    public var message: String
    /// Where the error was raised.
    public var file: String
    /// Where the error was raised.
    public var line: UInt

    /// Creates an error.
    /// - Parameters:
    ///   - code: What failed.
    ///   - message: An explanation naming the object and the operation.
    public init(_ code: Code, _ message: String, file: String = #fileID, line: UInt = #line) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
    }

    public var description: String { self.message }
    public static func == (lhs: EndorsementCAError, rhs: EndorsementCAError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }
}
