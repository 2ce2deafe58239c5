import Foundation
import TPMWire

/// Where results go: readable lines, or one JSON document with `--json`.
enum Output {
    /// Prints one line on stdout.
    static func line(_ text: String) {
        print(text)
    }

    /// Prints `value` as one line of JSON (keys sorted, so the output is stable).
    static func json(_ value: some Encodable) throws(VTPMCtlError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            print(String(decoding: try encoder.encode(value), as: UTF8.self))
        } catch {
            throw VTPMCtlError(.badReply, "cannot encode the output as JSON: \(error)")
        }
    }

    /// Prints a message on stderr.
    static func error(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}

/// `{"ok": true}`-style output of commands that return nothing but success.
struct OKOutput: Encodable {
    var ok = true
}

/// Names of the GET_CAPABILITY bits (PROTOCOL.md §2.5).
enum CapabilityNames {
    static let bits: [(UInt64, String)] = [
        (0x0001, "INIT"), (0x0002, "SHUTDOWN"), (0x0004, "GET_TPMESTABLISHED"), (0x0008, "SET_LOCALITY"),
        (0x0010, "HASHING"), (0x0020, "CANCEL_TPM_CMD"), (0x0040, "STORE_VOLATILE"),
        (0x0080, "RESET_TPMESTABLISHED"), (0x0100, "GET_STATEBLOB"), (0x0200, "SET_STATEBLOB"), (0x0400, "STOP"),
        (0x0800, "GET_CONFIG"), (0x1000, "SET_DATAFD"), (0x2000, "SET_BUFFERSIZE"), (0x4000, "GET_INFO"),
        (0x8000, "SEND_COMMAND_HEADER"), (0x10000, "LOCK_STORAGE"),
    ]

    /// The names of the bits set in `caps`; unknown bits as `0x...`.
    static func names(_ caps: UInt64) -> [String] {
        var rest = caps
        var names: [String] = []
        for (bit, name) in self.bits where caps & bit != 0 {
            names.append(name)
            rest &= ~bit
        }
        var bit: UInt64 = 1
        while rest != 0 {
            if rest & bit != 0 {
                names.append("0x" + String(bit, radix: 16))
                rest &= ~bit
            }
            bit <<= 1
        }
        return names
    }
}

/// Pretty-printing of JSON text from the backend (GET_INFO).
enum JSONText {
    /// Parses `bytes` as JSON; throws a `.badReply` error naming `what` otherwise.
    static func object(_ bytes: [UInt8], what: String) throws(VTPMCtlError) -> Any {
        do {
            return try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            let text = String(decoding: bytes.prefix(200), as: UTF8.self)
            throw VTPMCtlError(.badReply, "\(what): the backend's reply is not JSON: \(text)")
        }
    }

    /// Indented, keys sorted.
    static func pretty(_ object: Any) -> String {
        guard
            let data = try? JSONSerialization.data(
                withJSONObject: object,
                options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]
            )
        else { return "\(object)" }
        return String(decoding: data, as: UTF8.self)
    }
}
