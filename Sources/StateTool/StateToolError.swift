/// Why a `vtpm-state` operation failed. Compared by ``code`` only; ``message`` names the object
/// (directory, file, NV index) and what went wrong, never secret material.
public struct StateToolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of failure: a struct over a private enum so that codes can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable {
            case notFound, locked, damaged, invalidArgument, exists, engine, certificateAuthority, registry
            case verificationFailed
        }
        let base: Base
        /// The directory, state or registry does not exist.
        public static let notFound = Code(base: .notFound)
        /// The state directory is locked by a running vtpmd or swtpm.
        public static let locked = Code(base: .locked)
        /// A state file does not decode (corrupt, truncated, hostile, encrypted).
        public static let damaged = Code(base: .damaged)
        /// An argument is malformed (a vm-id that is no UUID, conflicting options).
        public static let invalidArgument = Code(base: .invalidArgument)
        /// The target already holds a TPM (or a CA) and overwriting was not asked for.
        public static let exists = Code(base: .exists)
        /// libtpms or a TPM command failed.
        public static let engine = Code(base: .engine)
        /// The host CA could not be created or loaded.
        public static let certificateAuthority = Code(base: .certificateAuthority)
        /// The registry could not be opened or updated.
        public static let registry = Code(base: .registry)
        /// `verify` found a mismatch.
        public static let verificationFailed = Code(base: .verificationFailed)
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
    public static func == (lhs: StateToolError, rhs: StateToolError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }
}
