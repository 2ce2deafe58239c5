import Registry
import TPMWire
import VMIdentity

// Vendor control commands: vtpmd's additions to swtpm's control protocol.
//
// Why a vendor code cannot collide with swtpm or upset QEMU:
// - swtpm's codes are small consecutive integers (0x01–0x13 up to 0.10, `ptm_*` in tpm_ioctl.h);
//   VTPM_GET_IDENTITY is 0x7654_0001, a range swtpm would have to grow by two billion codes to reach.
// - swtpm (every version) answers an unknown code with a 4-byte TPM_BAD_ORDINAL (0x0a) and keeps
//   the connection, so a client can probe for the command and fall back cleanly.
// - QEMU only sends the codes its capability check knows about, and GET_CAPABILITY stays 0xffff
//   (no bit is added), so QEMU neither sends nor expects it.
// - The request has no payload (`PayloadRule.fixed(0)`): bytes behind it are the next message.
//
// Reply: be32 result, be32 length, then `length` bytes of UTF-8 JSON:
//   {"vm_id": "<uuid>", "generation": N | null, "last_decision": "clone|move|rollback|adopt|rekey-foreign|reject|none",
//    "last_decision_at": "<ISO-8601 UTC>" | null, "checkpoint_outstanding": true|false}
// (generation null: not read from the registry yet, before the first INIT, or while it cannot be read)
// or, when vtpmd runs without --vm-id, result 0 with {"vm_id": null}.

extension Server {
    /// The reply to VTPM_GET_IDENTITY: result 0, the JSON length, the JSON.
    func vendorIdentityReply() -> [UInt8] {
        let json: String
        if let identity = self.identity {
            let fields: [(String, String)] = [
                ("vm_id", Self.jsonString(identity.vmID.description)),
                ("generation", identity.generationKnown ? String(identity.generation) : "null"),
                ("last_decision", Self.jsonString(identity.lastDecision)),
                ("last_decision_at", identity.lastDecisionAt.map { Self.jsonString($0.description) } ?? "null"),
                ("checkpoint_outstanding", identity.checkpointOutstanding ? "true" : "false"),
            ]
            json = "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
        } else {
            json = "{\"vm_id\": null}"
        }
        let body = Array(json.utf8)
        var w = ByteWriter(capacity: 8 + body.count)
        w.write(ControlResult.success)
        w.write(UInt32(body.count))
        w.write(bytes: body)
        return w.bytes
    }

    /// A JSON string literal (RFC 8259 escaping).
    static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
