/// What ``RekeyProcedure/run(on:permanentState:volatileState:historyEvent:issueCertificates:)`` produced.
public struct RekeyResult: Sendable {
    /// The new permanent blob P1 (new EPS, certificates, identity indices; non-orderly).
    public var permanentState: [UInt8]
    /// The patched volatile blob V1 the engine now runs with.
    public var volatileState: [UInt8]
    /// The new RSA 2048 EK's public area, as a marshalled TPM2B_PUBLIC.
    public var rsaEKPublic: [UInt8]
    /// The new ECC NIST P-256 EK's public area, as a marshalled TPM2B_PUBLIC.
    public var eccEKPublic: [UInt8]
    /// The identity counter before the increment; nil when the index was new or never written.
    public var previousCounter: UInt64?
    /// The identity counter after the increment.
    public var counter: UInt64
    /// The history index's value after the extend.
    public var history: [UInt8]
    /// NV indices that existed and were deleted and defined again (EK certificates, or identity
    /// indices that had another definition).
    public var replacedIndices: [UInt32]
    /// Transient objects flushed in the warm phase.
    public var flushedHandles: [UInt32]
    public var timings: RekeyTimings
}

/// Durations of the procedure's parts.
public struct RekeyTimings: Sendable, Hashable {
    /// Cold phase: init, Startup, ChangeEPS, EKs, certificates, NV, GetState, terminate.
    public var cold: Duration = .zero
    public var changeEPS: Duration = .zero
    /// TPM2_CreatePrimary + FlushContext of the RSA 2048 EK.
    public var rsaEK: Duration = .zero
    /// TPM2_CreatePrimary + FlushContext of the ECC P-256 EK.
    public var eccEK: Duration = .zero
    /// The caller's certificate closure.
    public var certificates: Duration = .zero
    /// EK certificate indices, counter and history.
    public var nvWrites: Duration = .zero
    public var seedPatch: Duration = .zero
    /// Warm phase: SetState ×2, init, flush.
    public var warm: Duration = .zero
    /// The whole procedure.
    public var total: Duration = .zero
}
