internal import CLibTPMS

#if canImport(Glibc)
import Glibc
#endif

/// The libtpms TPM 2.0 engine. libtpms is process-global and not re-entrant, so there is at most
/// one `Engine` per process and every call must come from the same thread (vtpmd's main loop).
@safe
public final class Engine {
    /// libtpms state blob kinds for `getState`/`setState`.
    public enum StateKind: Sendable {
        case permanent, volatile, savestate

        var libtpms: TPMLIB_StateType {
            switch self {
            case .permanent: TPMLIB_STATE_PERMANENT
            case .volatile: TPMLIB_STATE_VOLATILE
            case .savestate: TPMLIB_STATE_SAVE_STATE
            }
        }
    }

    public private(set) var isRunning = false
    private var responseBuffer: UnsafeMutablePointer<UInt8>? = nil
    private var responseBufferSize: UInt32 = 0
    private let context: EngineContext

    /// Selects TPM 2.0 in libtpms and registers the NVRAM and I/O callbacks.
    /// - Parameter storage: where libtpms' state goes; called back on this thread.
    public init(storage: any EngineStorage) throws(EngineError) {
        precondition(unsafe activeContext == nil, "only one Engine may exist per process")
        self.context = EngineContext(storage: storage)
        unsafe activeContext = self.context
        var rc = TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2)
        guard rc == 0 else { throw EngineError(result: rc, function: "TPMLIB_ChooseTPMVersion") }
        var callbacks = libtpms_callbacks()
        callbacks.sizeOfStruct = Int32(MemoryLayout<libtpms_callbacks>.size)
        callbacks.tpm_nvram_init = nvramInitCallback
        unsafe callbacks.tpm_nvram_loaddata = nvramLoadCallback
        unsafe callbacks.tpm_nvram_storedata = nvramStoreCallback
        unsafe callbacks.tpm_nvram_deletename = nvramDeleteCallback
        callbacks.tpm_io_init = ioInitCallback
        unsafe callbacks.tpm_io_getlocality = ioLocalityCallback
        unsafe callbacks.tpm_io_getphysicalpresence = ioPhysicalPresenceCallback
        rc = unsafe TPMLIB_RegisterCallbacks(&callbacks)
        guard rc == 0 else { throw EngineError(result: rc, function: "TPMLIB_RegisterCallbacks") }
    }

    deinit {
        if self.isRunning { TPMLIB_Terminate() }
        unsafe free(self.responseBuffer)
        unsafe activeContext = nil
    }

    /// The locality libtpms sees for the next commands (0...4; checked by the caller).
    public var locality: UInt8 {
        get { self.context.locality }
        set { self.context.locality = newValue }
    }

    /// Powers the TPM on: libtpms loads its state through the storage (or manufactures one when
    /// the storage says "not found"). Wraps `TPMLIB_MainInit`.
    public func initialize() throws(EngineError) {
        if self.isRunning { self.terminate() }
        self.context.refusal = nil
        let rc = TPMLIB_MainInit()
        guard rc == 0 else {
            // A failed start leaves libtpms half set up (and its TPM version locked): release it, as swtpm does.
            TPMLIB_Terminate()
            throw EngineError(result: rc, function: "TPMLIB_MainInit", detail: self.context.refusal)
        }
        self.isRunning = true
    }

    /// Powers the TPM off without saving anything. Wraps `TPMLIB_Terminate`.
    public func terminate() {
        guard self.isRunning else { return }
        TPMLIB_Terminate()
        self.isRunning = false
    }

    /// Executes one TPM command and returns libtpms' response. Wraps `TPMLIB_Process`.
    /// - Returns: the response, or nil when libtpms itself failed (the caller answers TPM_RC_FAILURE).
    public func process(_ command: inout [UInt8]) -> [UInt8]? {
        self.process(&command, count: command.count)
    }

    /// Executes the command in the first `count` bytes of `buffer` (no copy). Wraps `TPMLIB_Process`.
    public func process(_ buffer: inout [UInt8], count: Int) -> [UInt8]? {
        precondition(count >= 0 && count <= buffer.count)
        var responseSize: UInt32 = 0
        let rc = unsafe buffer.withUnsafeMutableBufferPointer { buf in
            unsafe TPMLIB_Process(
                &self.responseBuffer,
                &responseSize,
                &self.responseBufferSize,
                buf.baseAddress,
                UInt32(count)
            )
        }
        guard rc == 0, let buffer = unsafe self.responseBuffer, responseSize <= self.responseBufferSize else {
            return nil
        }
        return unsafe Array(UnsafeBufferPointer(start: buffer, count: Int(responseSize)))
    }

    /// Sets the I/O buffer size (0 = query). Wraps `TPMLIB_SetBufferSize`.
    /// - Returns: the size now in use and the supported range.
    public static func setBufferSize(_ wanted: UInt32) -> (size: UInt32, minimum: UInt32, maximum: UInt32) {
        var minimum: UInt32 = 0
        var maximum: UInt32 = 0
        let size = unsafe TPMLIB_SetBufferSize(wanted, &minimum, &maximum)
        return (size, minimum, maximum)
    }

    /// libtpms' JSON description for `flags` (1 spec, 2 attributes, 4 features). Wraps `TPMLIB_GetInfo`.
    public static func info(flags: UInt32, selectingTPM2: Bool = false) -> String? {
        if selectingTPM2, unsafe activeContext == nil { _ = TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2) }
        guard let cstr = unsafe TPMLIB_GetInfo(TPMLIB_InfoFlags(rawValue: flags)) else { return nil }
        defer { unsafe free(cstr) }
        return unsafe String(cString: cstr)
    }

    /// Serialises the running TPM's volatile state. Wraps `TPMLIB_VolatileAll_Store`.
    public func volatileState() throws(EngineError) -> [UInt8] {
        var buffer: UnsafeMutablePointer<UInt8>? = nil
        var length: UInt32 = 0
        let rc = unsafe TPMLIB_VolatileAll_Store(&buffer, &length)
        defer { unsafe free(buffer) }
        guard rc == 0, let buffer = unsafe buffer else {
            throw EngineError(result: rc == 0 ? 0x101 : rc, function: "TPMLIB_VolatileAll_Store")
        }
        return unsafe Array(UnsafeBufferPointer(start: buffer, count: Int(length)))
    }

    /// A state blob from libtpms (running TPM, or cached blobs). Wraps `TPMLIB_GetState`.
    public func state(_ kind: StateKind) throws(EngineError) -> [UInt8] {
        var buffer: UnsafeMutablePointer<UInt8>? = nil
        var length: UInt32 = 0
        let rc = unsafe TPMLIB_GetState(kind.libtpms, &buffer, &length)
        defer { unsafe free(buffer) }
        guard rc == 0, let buffer = unsafe buffer else {
            throw EngineError(result: rc == 0 ? 0x101 : rc, function: "TPMLIB_GetState")
        }
        return unsafe Array(UnsafeBufferPointer(start: buffer, count: Int(length)))
    }

    /// Hands libtpms a blob to use at the next `initialize` (TPM must be stopped); an empty blob
    /// clears a cached one. libtpms validates it here. Wraps `TPMLIB_SetState`.
    public func setState(_ kind: StateKind, _ bytes: [UInt8]) throws(EngineError) {
        if kind == .permanent, let refusal = PermanentStateCheck.refusal(bytes) {
            throw EngineError(result: tpmFail, function: "TPMLIB_SetState", detail: refusal)
        }
        let rc = unsafe bytes.withUnsafeBufferPointer { buf in
            unsafe TPMLIB_SetState(kind.libtpms, bytes.isEmpty ? nil : buf.baseAddress, UInt32(buf.count))
        }
        guard rc == 0 else { throw EngineError(result: rc, function: "TPMLIB_SetState") }
    }

    /// Asks libtpms to cancel the running command. Wraps `TPMLIB_CancelCommand`.
    public func cancel() { _ = TPMLIB_CancelCommand() }

    /// Wraps `TPM_IO_Hash_Start`.
    public func hashStart() -> UInt32 { TPM_IO_Hash_Start() }

    /// Wraps `TPM_IO_Hash_Data`.
    public func hashData(_ data: [UInt8]) -> UInt32 {
        unsafe data.withUnsafeBufferPointer { buf in unsafe TPM_IO_Hash_Data(buf.baseAddress, UInt32(buf.count)) }
    }

    /// Wraps `TPM_IO_Hash_End`.
    public func hashEnd() -> UInt32 { TPM_IO_Hash_End() }

    /// The TPM-established flag. Wraps `TPM_IO_TpmEstablished_Get`.
    public func established() throws(EngineError) -> Bool {
        var flag: TPM_BOOL = 0
        let rc = unsafe TPM_IO_TpmEstablished_Get(&flag)
        guard rc == 0 else { throw EngineError(result: rc, function: "TPM_IO_TpmEstablished_Get") }
        return flag != 0
    }

    /// Resets the established flag as if requested from `locality`. Wraps `TPM_IO_TpmEstablished_Reset`.
    public func resetEstablished(locality: UInt8) -> UInt32 {
        let saved = self.context.locality
        self.context.locality = locality
        defer { self.context.locality = saved }
        return TPM_IO_TpmEstablished_Reset()
    }

    /// Routes libtpms debug output to `fd` at `level` with `prefix`. Wraps `TPMLIB_SetDebug*`.
    public static func setDebug(fd: Int32, level: UInt32, prefix: String) {
        TPMLIB_SetDebugFD(fd)
        TPMLIB_SetDebugLevel(level)
        _ = unsafe TPMLIB_SetDebugPrefix(prefix)
    }

    /// libtpms' version as "major.minor.micro". Wraps `TPMLIB_GetVersion`.
    public static var libraryVersion: String {
        let v = TPMLIB_GetVersion()
        return "\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
    }
}

