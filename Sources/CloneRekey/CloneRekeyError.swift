/// A failed clone-rekey: the step that failed and why. The engine is terminated when this is thrown.
public struct CloneRekeyError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable {
            case engineRunning, engine, tpmCommand, malformedResponse, seedPatch, certificateIssuance
            case certificateTooLarge, nvIndexNotDeletable, unexpectedState
        }
        let base: Base
        /// The engine was running; the procedure needs a stopped TPM.
        public static let engineRunning = Code(base: .engineRunning)
        /// A libtpms call (SetState, MainInit, GetState) failed.
        public static let engine = Code(base: .engine)
        /// A TPM command returned an error code (``CloneRekeyError/responseCode``).
        public static let tpmCommand = Code(base: .tpmCommand)
        /// libtpms returned no or a malformed response.
        public static let malformedResponse = Code(base: .malformedResponse)
        /// The seed copies in the state blobs are not exactly where they must be.
        public static let seedPatch = Code(base: .seedPatch)
        /// The certificate-issuing closure threw.
        public static let certificateIssuance = Code(base: .certificateIssuance)
        /// A certificate does not fit an NV index (MAX_NV_INDEX_SIZE).
        public static let certificateTooLarge = Code(base: .certificateTooLarge)
        /// An existing EK certificate index has TPMA_NV_POLICY_DELETE and cannot be replaced.
        public static let nvIndexNotDeletable = Code(base: .nvIndexNotDeletable)
        /// The TPM is not in the state the procedure expects (for example already started).
        public static let unexpectedState = Code(base: .unexpectedState)
        public var description: String { "\(self.base)" }
    }

    public var code: Code
    public var message: String
    /// The TPM_RC or libtpms TPM_RESULT, when one caused the failure.
    public var responseCode: UInt32?
    public var file: String
    public var line: UInt

    public init(
        _ code: Code,
        _ message: String,
        responseCode: UInt32? = nil,
        file: String = #fileID,
        line: UInt = #line
    ) {
        self.code = code
        self.message = message
        self.responseCode = responseCode
        self.file = file
        self.line = line
    }

    public var description: String { "clone-rekey: \(self.message)" }

    public static func == (lhs: CloneRekeyError, rhs: CloneRekeyError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }
}
