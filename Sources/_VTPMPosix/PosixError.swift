#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call: the errno value, the call and the object it was applied to.
package struct PosixError: Error, Hashable, CustomStringConvertible, Sendable {
    /// The `errno` value the call left behind.
    package var errno: Int32
    /// The name of the system call, e.g. `"openat"`.
    package var function: String
    /// The path, socket name or other object the call worked on, if any.
    package var object: String?

    package init(errno: Int32, function: String, object: String? = nil) {
        self.errno = errno
        self.function = function
        self.object = object
    }

    package var description: String {
        let reason = unsafe String(cString: strerror(self.errno))
        if let object {
            return "\(self.function)(\(object)): \(reason) (errno \(self.errno))"
        }
        return "\(self.function): \(reason) (errno \(self.errno))"
    }

    /// True when the error means "no such file or directory".
    package var isNotFound: Bool { self.errno == ENOENT }
    /// True when the error means "would block" / "lock held by someone else".
    package var isWouldBlock: Bool { self.errno == EAGAIN || self.errno == EWOULDBLOCK || self.errno == EACCES }
}

@inline(__always)
func currentErrno() -> Int32 { Glibc.errno }

/// Retries `body` while it fails with EINTR; returns its result or throws a `PosixError`.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(
    _ function: String,
    _ object: String? = nil,
    _ body: () -> T
) throws(PosixError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let err = currentErrno()
        if err == EINTR { continue }
        throw PosixError(errno: err, function: function, object: object)
    }
}

/// `read(2)` into `buffer[offset..<offset+count]`; returns the raw result (-1 on error, errno set).
func rawRead(_ fd: Int32, _ buffer: inout [UInt8], _ offset: Int, _ count: Int) -> Int {
    precondition(offset >= 0 && count >= 0 && offset + count <= buffer.count)
    return unsafe buffer.withUnsafeMutableBytes { buf in unsafe Glibc.read(fd, buf.baseAddress! + offset, count) }
}

/// `write(2)` for descriptors that are not sockets.
func rawPlainWrite(_ fd: Int32, _ bytes: [UInt8], _ offset: Int) -> Int {
    precondition(offset >= 0 && offset <= bytes.count)
    return unsafe bytes.withUnsafeBytes { buf in unsafe Glibc.write(fd, buf.baseAddress! + offset, buf.count - offset) }
}

/// Linux `F_OFD_SETLK` (not exported by the Glibc module without _GNU_SOURCE).
let fcntlOFDSetLock: Int32 = 37

/// Takes a non-blocking, exclusive open-file-description lock on the whole of `fd`; returns the
/// raw result (-1 with errno set when another process holds it). Wraps `fcntl(F_OFD_SETLK)`.
func lockWholeFile(_ fd: Int32) -> Int32 {
    var fl = flock()
    fl.l_type = Int16(F_WRLCK)
    fl.l_whence = Int16(SEEK_SET)
    fl.l_start = 0
    fl.l_len = 0
    fl.l_pid = 0
    return unsafe fcntl(fd, fcntlOFDSetLock, &fl)
}
