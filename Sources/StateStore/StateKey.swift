import Crypto
import TPMWire
import _CryptoExtras

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An AES-CBC key for swtpm's state-file / migration-blob encryption (128 or 256 bits).
/// Never printed: `description` names only the size.
public struct StateKey: Sendable, Hashable, CustomStringConvertible {
    public enum Size: Int, Sendable {
        case aes128 = 16
        case aes256 = 32
    }
    /// How a passphrase becomes a key.
    public enum KeyDerivation: Sendable { case pbkdf2, sha512 }

    let bytes: [UInt8]
    public var size: Size { self.bytes.count == 32 ? .aes256 : .aes128 }

    /// A key from raw bytes (16 or 32 of them).
    public init(bytes: [UInt8]) throws(StateStoreError) {
        guard bytes.count == 16 || bytes.count == 32 else {
            throw StateStoreError(.invalidKey, "a key must be 16 or 32 bytes, got \(bytes.count)")
        }
        self.bytes = bytes
    }

    /// A key from swtpm's hex key-file syntax: optional `0x`, exactly 32 or 64 hex digits matching
    /// `size`, optional trailing whitespace.
    public init(hexFile contents: [UInt8], size: Size) throws(StateStoreError) {
        var text = String(decoding: contents, as: UTF8.self)
        while let last = text.last, last.isWhitespace { text.removeLast() }
        if text.hasPrefix("0x") || text.hasPrefix("0X") { text.removeFirst(2) }
        guard text.count == size.rawValue * 2, let bytes = [UInt8](hexString: text) else {
            throw StateStoreError(
                .invalidKey,
                "key file must hold exactly \(size.rawValue * 2) hex digits for a \(size.rawValue * 8)-bit key"
            )
        }
        try self.init(bytes: bytes)
    }

    /// A key derived from a passphrase the way swtpm does: PBKDF2-HMAC-SHA512 with salt "swtpm"
    /// and 1000 iterations, or the first key-length bytes of SHA-512(passphrase).
    public init(passphrase: [UInt8], size: Size, derivation: KeyDerivation) throws(StateStoreError) {
        switch derivation {
        case .sha512:
            try self.init(bytes: Array(SHA512.hash(data: passphrase).prefix(size.rawValue)))
        case .pbkdf2:
            try self.init(
                bytes: Self.pbkdf2SHA512(passphrase, salt: Array("swtpm".utf8), rounds: 1000, length: size.rawValue)
            )
        }
    }

    /// PBKDF2-HMAC-SHA512 for outputs of at most one block (64 bytes), which is all a key needs.
    static func pbkdf2SHA512(_ password: [UInt8], salt: [UInt8], rounds: Int, length: Int) -> [UInt8] {
        precondition(length <= 64 && rounds >= 1)
        let key = SymmetricKey(data: password)
        var u = Array(HMAC<SHA512>.authenticationCode(for: salt + [0, 0, 0, 1], using: key))
        var t = u
        for _ in 1..<rounds {
            u = Array(HMAC<SHA512>.authenticationCode(for: u, using: key))
            for i in 0..<t.count { t[i] ^= u[i] }
        }
        return Array(t.prefix(length))
    }

    public var description: String { "AES-\(self.bytes.count * 8) key" }

    /// Decrypts swtpm's "version 1" encryption (files without a header, blobs with a version-1
    /// header): AES-CBC with a zero IV, PKCS#7 padding, plaintext = SHA-256(payload) ‖ payload.
    func decryptLegacy(_ ciphertext: [UInt8]) throws(StateStoreError) -> [UInt8] {
        guard !ciphertext.isEmpty, ciphertext.count % 16 == 0 else {
            throw StateStoreError(
                .malformed,
                "legacy encrypted state of \(ciphertext.count) bytes is not whole AES blocks"
            )
        }
        let plain: [UInt8]
        do {
            let iv = try AES._CBC.IV(ivBytes: [UInt8](repeating: 0, count: 16))
            plain = Array(
                try AES._CBC.decrypt(ciphertext, using: SymmetricKey(data: self.bytes), iv: iv, noPadding: true)
            )
        } catch {
            throw StateStoreError(.decryption, "AES-CBC decryption failed: \(error)")
        }
        guard let pad = plain.last, pad >= 1, pad <= 16, Int(pad) <= plain.count,
            plain.suffix(Int(pad)).allSatisfy({ $0 == pad }), plain.count - Int(pad) >= 32
        else {
            throw StateStoreError(.decryption, "bad padding after decryption: wrong key or corrupted state")
        }
        let body = Array(plain.dropLast(Int(pad)))
        let digest = Array(body.prefix(32))
        let payload = Array(body.dropFirst(32))
        guard Array(SHA256.hash(data: payload)) == digest else {
            throw StateStoreError(.decryption, "SHA-256 mismatch after decryption: wrong key or corrupted state")
        }
        return payload
    }

