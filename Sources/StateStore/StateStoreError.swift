/// Why a state file, blob or key could not be used.
public struct StateStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable {
            case malformed, unsupportedVersion, integrity, keyMissing, keyMismatch, decryption, io, hostileFile,
                locked, refusedManufacture, invalidKey, untrustedSigner
        }
        let base: Base
        /// The bytes do not follow the container format.
        public static let malformed = Code(base: .malformed)
        /// A version this build does not read.
        public static let unsupportedVersion = Code(base: .unsupportedVersion)
        /// A digest or HMAC did not match.
        public static let integrity = Code(base: .integrity)
        /// The blob is encrypted but no key is configured.
        public static let keyMissing = Code(base: .keyMissing)
        /// The blob says 128-bit key but the key is 256-bit, or the reverse.
        public static let keyMismatch = Code(base: .keyMismatch)
        /// Decryption failed (wrong key or corrupt ciphertext).
        public static let decryption = Code(base: .decryption)
        /// A system call failed.
        public static let io = Code(base: .io)
        /// A symlink, FIFO, foreign-owned or world-writable file where a state file should be.
        public static let hostileFile = Code(base: .hostileFile)
        /// The directory is locked by another process.
        public static let locked = Code(base: .locked)
        /// The permanent state is missing from a directory that held a TPM before.
        public static let refusedManufacture = Code(base: .refusedManufacture)
        /// A key option or key file is not usable.
        public static let invalidKey = Code(base: .invalidKey)
        /// A claim's signer could not be checked (the registry that knows the cluster's hosts is unavailable).
        public static let untrustedSigner = Code(base: .untrustedSigner)
        public var description: String { "\(self.base)" }
    }

    public var code: Code
    public var message: String
    public var file: String
    public var line: UInt

    public init(_ code: Code, _ message: String, file: String = #fileID, line: UInt = #line) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
    }

    public var description: String { self.message }
    public static func == (lhs: StateStoreError, rhs: StateStoreError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }
}
