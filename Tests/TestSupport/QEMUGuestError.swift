/// An error from the QEMU guest harness (`QEMUGuest`, `QMPClient`, `GuestImage`, `TPMBackendProcess`).
public struct QEMUGuestError: Error, Hashable, CustomStringConvertible {
    /// What went wrong, coarsely.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: Hashable, Sendable {
            case timeout, launchFailed, exited, qmpFailed, qmpError, commandFailed, imageUnavailable
        }

        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// A deadline passed (boot, command, QMP reply, process exit).
        public static let timeout = Code(.timeout)
        /// A process (QEMU, socat, the TPM backend, the image build) could not be started.
        public static let launchFailed = Code(.launchFailed)
        /// A process exited while the harness still needed it.
        public static let exited = Code(.exited)
        /// The QMP connection failed or produced garbage.
        public static let qmpFailed = Code(.qmpFailed)
        /// QEMU answered a QMP command with an error object (or HMP printed an error).
        public static let qmpError = Code(.qmpError)
        /// A guest command exited with an unexpected status (`QEMUGuest.check`).
        public static let commandFailed = Code(.commandFailed)
        /// The guest image could not be located or built.
        public static let imageUnavailable = Code(.imageUnavailable)

        public var description: String { "\(kind)" }
    }

    /// The error code.
    public let code: Code
    /// What happened, with the relevant paths, commands and a tail of the console or log.
    public let message: String
    /// Where the error was raised.
    public let file: String
    /// Where the error was raised.
    public let line: UInt

    /// Creates an error.
    /// - Parameters:
    ///   - code: the error code.
    ///   - message: a description naming the object and the operation.
    public init(_ code: Code, _ message: String, file: String = #fileID, line: UInt = #line) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
    }

    public var description: String { "QEMUGuestError.\(code): \(message) (\(file):\(line))" }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
}