    /// One encryption layer: AES-CBC with a fresh IV of key length (first 16 bytes used), padding to
    /// a multiple of the key length, HMAC-SHA256 (same key) over ciphertext ‖ IV.
    /// Returns the records [ciphertext, HMAC, IV] with the given tags.
    func encryptLayer(
        _ plain: [UInt8],
        dataTag: UInt16,
        ivTag: UInt16
    ) throws(StateStoreError) -> [BlobContainer.Record] {
        let blockLength = self.bytes.count
        let pad = blockLength - plain.count % blockLength
        var padded = plain
        padded.append(contentsOf: repeatElement(UInt8(pad), count: pad))
        var generator = SystemRandomNumberGenerator()
        let iv = (0..<blockLength).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let ciphertext: [UInt8]
        do {
            let cbcIV = try AES._CBC.IV(ivBytes: Array(iv.prefix(16)))
            ciphertext = Array(
                try AES._CBC.encrypt(padded, using: SymmetricKey(data: self.bytes), iv: cbcIV, noPadding: true)
            )
        } catch {
            throw StateStoreError(.decryption, "AES-CBC encryption failed: \(error)")
        }
        let mac = Array(HMAC<SHA256>.authenticationCode(for: ciphertext + iv, using: SymmetricKey(data: self.bytes)))
        return [
            BlobContainer.Record(tag: dataTag, value: ciphertext),
            BlobContainer.Record(tag: BlobContainer.Tag.hmac, value: mac),
            BlobContainer.Record(tag: ivTag, value: iv),
        ]
    }

    /// Reverses `encryptLayer`: checks the HMAC first (constant time), then decrypts and unpads.
    func decryptLayer(
        _ records: [BlobContainer.Record],
        dataTag: UInt16,
        ivTag: UInt16
    ) throws(StateStoreError)
        -> [UInt8]
    {
        guard let ciphertext = records.first(where: { $0.tag == dataTag })?.value,
            let mac = records.first(where: { $0.tag == BlobContainer.Tag.hmac })?.value
        else {
            throw StateStoreError(.malformed, "encrypted blob lacks its ciphertext or HMAC record")
        }
        let iv = records.first(where: { $0.tag == ivTag })?.value ?? []
        guard iv.isEmpty || iv.count >= 16, iv.count <= 64 else {
            throw StateStoreError(.malformed, "encrypted blob has an IV of \(iv.count) bytes")
        }
        let key = SymmetricKey(data: self.bytes)
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: ciphertext + iv, using: key) else {
            throw StateStoreError(.decryption, "HMAC mismatch: wrong key or corrupted blob")
        }
        guard !ciphertext.isEmpty, ciphertext.count % 16 == 0 else {
            throw StateStoreError(.malformed, "ciphertext of \(ciphertext.count) bytes is not whole AES blocks")
        }
        let plain: [UInt8]
        do {
            let cbcIV = try AES._CBC.IV(ivBytes: iv.isEmpty ? [UInt8](repeating: 0, count: 16) : Array(iv.prefix(16)))
            plain = Array(try AES._CBC.decrypt(ciphertext, using: key, iv: cbcIV, noPadding: true))
        } catch {
            throw StateStoreError(.decryption, "AES-CBC decryption failed: \(error)")
        }
        guard let pad = plain.last, pad >= 1, Int(pad) <= max(self.bytes.count, 16), Int(pad) <= plain.count,
            plain.suffix(Int(pad)).allSatisfy({ $0 == pad })
        else {
            throw StateStoreError(.decryption, "bad padding after decryption")
        }
        return Array(plain.dropLast(Int(pad)))
    }
}