/// State the C callbacks reach. Only touched on the engine's thread.
final class EngineContext {
    let storage: any EngineStorage
    var locality: UInt8 = 0
    /// Why the last load of a permanent state was refused before libtpms saw it (``PermanentStateCheck``).
    var refusal: String? = nil

    init(storage: any EngineStorage) { self.storage = storage }
}

/// The callbacks' way to the engine: libtpms callbacks carry no context pointer. Set and cleared by
/// `Engine` and read only from libtpms calls made on the engine's thread, so it is never shared.
nonisolated(unsafe) private var activeContext: EngineContext? = nil

private let tpmSuccess: TPM_RESULT = 0
private let tpmFail: TPM_RESULT = 0x09
private let tpmRetry: TPM_RESULT = 0x800

private let nvramInitCallback: @convention(c) () -> TPM_RESULT = {
    guard let context = unsafe activeContext else { return tpmFail }
    return context.storage.prepare() ? tpmSuccess : tpmFail
}

private let nvramLoadCallback:
    @convention(c) (
        UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?, UnsafeMutablePointer<UInt32>?, UInt32,
        UnsafePointer<CChar>?
    ) -> TPM_RESULT = { data, length, _, name in
        guard let context = unsafe activeContext, let data = unsafe data, let length = unsafe length,
            let name = unsafe name
        else { return tpmFail }
        switch context.storage.load(unsafe String(cString: name)) {
        case .notFound:
            return tpmRetry
        case .failure:
            return tpmFail
        case .data(let bytes):
            if unsafe String(cString: name) == "permall", let refusal = PermanentStateCheck.refusal(bytes) {
                context.refusal = refusal
                return tpmFail
            }
            // libtpms frees this buffer with free(): it must come from malloc.
            guard let buffer = unsafe malloc(max(bytes.count, 1))?.assumingMemoryBound(to: UInt8.self) else {
                return tpmFail
            }
            unsafe bytes.withUnsafeBufferPointer { src in
                if let base = src.baseAddress { unsafe buffer.update(from: base, count: bytes.count) }
            }
            unsafe data.pointee = buffer
            unsafe length.pointee = UInt32(bytes.count)
            return tpmSuccess
        }
    }

