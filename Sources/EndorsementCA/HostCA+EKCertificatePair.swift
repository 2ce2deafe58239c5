public import VMIdentity

extension HostCA {
    /// Issues the two EK certificates of one generation (RSA 2048 and ECC P-256), as the rekey procedure's
    /// certificate closure needs them. Shared by vtpmd and `vtpm-state`.
    /// - Parameters:
    ///   - rsaEKPublic: The RSA EK's marshalled TPM2B_PUBLIC (TPM2_CreatePrimary's `outPublic`).
    ///   - eccEKPublic: The ECC EK's marshalled TPM2B_PUBLIC.
    ///   - vmID: The VM the endorsement hierarchy belongs to.
    ///   - generation: The VM's generation.
    ///   - parentVMID: For a clone or rollback, the source VM; nil otherwise.
    ///   - parentGeneration: For a clone or rollback, the source's generation; nil otherwise.
    /// - Returns: The two certificates, DER.
    /// - Throws: ``EndorsementCAError`` for a public area that does not parse or a failed signature.
    public func issueEKCertificates(
        rsaEKPublic: [UInt8],
        eccEKPublic: [UInt8],
        vmID: VMID,
        generation: UInt64,
        parentVMID: VMID? = nil,
        parentGeneration: UInt64? = nil
    ) throws -> (rsaCertDER: [UInt8], eccCertDER: [UInt8]) {
        func issue(_ tpm2bPublic: [UInt8]) throws -> [UInt8] {
            try self.issueEKCertificate(
                EKCertificateRequest(
                    publicKey: try EKPublicKey(tpm2bPublic: tpm2bPublic),
                    vmID: vmID,
                    generation: generation,
                    parentVMID: parentVMID,
                    parentGeneration: parentVMID == nil ? nil : parentGeneration
                )
            )
        }
        return (try issue(rsaEKPublic), try issue(eccEKPublic))
    }
}
