/// A libtpms call that failed: the function and the TPM_RESULT it returned.
public struct EngineError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The TPM_RESULT / TPM_RC from libtpms.
    public var result: UInt32
    /// The libtpms function that returned it.
    public var function: String

    /// Why vtpmd refused what it would have handed libtpms, when that was the cause.
    public var detail: String?

    public init(result: UInt32, function: String, detail: String? = nil) {
        self.result = result
        self.function = function
        self.detail = detail
    }

    public var description: String {
        let base = "\(self.function) failed with 0x\(String(self.result, radix: 16))"
        return self.detail.map { "\(base): \($0)" } ?? base
    }
}
