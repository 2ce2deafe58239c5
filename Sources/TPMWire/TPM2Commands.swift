/// Well-known TPM 2.0 handles (TPM 2.0 Part 2, 7.4 and 7.5).
public enum TPM2Handle {
    /// TPM_RH_OWNER: the storage hierarchy.
    public static let owner: UInt32 = 0x4000_0001
    /// TPM_RS_PW: the password authorization session.
    public static let passwordSession: UInt32 = 0x4000_0009
    /// TPM_RH_ENDORSEMENT: the endorsement hierarchy.
    public static let endorsement: UInt32 = 0x4000_000B
    /// TPM_RH_PLATFORM: the platform hierarchy.
    public static let platform: UInt32 = 0x4000_000C
    /// TPM_RH_NULL.
    public static let null: UInt32 = 0x4000_0007
    /// The first transient object handle (TPM_HT_TRANSIENT << 24).
    public static let firstTransient: UInt32 = 0x8000_0000
    /// The first persistent object handle (TPM_HT_PERSISTENT << 24).
    public static let firstPersistent: UInt32 = 0x8100_0000
    /// The TCG EK Credential Profile's NV index for the RSA 2048 EK certificate.
    public static let rsaEKCertificate: UInt32 = 0x01C0_0002
    /// The TCG EK Credential Profile's NV index for the ECC NIST P-256 EK certificate.
    public static let eccEKCertificate: UInt32 = 0x01C0_000A
}

/// TPM 2.0 command codes (TPM_CC) of the commands vtpmd issues itself.
public enum TPM2CommandCode {
    public static let evictControl: UInt32 = 0x120
    public static let nvUndefineSpace: UInt32 = 0x122
    public static let changeEPS: UInt32 = 0x124
    public static let hierarchyChangeAuth: UInt32 = 0x129
    public static let nvDefineSpace: UInt32 = 0x12A
    public static let createPrimary: UInt32 = 0x131
    public static let nvIncrement: UInt32 = 0x134
    public static let nvExtend: UInt32 = 0x136
    public static let nvWrite: UInt32 = 0x137
    public static let startup: UInt32 = 0x144
    public static let nvRead: UInt32 = 0x14E
    public static let create: UInt32 = 0x153
    public static let load: UInt32 = 0x157
    public static let unseal: UInt32 = 0x15E
    public static let flushContext: UInt32 = 0x165
    public static let nvReadPublic: UInt32 = 0x169
    public static let readPublic: UInt32 = 0x173
    public static let getCapability: UInt32 = 0x17A
    public static let pcrRead: UInt32 = 0x17E
    public static let pcrExtend: UInt32 = 0x182

    /// "TPM2_NV_Write (0x137)" for messages.
    public static func name(_ code: UInt32) -> String {
        let name: String =
            switch code {
            case evictControl: "TPM2_EvictControl"
            case nvUndefineSpace: "TPM2_NV_UndefineSpace"
            case changeEPS: "TPM2_ChangeEPS"
            case hierarchyChangeAuth: "TPM2_HierarchyChangeAuth"
            case pcrAllocate: "TPM2_PCR_Allocate"
            case nvDefineSpace: "TPM2_NV_DefineSpace"
            case createPrimary: "TPM2_CreatePrimary"
            case nvIncrement: "TPM2_NV_Increment"
            case nvExtend: "TPM2_NV_Extend"
            case nvWrite: "TPM2_NV_Write"
            case startup: "TPM2_Startup"
            case nvRead: "TPM2_NV_Read"
            case create: "TPM2_Create"
            case load: "TPM2_Load"
            case unseal: "TPM2_Unseal"
            case flushContext: "TPM2_FlushContext"
            case nvReadPublic: "TPM2_NV_ReadPublic"
            case readPublic: "TPM2_ReadPublic"
            case getCapability: "TPM2_GetCapability"
            case pcrRead: "TPM2_PCR_Read"
            case pcrExtend: "TPM2_PCR_Extend"
            default: "TPM_CC"
            }
        return "\(name) (0x\(String(code, radix: 16)))"
    }
}

