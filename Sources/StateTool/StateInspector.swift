import CloneRekey
import EndorsementCA
import Foundation
public import StateStore
import TPMEngine
import TPMWire
import VMIdentity

/// `vtpm-state inspect`: a report on a state directory, computed on an in-memory copy of the TPM.
public enum StateInspector {
    /// The EKs `inspect` and `verify` recompute, with their names in reports.
    static let endorsementKeys: [(EKTemplate, String)] = [(.rsa2048, "rsa2048"), (.eccNISTP256, "ecc-nist-p256")]

    /// Inspects the state directory at `path`. Creates the process's one `Engine`.
    /// - Parameter path: The state directory.
    /// - Returns: The report; a damaged file or a TPM libtpms refuses is reported in it (``StateReport/isIntact``).
    /// - Throws: ``StateToolError`` for a missing, empty or locked directory.
    public static func inspect(path: String, stateKey: StateKey? = nil) throws -> StateReport {
        let opened = try OpenedState.openForReading(path, stateKey: stateKey)
        return try self.report(opened).report
    }

    /// The report, plus the recomputed EK public keys and certificates for `verify`.
    static func report(
        _ opened: OpenedState
    ) throws -> (report: StateReport, keys: [String: EKPublicKey], certificates: [String: [UInt8]]) {
        var report = StateReport(
            state: opened.path,
            identity: self.identity(opened.identity),
            files: opened.files,
            libtpms: opened.permanentState.map(self.format),
            endorsementKeys: [],
            nvIndices: [],
            pcrBanks: []
        )
        if opened.inUse { report.inUse = true }
        var keys: [String: EKPublicKey] = [:]
        var certificates: [String: [UInt8]] = [:]
        let permanent: [UInt8]
        do {
            permanent = try opened.requirePermanentState()
        } catch {
            report.tpmError = "\(error)"
            return (report, keys, certificates)
        }
        let engine: Engine
        do {
            engine = try Engine(storage: InMemoryEngineStorage(blobs: ["permall": permanent]))
        } catch {
            throw StateToolError(.engine, "cannot set up libtpms: \(error)")
        }
        defer { engine.terminate() }
        let probe: TPMProbe
        do {
            probe = try TPMProbe.start(engine, permanentState: permanent)
        } catch {
            report.tpmError = "\(error)"
            return (report, keys, certificates)
        }
        for (template, name) in self.endorsementKeys {
            var entry = StateReport.EndorsementKey(
                type: name,
                certificateIndex: "0x" + self.hex(template.certificateIndex)
            )
            do {
                let key = try EKPublicKey(tpm2bPublic: try probe.endorsementKey(template))
                keys[name] = key
                entry.publicKeySHA256 = try TPMProbe.fingerprint(key)
            } catch {
                entry.error = "cannot recompute the EK: \(error)"
            }
            do {
                if let der = try probe.nvContents(template.certificateIndex) {
                    certificates[name] = der
                    let certificate = self.certificate(der)
                    entry.certificate = certificate
                    if let fingerprint = entry.publicKeySHA256, let certified = certificate.publicKeySHA256 {
                        entry.certificateMatchesKey = fingerprint == certified
                    }
                }
            } catch {
                entry.certificate = self.unreadable("cannot read NV index \(entry.certificateIndex): \(error)")
            }
            report.endorsementKeys.append(entry)
        }
        do {
            report.nvIndices = try probe.nvIndices().map(self.nvIndex)
            report.pcrBanks = try probe.pcrBanks().map {
                StateReport.PCRBank(algorithm: $0.algorithmName, pcrs: $0.pcrs)
            }
        } catch {
            report.tpmError = "\(error)"
        }
        return (report, keys, certificates)
    }

    static func identity(_ identity: InstanceIdentity?) -> StateReport.Identity {
        guard let identity, let vmID = identity.vmID else {
            return StateReport.Identity(recorded: false)
        }
        return StateReport.Identity(
            recorded: true,
            vmID: vmID.description,
            generation: identity.generation,
            parent: identity.parent?.description,
            createdAt: Date(timeIntervalSince1970: Double(identity.createdAt)).formatted(.iso8601),
            creator: identity.creator
        )
    }

    static func format(_ plain: [UInt8]) -> StateReport.LibTPMSFormat {
        guard plain.count >= 6 else {
            return StateReport.LibTPMSFormat(permanentStateVersion: 0, magic: "", recognized: false)
        }
        let version = UInt16(plain[0]) << 8 | UInt16(plain[1])
        let magic = plain.readBigEndianUInt32(at: 2)
        return StateReport.LibTPMSFormat(
            permanentStateVersion: version,
            magic: "0x" + String(magic, radix: 16),
            recognized: magic == 0xAB36_4723
        )
    }

    static func unreadable(_ error: String) -> StateReport.Certificate {
        StateReport.Certificate(subject: "", issuer: "", serial: "", notBefore: "", notAfter: "", error: error)
    }

    static func certificate(_ der: [UInt8]) -> StateReport.Certificate {
        do {
            let info = try EKCertificateInfo(der: der)
            return StateReport.Certificate(
                subject: info.subject,
                issuer: info.issuer,
                serial: info.serialNumber.hexString,
                notBefore: info.notValidBefore.formatted(.iso8601),
                notAfter: info.notValidAfter.formatted(.iso8601),
                vmID: info.vmID?.description,
                generation: info.generation,
                parentVMID: info.parentVMID?.description,
                parentGeneration: info.parentGeneration,
                publicKeySHA256: try? TPMProbe.fingerprint(info.publicKey)
            )
        } catch {
            return self.unreadable("\(error)")
        }
    }

    static let attributeNames: [(NVAttributes, String)] = [
        (.ppWrite, "ppwrite"), (.ownerWrite, "ownerwrite"), (.authWrite, "authwrite"),
        (.policyWrite, "policywrite"), (.policyDelete, "policy_delete"), (.writeLocked, "writelocked"),
        (.writeAll, "writeall"), (.writeDefine, "writedefine"), (.writeSTClear, "write_stclear"),
        (.globalLock, "globallock"), (.ppRead, "ppread"), (.ownerRead, "ownerread"), (.authRead, "authread"),
        (.policyRead, "policyread"), (.noDA, "no_da"), (.orderly, "orderly"), (.clearSTClear, "clear_stclear"),
        (.readLocked, "readlocked"), (.written, "written"), (.platformCreate, "platformcreate"),
        (.readSTClear, "read_stclear"),
    ]

    static func nvIndex(_ nvPublic: NVPublic) -> StateReport.NVIndex {
        let type: String =
            switch nvPublic.attributes.indexType {
            case 0: "ordinary"
            case 1: "counter"
            case 2: "bits"
            case 4: "extend"
            case 8: "pinfail"
            case 9: "pinpass"
            default: "type\(nvPublic.attributes.indexType)"
            }
        return StateReport.NVIndex(
            index: "0x" + self.hex(nvPublic.index),
            attributes: "0x" + self.hex(nvPublic.attributes.rawValue),
            attributeNames: self.attributeNames.filter { nvPublic.attributes.contains($0.0) }.map(\.1),
            type: type,
            size: Int(nvPublic.dataSize)
        )
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
    }
}
