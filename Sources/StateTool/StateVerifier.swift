import EndorsementCA
import Foundation
public import StateStore
import VMIdentity

/// `vtpm-state verify`: the EK certificates in a state belong to it.
public enum StateVerifier {
    /// The outcome: one finding per EK; ``passed`` only when every check of every EK passed and at least one
    /// EK has a certificate (an EK without one, as `create --ek` leaves it, passes with that reason).
    public struct Result: Codable, Hashable, Sendable {
        /// One EK's verdict.
        public struct Finding: Codable, Hashable, Sendable {
            /// "rsa2048" or "ecc-nist-p256".
            public var type: String
            /// Whether every check passed.
            public var passed: Bool
            /// Why it failed, or what was checked.
            public var reason: String
        }
        /// The state directory.
        public var state: String
        /// Whether both EKs passed.
        public var passed: Bool
        /// One per EK.
        public var findings: [Finding]

        /// One line per EK, then "verify: OK" or "verify: FAILED".
        public func renderText() -> String {
            self.findings.map { "\($0.type): \($0.passed ? "ok" : "FAILED"): \($0.reason)" }.joined(separator: "\n")
                + "\nverify: \(self.passed ? "OK" : "FAILED")\n"
        }

        /// The `--json` form.
        public func renderJSON() throws -> String { try StateToolJSON.encode(self) }
    }

    /// Recomputes the EK public keys from the state and checks that each certificate holds that key, chains
    /// to the CA and names the directory's identity and generation. Creates the process's one engine.
    /// - Parameters:
    ///   - path: The state directory.
    ///   - caDirectory: The host CA directory (`ca.pem`, `ca-key.pem`).
    /// - Returns: The findings (``Result/passed`` false on any mismatch).
    /// - Throws: ``StateToolError`` for a missing, locked or damaged directory or an unusable CA.
    public static func verify(path: String, caDirectory: String, stateKey: StateKey? = nil) throws -> Result {
        let ca: HostCA
        do {
            ca = try HostCA.load(from: caDirectory)
        } catch {
            throw StateToolError(.certificateAuthority, "cannot load the CA in \(caDirectory): \(error)")
        }
        let opened = try OpenedState.openForReading(path, stateKey: stateKey)
        _ = try opened.requirePermanentState()
        let (report, keys, certificates) = try StateInspector.report(opened)
        if let error = report.tpmError { throw StateToolError(.engine, "\(path): \(error)") }
        var findings: [Result.Finding] = []
        for (_, name) in StateInspector.endorsementKeys {
            findings.append(
                self.check(name: name, key: keys[name], der: certificates[name], identity: opened.identity, ca: ca)
            )
        }
        // An EK without a certificate (`create --ek rsa`) is no failure as long as another EK's certificate
        // was checked; a state without any certificate fails.
        if certificates.isEmpty {
            findings = findings.map { finding in
                guard finding.passed else { return finding }
                return Result.Finding(type: finding.type, passed: false, reason: "no EK certificate in NV")
            }
        }
        return Result(state: path, passed: findings.allSatisfy(\.passed), findings: findings)
    }

    static func check(
        name: String,
        key: EKPublicKey?,
        der: [UInt8]?,
        identity: InstanceIdentity?,
        ca: HostCA
    ) -> Result.Finding {
        func fail(_ reason: String) -> Result.Finding { Result.Finding(type: name, passed: false, reason: reason) }
        guard let key else { return fail("the EK cannot be recomputed from the state") }
        guard let der else {
            return Result.Finding(type: name, passed: true, reason: "no EK certificate in NV (none provisioned)")
        }
        let info: EKCertificateInfo
        do { info = try EKCertificateInfo(der: der) } catch { return fail("the certificate does not parse: \(error)") }
        guard info.publicKey == key else {
            return fail("the certificate (\(info.subject)) certifies another key than this state's EK")
        }
        guard ca.verify(der) else {
            return fail("the certificate does not chain to the CA \(ca.subject) (or is outside its validity)")
        }
        guard let identity, let vmID = identity.vmID else {
            return fail("the directory has no recorded identity (swtpm's directory): nothing to compare with")
        }
        guard let certified = info.vmID?.description else {
            return fail("the certificate names no VM (no VM-identity extension)")
        }
        guard certified == vmID.description else {
            return fail("the certificate names vm \(certified), the directory is vm \(vmID)")
        }
        guard info.generation == identity.generation else {
            return fail(
                "the certificate names generation \(info.generation.map(String.init) ?? "none"), "
                    + "the directory is at generation \(identity.generation)"
            )
        }
        return Result.Finding(
            type: name,
            passed: true,
            reason:
                "certifies this state's EK, issued by \(ca.subject), names vm \(vmID) generation \(identity.generation)"
        )
    }
}
