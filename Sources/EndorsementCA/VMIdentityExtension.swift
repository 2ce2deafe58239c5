import Foundation
import SwiftASN1
import VMIdentity
import X509

/// The private, non-critical EK-certificate extension that names the VM identity a TPM's endorsement
/// hierarchy belongs to.
///
/// OID 1.3.6.1.4.1.32473.1.1 (a placeholder arc, see `README.md`). DER:
/// ```
/// VMIdentity ::= SEQUENCE {
///     vmID        UTF8String,          -- lower-case RFC 4122 text, e.g. "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
///                                      -- or a vm-id name as given (Proxmox: "101")
///     generation  INTEGER (0..MAX),    -- fits in 64 bits
///     parent      SEQUENCE {           -- present for a clone or rollback: the identity the state came from
///         vmID        UTF8String,
///         generation  INTEGER (0..MAX) } OPTIONAL }
/// ```
/// UTF8Strings rather than 16-byte OCTET STRINGs so that the UUIDs stay legible in the hex dump that
/// `openssl x509 -text` prints for an extension it does not know. A later incompatible layout gets a new OID.
struct VMIdentityExtension: Hashable, Sendable {
    var vmID: VMID
    var generation: UInt64
    var parentVMID: VMID?
    var parentGeneration: UInt64?

    func encode() throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.appendConstructedNode(identifier: .sequence) { coder in
            try coder.serialize(ASN1UTF8String(self.vmID.description))
            try coder.serialize(self.generation)
            if let parentVMID = self.parentVMID, let parentGeneration = self.parentGeneration {
                try coder.appendConstructedNode(identifier: .sequence) { inner in
                    try inner.serialize(ASN1UTF8String(parentVMID.description))
                    try inner.serialize(parentGeneration)
                }
            }
        }
        return serializer.serializedBytes
    }

    init(vmID: VMID, generation: UInt64, parentVMID: VMID?, parentGeneration: UInt64?) {
        self.vmID = vmID
        self.generation = generation
        self.parentVMID = parentVMID
        self.parentGeneration = parentGeneration
    }

    init(derEncoded bytes: ArraySlice<UInt8>) throws {
        let root = try DER.parse(bytes)
        (self.vmID, self.generation, self.parentVMID, self.parentGeneration) = try DER.sequence(
            root,
            identifier: .sequence
        ) { nodes in
            let (vmID, generation) = try Self.readPair(&nodes)
            var parentVMID: VMID? = nil
            var parentGeneration: UInt64? = nil
            if let parentNode = nodes.next() {
                (parentVMID, parentGeneration) = try DER.sequence(parentNode, identifier: .sequence) { inner in
                    try Self.readPair(&inner)
                }
            }
            return (vmID, generation, parentVMID, parentGeneration)
        }
    }

    private static func readPair(_ nodes: inout ASN1NodeCollection.Iterator) throws -> (VMID, UInt64) {
        let text = String(try ASN1UTF8String(derEncoded: &nodes))
        guard let vmID = VMID(text) else {
            throw EndorsementCAError(.malformedCertificate, "VM identity extension: '\(text)' is not a vm-id")
        }
        let generation = try UInt64(derEncoded: &nodes)
        return (vmID, generation)
    }
}
