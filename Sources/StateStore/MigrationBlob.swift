/// GET/SET_STATEBLOB blobs (the form that travels in QEMU snapshots and migration streams), in
/// swtpm's format: `hdr(MIGRATION_DATA…) | MIGRATION_DATA(inner)` or, with a migration key,
/// `hdr(MIGRATION_DATA|MIGRATION_ENCRYPTED…) | ENCRYPTED_MIGRATION_DATA | HMAC | IV`. The inner
/// record stream is `DATA(libtpms bytes)` or, when the state-key layer is kept,
/// `ENCRYPTED_DATA | HMAC | IV`.
public enum MigrationBlob {
    /// Wraps libtpms bytes for GET_STATEBLOB.
    /// - Parameters:
    ///   - keepStateKeyLayer: true when the client did not ask for a decrypted blob and a state key
    ///     is configured (the reply then carries `PTM_STATE_FLAG_ENCRYPTED`).
    public static func encode(
        _ plain: [UInt8],
        stateKey: StateKey?,
        keepStateKeyLayer: Bool,
        migrationKey: StateKey?
    ) throws(StateStoreError) -> [UInt8] {
        var flags: BlobContainer.Flags = [.migrationData]
        var inner: [BlobContainer.Record]
        if keepStateKeyLayer, let stateKey {
            flags.insert(.encrypted)
            if stateKey.size == .aes256 { flags.insert(.encrypted256BitKey) }
            inner = try stateKey.encryptLayer(
                plain,
                dataTag: BlobContainer.Tag.encryptedData,
                ivTag: BlobContainer.Tag.ivEncryptedData
            )
        } else {
            inner = [BlobContainer.Record(tag: BlobContainer.Tag.data, value: plain)]
        }
        let innerBytes = BlobContainer.encodeRecords(inner)
        let outer: [BlobContainer.Record]
        if let migrationKey {
            flags.insert(.migrationEncrypted)
            if migrationKey.size == .aes256 { flags.insert(.migration256BitKey) }
            outer = try migrationKey.encryptLayer(
                innerBytes,
                dataTag: BlobContainer.Tag.encryptedMigrationData,
                ivTag: BlobContainer.Tag.ivEncryptedMigrationData
            )
        } else {
            outer = [BlobContainer.Record(tag: BlobContainer.Tag.migrationData, value: innerBytes)]
        }
        return BlobContainer(flags: flags, records: outer).encoded
    }

    /// How strictly `decode` treats blobs that are not protected by a configured key.
    public enum Policy: Sendable {
        /// swtpm's behaviour: a plain blob is accepted even when a migration key is configured.
        case lenient
        /// R11: with a migration key configured, only blobs encrypted with it are accepted.
        case strict
    }

    /// Unwraps a SET_STATEBLOB blob to libtpms bytes.
    /// - Parameter stateFlagEncrypted: the request's `PTM_STATE_FLAG_ENCRYPTED` bit.
    public static func decode(
        _ blob: [UInt8],
        stateFlagEncrypted: Bool,
        stateKey: StateKey?,
        migrationKey: StateKey?,
        policy: Policy = .lenient
    ) throws(StateStoreError) -> [UInt8] {
        switch BlobContainer.shape(of: blob) {
        case .headerless:
            throw StateStoreError(.malformed, "blob has no swtpm header")
        case .legacyHeader(let flags):
            // Version 1: the body is one layer, v1-encrypted with the migration key, or else the
            // state key, or plain.
            let body = Array(blob.dropFirst(BlobContainer.headerSize))
            if flags.contains(.migrationEncrypted) {
                guard let migrationKey else {
                    throw StateStoreError(
                        .keyMissing,
                        "the blob is encrypted with a migration key and none is configured"
                    )
                }
                return try migrationKey.decryptLegacy(body)
            }
            if migrationKey != nil, policy == .strict {
                throw StateStoreError(
                    .keyMissing,
                    "a migration key is configured and the blob is not encrypted with it"
                )
            }
            if flags.contains(.encrypted) || stateFlagEncrypted {
                guard let stateKey else {
                    throw StateStoreError(
                        .keyMissing,
                        "the blob is encrypted with a state key and no --key is configured"
                    )
                }
                return try stateKey.decryptLegacy(body)
            }
            return body
        case .current:
            break
        }
        let container = try BlobContainer(decoding: blob)
        var innerRecords: [BlobContainer.Record]
        if container.flags.contains(.migrationEncrypted) {
            guard let migrationKey else {
                throw StateStoreError(.keyMissing, "the blob is encrypted with a migration key and none is configured")
            }
            guard (migrationKey.size == .aes256) == container.flags.contains(.migration256BitKey) else {
                throw StateStoreError(.keyMismatch, "the blob's migration key has another size")
            }
            let innerBytes = try migrationKey.decryptLayer(
                container.records,
                dataTag: BlobContainer.Tag.encryptedMigrationData,
                ivTag: BlobContainer.Tag.ivEncryptedMigrationData
            )
            innerRecords = try BlobContainer.decodeRecords(innerBytes)
        } else {
            if migrationKey != nil, policy == .strict {
                throw StateStoreError(
                    .keyMissing,
                    "a migration key is configured and the blob is not encrypted with it"
                )
            }
            if container.flags.contains(.migrationData) {
                guard let inner = container.value(for: BlobContainer.Tag.migrationData) else {
                    throw StateStoreError(.malformed, "blob flagged MIGRATION_DATA has no such record")
                }
                innerRecords = try BlobContainer.decodeRecords(inner)
            } else {
                innerRecords = container.records
            }
        }
        if container.flags.contains(.encrypted) || stateFlagEncrypted {
            guard let stateKey else {
                throw StateStoreError(.keyMissing, "the blob is encrypted with a state key and no --key is configured")
            }
            guard (stateKey.size == .aes256) == container.flags.contains(.encrypted256BitKey) else {
                throw StateStoreError(.keyMismatch, "the blob's state key has another size")
            }
            return try stateKey.decryptLayer(
                innerRecords,
                dataTag: BlobContainer.Tag.encryptedData,
                ivTag: BlobContainer.Tag.ivEncryptedData
            )
        }
        guard let plain = innerRecords.first(where: { $0.tag == BlobContainer.Tag.data })?.value else {
            throw StateStoreError(.malformed, "blob has no data record")
        }
        return plain
    }
}