private let nvramStoreCallback:
    @convention(c) (UnsafePointer<UInt8>?, UInt32, UInt32, UnsafePointer<CChar>?) -> TPM_RESULT = {
        data,
        length,
        _,
        name in
        guard let context = unsafe activeContext, let name = unsafe name else { return tpmFail }
        let bytes: [UInt8]
        if let data = unsafe data {
            bytes = unsafe Array(UnsafeBufferPointer(start: data, count: Int(length)))
        } else {
            bytes = []
        }
        return context.storage.store(unsafe String(cString: name), bytes) ? tpmSuccess : tpmFail
    }

private let nvramDeleteCallback: @convention(c) (UInt32, UnsafePointer<CChar>?, TPM_BOOL) -> TPM_RESULT = {
    _,
    name,
    mustExist in
    guard let context = unsafe activeContext, let name = unsafe name else { return tpmFail }
    return context.storage.delete(unsafe String(cString: name), mustExist: mustExist != 0) ? tpmSuccess : tpmFail
}

private let ioInitCallback: @convention(c) () -> TPM_RESULT = { tpmSuccess }

private let ioLocalityCallback: @convention(c) (UnsafeMutablePointer<TPM_MODIFIER_INDICATOR>?, UInt32) -> TPM_RESULT = {
    locality,
    _ in
    guard let locality = unsafe locality, let context = unsafe activeContext else { return tpmFail }
    unsafe locality.pointee = TPM_MODIFIER_INDICATOR(context.locality)
    return tpmSuccess
}

private let ioPhysicalPresenceCallback: @convention(c) (UnsafeMutablePointer<TPM_BOOL>?, UInt32) -> TPM_RESULT = {
    presence,
    _ in
    guard let presence = unsafe presence else { return tpmFail }
    unsafe presence.pointee = 0
    return tpmSuccess
}
