public import TPMEngine
public import TPMWire

/// Sends TPM 2.0 commands to an ``Engine`` and maps every failure to ``CloneRekeyError``.
/// Shared by the rekey procedure and `vtpm-state`'s read-only inspection.
public struct EngineCommandRunner {
    /// The engine the commands go to.
    public let engine: Engine

    /// A runner for `engine`.
    /// - Parameter engine: the process's engine, initialized.
    public init(engine: Engine) { self.engine = engine }

    /// Runs `command` and parses the response with `parse`.
    /// - Throws: ``CloneRekeyError`` (`tpmCommand` with the TPM_RC, or `malformedResponse`).
    public func run<T>(_ command: [UInt8], _ parse: ([UInt8]) throws -> T) throws -> T {
        let code = command.count >= TPMFrame.headerSize ? command.readBigEndianUInt32(at: 6) : 0
        var buffer = command
        guard let response = self.engine.process(&buffer) else {
            throw CloneRekeyError(.malformedResponse, "libtpms returned no response to \(TPM2CommandCode.name(code))")
        }
        do {
            return try parse(response)
        } catch let error as TPM2ResponseError {
            throw CloneRekeyError(.tpmCommand, error.description, responseCode: error.responseCode)
        } catch {
            throw CloneRekeyError(.malformedResponse, "\(TPM2CommandCode.name(code)): \(error)")
        }
    }

    /// Runs a command whose response carries nothing needed; throws unless it succeeded.
    public func run(_ command: [UInt8]) throws {
        let code = command.count >= TPMFrame.headerSize ? command.readBigEndianUInt32(at: 6) : 0
        try self.run(command) { response in try TPM2Responses.parseEmpty(response, command: code) }
    }

    /// The response code of `command` (0 on success), throwing only when the response is malformed.
    public func responseCode(_ command: [UInt8]) throws -> UInt32 {
        try self.run(command) { response in try TPM2Responses.responseCode(response) }
    }

    /// TPM2_NV_ReadPublic, or nil when the index does not exist (TPM_RC_HANDLE).
    public func nvReadPublic(_ index: UInt32) throws -> NVPublic? {
        try self.run(TPM2Commands.nvReadPublic(index: index)) { response in
            if try TPM2Responses.responseCode(response) == Self.rcHandle1 { return nil }
            return try TPM2Responses.parseNVReadPublic(response)
        }
    }

    /// TPM_RC_HANDLE for the first handle (RC_FMT1 | TPM_RC_H | TPM_RC_1).
    static let rcHandle1: UInt32 = 0x18B
}

extension CloneRekeyError {
    /// Wraps a libtpms failure.
    static func engine(
        _ error: EngineError,
        during step: String,
        file: String = #fileID,
        line: UInt = #line
    )
        -> CloneRekeyError
    {
        CloneRekeyError(.engine, "\(step): \(error)", responseCode: error.result, file: file, line: line)
    }
}
