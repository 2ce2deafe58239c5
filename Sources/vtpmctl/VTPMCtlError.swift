import TPMWire

/// A failure of a vtpmctl operation: what was attempted and why it failed.
struct VTPMCtlError: Error, Hashable, CustomStringConvertible {
    /// The kind of failure.
    struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case connection, timeout, closed, badReply, result, unsupported, file
        }
        private let base: Base
        /// Connecting to or writing to the control channel failed.
        static let connection = Code(base: .connection)
        /// No (complete) reply within the timeout.
        static let timeout = Code(base: .timeout)
        /// The backend closed the connection before the reply was complete.
        static let closed = Code(base: .closed)
        /// The reply is malformed (sizes, lengths, JSON).
        static let badReply = Code(base: .badReply)
        /// The backend answered with a non-zero result code.
        static let result = Code(base: .result)
        /// The backend does not implement the command.
        static let unsupported = Code(base: .unsupported)
        /// Reading or writing a local file failed.
        static let file = Code(base: .file)
        var description: String { "\(self.base)" }
    }

    var code: Code
    var message: String
    /// The control-channel result code, for `.result` and `.unsupported`.
    var result: UInt32?
    var file: String
    var line: UInt

    init(_ code: Code, _ message: String, result: UInt32? = nil, file: String = #fileID, line: UInt = #line) {
        self.code = code
        self.message = message
        self.result = result
        self.file = file
        self.line = line
    }

    var description: String { self.message }

    static func == (lhs: VTPMCtlError, rhs: VTPMCtlError) -> Bool { lhs.code == rhs.code }
    func hash(into hasher: inout Hasher) { hasher.combine(self.code) }

    /// A non-zero result for `command`, named, with a hint where one helps.
    static func failed(
        _ command: ControlCode,
        _ result: UInt32,
        hint: String? = nil,
        file: String = #fileID,
        line: UInt = #line
    ) -> VTPMCtlError {
        var text = "\(command) failed: \(ResultName.describe(result))"
        if let hint { text += ": " + hint }
        return VTPMCtlError(.result, text, result: result, file: file, line: line)
    }
}

/// Names of the control-channel result codes (PROTOCOL.md §2.2).
enum ResultName {
    static func name(_ result: UInt32) -> String? {
        switch result {
        case ControlResult.success: "TPM_SUCCESS"
        case ControlResult.badParameter: "TPM_BAD_PARAMETER"
        case ControlResult.fail: "TPM_FAIL"
        case ControlResult.badOrdinal: "TPM_BAD_ORDINAL"
        case ControlResult.keyNotFound: "TPM_KEYNOTFOUND"
        case ControlResult.size: "TPM_SIZE"
        case ControlResult.ioError: "TPM_IOERROR"
        case ControlResult.encryptError: "TPM_ENCRYPT_ERROR"
        case ControlResult.decryptError: "TPM_DECRYPT_ERROR"
        case ControlResult.badKeyProperty: "TPM_BAD_KEY_PROPERTY"
        case ControlResult.badDataSize: "TPM_BAD_DATASIZE"
        case ControlResult.badVersion: "TPM_BAD_VERSION"
        case ControlResult.badLocality: "TPM_BAD_LOCALITY"
        case ControlResult.tpm2Failure: "TPM_RC_FAILURE"
        case ControlResult.retry: "TPM_RETRY"
        default: nil
        }
    }

    /// `TPM_BAD_LOCALITY (0x3d)`, or just the hex value for an unknown code.
    static func describe(_ result: UInt32) -> String {
        let hex = "0x" + String(result, radix: 16)
        guard let name = self.name(result) else { return "result \(hex)" }
        return "\(name) (\(hex))"
    }
}
