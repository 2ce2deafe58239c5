import CVTPMShims

#if canImport(Glibc)
import Glibc
#endif

/// A vTPM proxy device (the kernel's tpm_vtpm_proxy): /dev/tpmN and /dev/tpmrmN whose commands arrive on
/// `descriptor`, one whole command per read, and whose responses are written back in one write.
package struct VTPMProxyDevice: Sendable {
    package var descriptor: Int32
    package var number: UInt32
    package var major: UInt32
    package var minor: UInt32

    /// Creates a TPM 2 device through `control` (/dev/vtpmx).
    package static func create(control: String = "/dev/vtpmx") throws(PosixError) -> VTPMProxyDevice {
        let vtpmx = unsafe Glibc.open(control, O_RDWR | O_CLOEXEC)
        guard vtpmx >= 0 else { throw PosixError(errno: currentErrno(), function: "open", object: control) }
        defer { _ = Glibc.close(vtpmx) }
        var number: UInt32 = 0
        var fd: Int32 = -1
        var major: UInt32 = 0
        var minor: UInt32 = 0
        // VTPM_PROXY_FLAG_TPM2
        guard unsafe cvtpm_vtpm_proxy_new(vtpmx, 1, &number, &fd, &major, &minor) == 0 else {
            throw PosixError(errno: currentErrno(), function: "ioctl(VTPM_PROXY_IOC_NEW_DEV)", object: control)
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return VTPMProxyDevice(descriptor: fd, number: number, major: major, minor: minor)
    }
}

/// What a CUSE device's requests are answered with. Every method returns 0 or an errno for the caller.
package protocol CUSERequestHandler: AnyObject {
    /// The kernel has created the device node.
    func cuseReady()
    func cuseOpen() -> Int32
    /// Bytes for a read of at most `maximum` bytes.
    func cuseRead(maximum: Int) -> (bytes: [UInt8], error: Int32)
    func cuseWrite(_ bytes: [UInt8]) -> Int32
    /// A restricted ioctl: `input` is the argument's bytes for commands that write (`_IOW`, `_IOWR`); the
    /// result is at most `outputSize` bytes for commands that read.
    func cuseIoctl(command: UInt32, input: [UInt8], outputSize: Int) -> (bytes: [UInt8], error: Int32)
    func cuseRelease()
}

private final class CUSEContext {
    unowned let handler: any CUSERequestHandler
    init(_ handler: any CUSERequestHandler) { self.handler = handler }
}

/// Copies at most `capacity` of `bytes` to `destination`; returns how many.
private func copy(_ bytes: [UInt8], to destination: UnsafeMutablePointer<UInt8>?, capacity: Int) -> Int {
    let count = min(bytes.count, capacity)
    guard count > 0, let destination = unsafe destination else { return 0 }
    unsafe bytes.withUnsafeBufferPointer { source in unsafe destination.update(from: source.baseAddress!, count: count)
    }
    return count
}

private func cuseHandler(_ context: UnsafeMutableRawPointer?) -> any CUSERequestHandler {
    unsafe Unmanaged<CUSEContext>.fromOpaque(context!).takeUnretainedValue().handler
}

/// A character device served through CUSE (/dev/cuse, libfuse3): the kernel creates /dev/NAME, and every open,
/// read, write and ioctl on it becomes a call of the handler, on the thread that calls ``processRequest()``.
@safe package final class CUSEDevice {
    private let session: OpaquePointer
    private let context: Unmanaged<CUSEContext>
    /// The descriptor to poll for requests.
    package let descriptor: Int32
    private var closed = false

    /// Opens the CUSE session. The device appears once the first request (the kernel's CUSE_INIT) is processed.
    /// The handler is not retained: keep it alive as long as the device.
    package init(
        name: String,
        major: UInt32,
        minor: UInt32,
        handler: any CUSERequestHandler,
        cuse: String = "/dev/cuse"
    ) throws(PosixError) {
        let context = unsafe Unmanaged.passRetained(CUSEContext(handler))
        var handlers = unsafe cvtpm_cuse_handlers()
        unsafe handlers.context = context.toOpaque()
        unsafe handlers.init_done = { context in unsafe cuseHandler(context).cuseReady() }
        unsafe handlers.open = { context in unsafe cuseHandler(context).cuseOpen() }
        unsafe handlers.read = { context, buffer, size, length in
            let (bytes, error) = unsafe cuseHandler(context).cuseRead(maximum: size)
            guard error == 0 else { return error }
            unsafe length!.pointee = unsafe copy(bytes, to: buffer, capacity: size)
            return 0
        }
        unsafe handlers.write = { context, buffer, size in
            let bytes = unsafe [UInt8](UnsafeBufferPointer(start: buffer, count: size))
            return unsafe cuseHandler(context).cuseWrite(bytes)
        }
        unsafe handlers.ioctl = { context, command, input, inputSize, output, outputSize, length in
            let bytes = unsafe input.map { unsafe [UInt8](UnsafeBufferPointer(start: $0, count: inputSize)) } ?? []
            let (reply, error) = unsafe cuseHandler(context).cuseIoctl(
                command: command,
                input: bytes,
                outputSize: outputSize
            )
            guard error == 0 else { return error }
            unsafe length!.pointee = unsafe copy(reply, to: output, capacity: outputSize)
            return 0
        }
        unsafe handlers.release = { context in unsafe cuseHandler(context).cuseRelease() }
        var error: Int32 = 0
        guard let session = unsafe cvtpm_cuse_open(cuse, name, major, minor, &handlers, &error) else {
            unsafe context.release()
            throw PosixError(errno: error, function: "CUSE session", object: cuse)
        }
        unsafe self.session = session
        unsafe self.context = context
        self.descriptor = unsafe cvtpm_cuse_fd(session)
    }

    /// Receives one request and answers it through the handler.
    /// - Returns: false when the session has ended.
    package func processRequest() throws(PosixError) -> Bool {
        let result = unsafe cvtpm_cuse_process(self.session)
        if result < 0 { throw PosixError(errno: -result, function: "CUSE request") }
        return result > 0
    }

    /// Ends the session; the kernel removes the device.
    package func close() {
        guard !self.closed else { return }
        self.closed = true
        unsafe cvtpm_cuse_close(self.session)
        unsafe self.context.release()
    }
}
