import Foundation

extension StateReport {
    /// The terminal form of the report: one line per fact, fingerprints shortened to 16 hex digits.
    /// - Returns: The text, ending with a newline.
    public func renderText() -> String {
        var lines: [String] = ["state \(self.state)"]
        if self.inUse == true {
            lines.append("in use by a running vtpmd or swtpm: read without its lock, nothing written")
        }
        if self.identity.recorded, let vmID = self.identity.vmID {
            var line = "identity: vm \(vmID) generation \(self.identity.generation ?? 0)"
            if let parent = self.identity.parent { line += ", clone of \(parent)" }
            lines.append(line)
            lines.append("  created \(self.identity.createdAt ?? "?") by \(self.identity.creator ?? "?")")
        } else {
            lines.append("identity: unknown (no vtpm-instance.permall: swtpm's directory, not adopted yet)")
        }
        lines.append("files:")
        for file in self.files {
            var line = "  \(file.name) \(file.size) bytes \(file.status)"
            if let writer = file.writer { line += ", written by \(writer)" }
            if let generation = file.writeGeneration { line += " (write \(generation))" }
            if file.encrypted == true { line += ", encrypted" }
            if let error = file.error { line += ": \(error)" }
            lines.append(line)
        }
        if let libtpms = self.libtpms {
            lines.append(
                "libtpms state: permanent state version \(libtpms.permanentStateVersion), magic \(libtpms.magic)"
                    + (libtpms.recognized ? "" : " (not libtpms' PERSISTENT_ALL magic)")
            )
        }
        if let error = self.tpmError { lines.append("TPM: not loaded: \(error)") }
        for key in self.endorsementKeys {
            if let fingerprint = key.publicKeySHA256 {
                lines.append("EK \(key.type): sha256:\(fingerprint.prefix(16))")
            } else {
                lines.append("EK \(key.type): \(key.error ?? "unavailable")")
            }
            guard let certificate = key.certificate else {
                lines.append("  certificate \(key.certificateIndex): none")
                continue
            }
            if let error = certificate.error {
                lines.append("  certificate \(key.certificateIndex): \(error)")
                continue
            }
            let match: String =
                switch key.certificateMatchesKey {
                case true?: "matches the EK"
                case false?: "DOES NOT match the EK"
                case nil: "key not compared"
                }
            lines.append("  certificate \(key.certificateIndex): \(certificate.subject) (\(match))")
            lines.append("    serial \(certificate.serial), issuer \(certificate.issuer)")
            lines.append("    valid \(certificate.notBefore) to \(certificate.notAfter)")
        }
        if !self.nvIndices.isEmpty {
            lines.append("NV indices:")
            for index in self.nvIndices {
                lines.append(
                    "  \(index.index) \(index.type) \(index.size) bytes \(index.attributes) "
                        + index.attributeNames.joined(separator: "|")
                )
            }
        }
        if !self.pcrBanks.isEmpty {
            let banks = self.pcrBanks.map { bank in
                bank.pcrs.isEmpty ? "\(bank.algorithm) (inactive)" : "\(bank.algorithm) (\(bank.pcrs.count) PCRs)"
            }
            lines.append("PCR banks: " + banks.joined(separator: ", "))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The `--json` form: pretty-printed, keys sorted.
    /// - Returns: The JSON text, ending with a newline.
    /// - Throws: an `EncodingError` (not expected for this type).
    public func renderJSON() throws -> String {
        try StateToolJSON.encode(self)
    }
}

/// The JSON encoding every `--json`/`--format json` output uses: pretty-printed with sorted keys.
enum StateToolJSON {
    static func encode(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self) + "\n"
    }
}
