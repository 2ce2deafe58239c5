import Foundation
import VMIdentity

/// What `vtpm-state inspect` reports about a state directory. Its `Codable` form is the `--json`
/// output (``formatVersion`` 1; fields are only ever added). No field holds a seed, a private key or
/// NV contents other than EK certificates' public fields.
public struct StateReport: Codable, Hashable, Sendable {
    /// The identity recorded in `vtpm-instance.permall`.
    public struct Identity: Codable, Hashable, Sendable {
        /// False for a directory without a marker (made by swtpm, not yet adopted): identity "unknown".
        public var recorded: Bool
        /// The VM's UUID, nil when unknown.
        public var vmID: String?
        /// The generation, nil when unknown.
        public var generation: UInt64?
        /// The VM this one was cloned from, if any.
        public var parent: String?
        /// When the marker was first written (ISO 8601), nil when unknown.
        public var createdAt: String?
        /// The program that wrote the marker.
        public var creator: String?
    }

    /// One state file and its integrity.
    public struct File: Codable, Hashable, Sendable {
        /// File name inside the directory.
        public var name: String
        /// Size in bytes.
        public var size: Int
        /// "ok", "damaged" or "missing".
        public var status: String
        /// Why it is damaged or missing.
        public var error: String?
        /// "vtpmd" (integrity record present) or "swtpm" (none), when the file decoded.
        public var writer: String?
        /// vtpmd's write generation from the integrity record.
        public var writeGeneration: UInt64?
        /// Whether the file is encrypted (`--key`).
        public var encrypted: Bool?

        /// Creates a file entry.
        public init(
            name: String,
            size: Int,
            status: String,
            error: String? = nil,
            writer: String? = nil,
            writeGeneration: UInt64? = nil,
            encrypted: Bool? = nil
        ) {
            self.name = name
            self.size = size
            self.status = status
            self.error = error
            self.writer = writer
            self.writeGeneration = writeGeneration
            self.encrypted = encrypted
        }
    }

    /// The libtpms permanent-state blob's own header.
    public struct LibTPMSFormat: Codable, Hashable, Sendable {
        /// PERSISTENT_ALL's version (libtpms 0.9 writes 3).
        public var permanentStateVersion: UInt16
        /// PERSISTENT_ALL's magic, hex (0xab364723).
        public var magic: String
        /// Whether the magic is libtpms' PERSISTENT_ALL magic.
        public var recognized: Bool
    }

    /// An EK certificate read from NV.
    public struct Certificate: Codable, Hashable, Sendable {
        public var subject: String
        public var issuer: String
        /// Serial number, lower-case hex.
        public var serial: String
        public var notBefore: String
        public var notAfter: String
        /// The VM-identity extension's fields (swift-vtpm certificates only).
        public var vmID: String?
        public var generation: UInt64?
        public var parentVMID: String?
        public var parentGeneration: UInt64?
        /// SHA-256 of the certified key's SubjectPublicKeyInfo (DER), hex.
        public var publicKeySHA256: String?
        /// Why the certificate could not be parsed.
        public var error: String?
    }

    /// One endorsement key recomputed from the state with the TCG default template.
    public struct EndorsementKey: Codable, Hashable, Sendable {
        /// "rsa2048" or "ecc-nist-p256".
        public var type: String
        /// SHA-256 of the key's SubjectPublicKeyInfo (DER), hex: equals
        /// `openssl pkey -pubin -outform DER | sha256sum` of the EK.
        public var publicKeySHA256: String?
        /// Why the EK could not be recomputed (e.g. an endorsement authorization is set).
        public var error: String?
        /// The certificate's NV index, hex.
        public var certificateIndex: String
        /// The certificate there, nil when the index is not defined.
        public var certificate: Certificate?
        /// Whether the certificate certifies this key; nil when either is missing.
        public var certificateMatchesKey: Bool?
    }

    /// One defined NV index.
    public struct NVIndex: Codable, Hashable, Sendable {
        /// The handle, hex (`0x01c00002`).
        public var index: String
        /// TPMA_NV, hex.
        public var attributes: String
        /// The attribute names, tpm2-tools style (`ppwrite`, `authread`, ...).
        public var attributeNames: [String]
        /// The index type: ordinary, counter, bits, extend, pinfail, pinpass.
        public var type: String
        /// dataSize in bytes.
        public var size: Int
    }

    /// One PCR bank.
    public struct PCRBank: Codable, Hashable, Sendable {
        /// "sha1", "sha256", "sha384", "sha512".
        public var algorithm: String
        /// The allocated PCRs (empty: the bank exists but is not active).
        public var pcrs: [Int]
    }

    /// Version of this JSON layout.
    public var formatVersion = 1
    /// The state directory.
    public var state: String
    /// A running vtpmd or swtpm held the directory: it was read without the lock (each file as last
    /// written; nothing was changed).
    public var inUse: Bool?
    /// The recorded identity.
    public var identity: Identity
    /// The state files and their integrity.
    public var files: [File]
    /// nil when the permanent state is damaged.
    public var libtpms: LibTPMSFormat?
    /// Empty when the state could not be loaded.
    public var endorsementKeys: [EndorsementKey]
    /// The defined NV indices.
    public var nvIndices: [NVIndex]
    /// The PCR banks.
    public var pcrBanks: [PCRBank]
    /// Why the TPM could not be loaded (damaged file, libtpms refused it), else nil.
    public var tpmError: String?

    /// Whether every file decoded and the TPM loaded.
    public var isIntact: Bool { self.files.allSatisfy { $0.status == "ok" } && self.tpmError == nil }
}
