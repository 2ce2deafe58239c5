internal import CVTPMShims

#if canImport(Glibc)
import Glibc
#endif

/// The file-system calls of `_VTPMPosix`, one wrapper each (SwiftNIO's System.swift): the one place that
/// names the call and its object, and where ``FaultInjection`` can fail it in tests. Each returns the raw
/// result (-1 with `errno` set on failure), as the C call does; callers turn that into a ``PosixError``.
enum Sys {
    /// Applies a planned fault: returns -1 with `errno` set when the call must fail.
    @inline(__always)
    static func injected(_ call: Syscall, _ object: String?) -> Int32? {
        guard let action = FaultInjection.check(call, object) else { return nil }
        switch action {
        case .fail(let errno), .shortWrite(let errno):
            Glibc.errno = errno
            return -1
        case .crash:
            return nil
        }
    }

    /// Opens for reading are ``Syscall/openatRead`` to fault rules, other opens ``Syscall/openat``.
    private static func openCall(_ flags: Int32) -> Syscall {
        flags & O_ACCMODE == O_RDONLY && flags & O_CREAT == 0 ? .openatRead : .openat
    }

    static func openat(_ dirfd: Int32, _ name: String, _ flags: Int32, _ mode: UInt32 = 0, object: String) -> Int32 {
        if let rc = self.injected(self.openCall(flags), object) { return rc }
        return unsafe Glibc.openat(dirfd, name, flags, mode_t(mode))
    }

    static func open(_ path: String, _ flags: Int32, _ mode: UInt32 = 0) -> Int32 {
        if let rc = self.injected(self.openCall(flags), path) { return rc }
        return unsafe Glibc.open(path, flags, mode_t(mode))
    }

    /// `read` into `buffer[offset..<offset+count]`.
    static func read(_ fd: Int32, _ buffer: inout [UInt8], _ offset: Int, _ count: Int, object: String?) -> Int {
        if let rc = self.injected(.read, object) { return Int(rc) }
        return rawRead(fd, &buffer, offset, count)
    }

    /// `write` of `bytes[offset...]` (a short-write fault writes half of it).
    static func write(_ fd: Int32, _ bytes: [UInt8], _ offset: Int, object: String?) -> Int {
        if let action = FaultInjection.check(.write, object) {
            switch action {
            case .fail(let errno):
                Glibc.errno = errno
                return -1
            case .shortWrite:
                let half = max((bytes.count - offset) / 2, 1)
                return unsafe bytes.withUnsafeBytes { buf in
                    unsafe Glibc.write(fd, buf.baseAddress! + offset, min(half, buf.count - offset))
                }
            case .crash:
                break
            }
        }
        return rawPlainWrite(fd, bytes, offset)
    }

    /// `pwrite` of `bytes[offset...]` at file offset `offset`.
    static func pwrite(_ fd: Int32, _ bytes: [UInt8], _ offset: Int, object: String?) -> Int {
        if let rc = self.injected(.pwrite, object) { return Int(rc) }
        return rawPwrite(fd, bytes, offset)
    }

    /// `send` of `bytes[offset...]` with `flags` (MSG_NOSIGNAL added).
    static func send(_ fd: Int32, _ bytes: [UInt8], _ offset: Int, flags: Int32) -> Int {
        if let rc = self.injected(.send, nil) { return Int(rc) }
        return unsafe bytes.withUnsafeBytes { buf in
            unsafe Glibc.send(fd, buf.baseAddress! + offset, buf.count - offset, flags | Int32(MSG_NOSIGNAL))
        }
    }

    /// `read` of a socket into `buffer[offset..<offset+count]`.
    static func receive(_ fd: Int32, _ buffer: inout [UInt8], _ offset: Int, _ count: Int) -> Int {
        if let rc = self.injected(.recv, nil) { return Int(rc) }
        return rawRead(fd, &buffer, offset, count)
    }

    static func ftruncate(_ fd: Int32, _ length: Int, object: String?) -> Int32 {
        if let rc = self.injected(.ftruncate, object) { return rc }
        return Glibc.ftruncate(fd, off_t(length))
    }

    static func fchmod(_ fd: Int32, _ mode: UInt32, object: String?) -> Int32 {
        if let rc = self.injected(.fchmod, object) { return rc }
        return Glibc.fchmod(fd, mode_t(mode))
    }

    static func fdatasync(_ fd: Int32, object: String?) -> Int32 {
        if let rc = self.injected(.fdatasync, object) { return rc }
        return Glibc.fdatasync(fd)
    }

    static func fsync(_ fd: Int32, object: String?) -> Int32 {
        if let rc = self.injected(.fsync, object) { return rc }
        return Glibc.fsync(fd)
    }

    static func renameat(_ dirfd: Int32, _ from: String, _ to: String, object: String) -> Int32 {
        if let rc = self.injected(.renameat, object) { return rc }
        return unsafe Glibc.renameat(dirfd, from, dirfd, to)
    }

    /// `renameat2(RENAME_EXCHANGE)` within one directory.
    static func exchange(_ dirfd: Int32, _ from: String, _ to: String, object: String) -> Int32 {
        if let rc = self.injected(.renameat2, object) { return rc }
        return unsafe cvtpm_rename_exchange(dirfd, from, dirfd, to)
    }

    static func linkat(_ dirfd: Int32, _ from: String, _ to: String, object: String) -> Int32 {
        if let rc = self.injected(.linkat, object) { return rc }
        return unsafe Glibc.linkat(dirfd, from, dirfd, to, 0)
    }

    static func unlinkat(_ dirfd: Int32, _ name: String, object: String) -> Int32 {
        if let rc = self.injected(.unlinkat, object) { return rc }
        return unsafe Glibc.unlinkat(dirfd, name, 0)
    }

    static func mkdirat(_ dirfd: Int32, _ name: String, _ mode: UInt32, object: String) -> Int32 {
        if let rc = self.injected(.mkdirat, object) { return rc }
        return unsafe Glibc.mkdirat(dirfd, name, mode_t(mode))
    }

    /// `close`. A failed close of a file that was written means its data may not have reached the file
    /// (NFS, quota): callers that wrote check it. The descriptor is gone either way.
    static func close(_ fd: Int32, object: String?) -> Int32 {
        if let action = FaultInjection.check(.close, object) {
            _ = Glibc.close(fd)
            switch action {
            case .fail(let errno), .shortWrite(let errno): Glibc.errno = errno
            case .crash: break
            }
            return -1
        }
        return Glibc.close(fd)
    }
}
