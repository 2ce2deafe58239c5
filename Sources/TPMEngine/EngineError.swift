/// A libtpms call that failed: the function and the TPM_RESULT it returned.
public struct EngineError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The TPM_RESULT / TPM_RC from libtpms.
    public var result: UInt32
    /// The libtpms function that returned it.
    public var function: String

    public init(result: UInt32, function: String) {
        self.result = result
        self.function = function
    }

    public var description: String { "\(self.function) failed with 0x\(String(self.result, radix: 16))" }
}