/// TPM 2.0 algorithm identifiers (TPM_ALG_ID) used in templates.
public enum TPM2Algorithm {
    public static let rsa: UInt16 = 0x0001
    public static let sha1: UInt16 = 0x0004
    public static let aes: UInt16 = 0x0006
    public static let keyedHash: UInt16 = 0x0008
    public static let sha256: UInt16 = 0x000B
    public static let sha384: UInt16 = 0x000C
    public static let sha512: UInt16 = 0x000D
    public static let null: UInt16 = 0x0010
    public static let ecc: UInt16 = 0x0023
    public static let cfb: UInt16 = 0x0043
    /// TPM_ECC_NIST_P256 (a TPM_ECC_CURVE, not an algorithm).
    public static let eccNISTP256: UInt16 = 0x0003
}

/// A password authorization (TPM_RS_PW) for one handle of a command: the empty password unless given.
public struct TPM2PasswordAuthorization: Sendable, Hashable {
    public var password: [UInt8]

    public init(password: [UInt8] = []) {
        self.password = password
    }

    /// The empty password.
    public static let empty = TPM2PasswordAuthorization()

    /// Appends TPMS_AUTH_COMMAND: TPM_RS_PW, empty nonce, attributes 0, the password as hmac.
    func encode(into writer: inout ByteWriter) {
        writer.write(TPM2Handle.passwordSession)
        writer.writeSized16([])
        writer.write(UInt8(0))
        writer.writeSized16(self.password)
    }
}

/// Builders for the TPM 2.0 commands vtpmd sends to libtpms itself (the clone-rekey procedure and
/// its tests). Each returns a complete command frame. Commands that need authorization carry one
/// password session per authorized handle (TPM_RS_PW, the empty password unless given).
public enum TPM2Commands {
    /// TPM_SU_CLEAR / TPM_SU_STATE for TPM2_Startup.
    public enum StartupType: UInt16, Sendable {
        case clear = 0x0000
        case state = 0x0001
    }

    /// TPM2_Startup (no sessions).
    public static func startup(_ type: StartupType) -> [UInt8] {
        var body = ByteWriter(capacity: 2)
        body.write(type.rawValue)
        return TPMFrame.command(code: TPM2CommandCode.startup, body: body.bytes)
    }

    /// TPM2_Shutdown of `type` (CLEAR or STATE).
    public static func shutdown(_ type: StartupType) -> [UInt8] {
        var body = ByteWriter(capacity: 2)
        body.write(type.rawValue)
        return TPMFrame.command(code: 0x145, body: body.bytes)
    }

    /// TPM2_ChangeEPS under platform authorization.
    public static func changeEPS(platformAuth: TPM2PasswordAuthorization = .empty) -> [UInt8] {
        self.authorized(TPM2CommandCode.changeEPS, handles: [TPM2Handle.platform], auths: [platformAuth])
    }

    /// TPM2_CreatePrimary with an empty userAuth and sensitive data, no outsideInfo and no creation PCRs.
    /// - Parameters:
    ///   - hierarchy: TPM_RH_ENDORSEMENT, TPM_RH_OWNER, TPM_RH_PLATFORM or TPM_RH_NULL.
    ///   - publicArea: the template, a TPMT_PUBLIC (without the TPM2B size).
    ///   - auth: the hierarchy's authorization.
    public static func createPrimary(
        hierarchy: UInt32,
        publicArea: [UInt8],
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: publicArea.count + 16)
        Self.writeEmptySensitiveCreate(into: &parameters, data: [])
        parameters.writeSized16(publicArea)
        parameters.writeSized16([])  // outsideInfo
        parameters.write(UInt32(0))  // creationPCR: TPML_PCR_SELECTION, count 0
        return self.authorized(
            TPM2CommandCode.createPrimary,
            handles: [hierarchy],
            auths: [auth],
            parameters: parameters.bytes
        )
    }

    /// TPM2_Create under a loaded parent: an ordinary object or, with `sensitiveData`, a sealed data object.
    public static func create(
        parent: UInt32,
        publicArea: [UInt8],
        sensitiveData: [UInt8] = [],
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: publicArea.count + sensitiveData.count + 16)
        Self.writeEmptySensitiveCreate(into: &parameters, data: sensitiveData)
        parameters.writeSized16(publicArea)
        parameters.writeSized16([])
        parameters.write(UInt32(0))
        return self.authorized(TPM2CommandCode.create, handles: [parent], auths: [auth], parameters: parameters.bytes)
    }

    /// TPM2_Load of a TPM2B_PRIVATE and a TPM2B_PUBLIC (both given without their size) under `parent`.
    public static func load(
        parent: UInt32,
        privateArea: [UInt8],
        publicArea: [UInt8],
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: privateArea.count + publicArea.count + 4)
        parameters.writeSized16(privateArea)
        parameters.writeSized16(publicArea)
        return self.authorized(TPM2CommandCode.load, handles: [parent], auths: [auth], parameters: parameters.bytes)
    }

    /// TPM2_Unseal of a loaded sealed data object.
    public static func unseal(item: UInt32, auth: TPM2PasswordAuthorization = .empty) -> [UInt8] {
        self.authorized(TPM2CommandCode.unseal, handles: [item], auths: [auth])
    }

    /// TPM2_EvictControl: makes a transient object persistent at `persistentHandle`, or evicts a
    /// persistent one (`object == persistentHandle`).
    public static func evictControl(
        authHandle: UInt32 = TPM2Handle.owner,
        object: UInt32,
        persistentHandle: UInt32,
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: 4)
        parameters.write(persistentHandle)
        return self.authorized(
            TPM2CommandCode.evictControl,
            handles: [authHandle, object],
            auths: [auth],
            parameters: parameters.bytes
        )
    }

    /// TPM2_HierarchyChangeAuth: sets the authValue of `hierarchy`.
    public static func hierarchyChangeAuth(
        hierarchy: UInt32,
        newAuth: [UInt8],
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: newAuth.count + 2)
        parameters.writeSized16(newAuth)
        return self.authorized(
            TPM2CommandCode.hierarchyChangeAuth,
            handles: [hierarchy],
            auths: [auth],
            parameters: parameters.bytes
        )
    }

    /// TPM2_ReadPublic (no sessions).
    public static func readPublic(_ object: UInt32) -> [UInt8] {
        var body = ByteWriter(capacity: 4)
        body.write(object)
        return TPMFrame.command(code: TPM2CommandCode.readPublic, body: body.bytes)
    }

    /// TPM2_FlushContext (no sessions).
    public static func flushContext(_ handle: UInt32) -> [UInt8] {
        var body = ByteWriter(capacity: 4)
        body.write(handle)
        return TPMFrame.command(code: TPM2CommandCode.flushContext, body: body.bytes)
    }

    /// TPM2_GetCapability(TPM_CAP_HANDLES) from `first` (0x80000000: transient objects).
    public static func getHandles(first: UInt32 = TPM2Handle.firstTransient, count: UInt32 = 64) -> [UInt8] {
        var body = ByteWriter(capacity: 12)
        body.write(UInt32(0x0000_0001))  // TPM_CAP_HANDLES
        body.write(first)
        body.write(count)
        return TPMFrame.command(code: TPM2CommandCode.getCapability, body: body.bytes)
    }

    /// TPM2_PCR_Extend of one PCR with one SHA-256 digest.
    public static func pcrExtend(
        pcr: UInt32,
        sha256Digest: [UInt8],
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: 38)
        parameters.write(UInt32(1))  // TPML_DIGEST_VALUES count
        parameters.write(TPM2Algorithm.sha256)
        parameters.write(bytes: sha256Digest)
        return self.authorized(TPM2CommandCode.pcrExtend, handles: [pcr], auths: [auth], parameters: parameters.bytes)
    }

    /// TPM2_PCR_Read of one PCR (0...23) in the SHA-256 bank (no sessions).
    public static func pcrReadSHA256(pcr: Int) -> [UInt8] {
        precondition((0..<24).contains(pcr), "PCR index out of range")
        var select: [UInt8] = [0, 0, 0]
        select[pcr / 8] = 1 << UInt8(pcr % 8)
        var body = ByteWriter(capacity: 10)
        body.write(UInt32(1))  // TPML_PCR_SELECTION count
        body.write(TPM2Algorithm.sha256)
        body.write(UInt8(3))
        body.write(bytes: select)
        return TPMFrame.command(code: TPM2CommandCode.pcrRead, body: body.bytes)
    }

    /// TPM2_NV_DefineSpace with an empty index authValue unless given.
    /// - Parameter authHandle: TPM_RH_PLATFORM for a platform-created index (TPMA_NV_PLATFORMCREATE), else TPM_RH_OWNER.
    public static func nvDefineSpace(
        authHandle: UInt32 = TPM2Handle.platform,
        nvPublic: NVPublic,
        indexAuth: [UInt8] = [],
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: 64)
        parameters.writeSized16(indexAuth)
        parameters.writeSized16(nvPublic.encoded())
        return self.authorized(
            TPM2CommandCode.nvDefineSpace,
            handles: [authHandle],
            auths: [auth],
            parameters: parameters.bytes
        )
    }

    /// TPM2_NV_UndefineSpace. The platform may delete any index; the owner only an owner-created one.
    public static func nvUndefineSpace(
        authHandle: UInt32 = TPM2Handle.platform,
        index: UInt32,
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        self.authorized(TPM2CommandCode.nvUndefineSpace, handles: [authHandle, index], auths: [auth])
    }

    /// TPM2_NV_Write of `data` (at most the TPM's MAX_NV_BUFFER_SIZE, 1024 in libtpms) at `offset`.
    public static func nvWrite(
        authHandle: UInt32 = TPM2Handle.platform,
        index: UInt32,
        data: [UInt8],
        offset: UInt16,
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: data.count + 4)
        parameters.writeSized16(data)
        parameters.write(offset)
        return self.authorized(
            TPM2CommandCode.nvWrite,
            handles: [authHandle, index],
            auths: [auth],
            parameters: parameters.bytes
        )
    }

    /// TPM2_NV_Read of `size` bytes at `offset`. `authHandle` is TPM_RH_PLATFORM (TPMA_NV_PPREAD),
    /// TPM_RH_OWNER (TPMA_NV_OWNERREAD) or the index itself (TPMA_NV_AUTHREAD).
    public static func nvRead(
        authHandle: UInt32 = TPM2Handle.platform,
        index: UInt32,
        size: UInt16,
        offset: UInt16,
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: 4)
        parameters.write(size)
        parameters.write(offset)
        return self.authorized(
            TPM2CommandCode.nvRead,
            handles: [authHandle, index],
            auths: [auth],
            parameters: parameters.bytes
        )
    }

    /// TPM2_NV_ReadPublic (no sessions).
    public static func nvReadPublic(index: UInt32) -> [UInt8] {
        var body = ByteWriter(capacity: 4)
        body.write(index)
        return TPMFrame.command(code: TPM2CommandCode.nvReadPublic, body: body.bytes)
    }

    /// TPM2_NV_Increment of a TPM_NT_COUNTER index.
    public static func nvIncrement(
        authHandle: UInt32 = TPM2Handle.platform,
        index: UInt32,
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        self.authorized(TPM2CommandCode.nvIncrement, handles: [authHandle, index], auths: [auth])
    }

    /// TPM2_NV_Extend of a TPM_NT_EXTEND index: new value = H(old value || data).
    public static func nvExtend(
        authHandle: UInt32 = TPM2Handle.platform,
        index: UInt32,
        data: [UInt8],
        auth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        var parameters = ByteWriter(capacity: data.count + 2)
        parameters.writeSized16(data)
        return self.authorized(
            TPM2CommandCode.nvExtend,
            handles: [authHandle, index],
            auths: [auth],
            parameters: parameters.bytes
        )
    }

    // MARK: helpers

    /// A TPM_ST_SESSIONS command: handles, authorization area (one password session per entry of
    /// `auths`, for the first handles), parameters.
    static func authorized(
        _ code: UInt32,
        handles: [UInt32],
        auths: [TPM2PasswordAuthorization],
        parameters: [UInt8] = []
    ) -> [UInt8] {
        precondition(!auths.isEmpty && auths.count <= handles.count)
        var body = ByteWriter(capacity: 4 * handles.count + 16 + parameters.count)
        for handle in handles { body.write(handle) }
        var area = ByteWriter(capacity: 16)
        for auth in auths { auth.encode(into: &area) }
        body.write(UInt32(area.bytes.count))
        body.write(bytes: area.bytes)
        body.write(bytes: parameters)
        return TPMFrame.command(tag: TPMFrame.tagSessions, code: code, body: body.bytes)
    }

    /// TPM2B_SENSITIVE_CREATE with an empty userAuth and `data`.
    private static func writeEmptySensitiveCreate(into writer: inout ByteWriter, data: [UInt8]) {
        precondition(data.count <= 128, "sensitive data longer than MAX_SYM_DATA")
        writer.write(UInt16(4 + data.count))
        writer.writeSized16([])
        writer.writeSized16(data)
    }
}
