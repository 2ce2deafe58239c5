internal import CVTPMShims

#if canImport(Glibc)
import Glibc
#endif

/// Socket calls used by the backend, its control client and the tests. Everything is blocking;
/// readiness comes from `pollDescriptors`.
package enum Socket {
    /// Creates a listening UNIX stream socket at `path` (an existing socket file is replaced),
    /// chmods it to `mode` and listens with `backlog`. Wraps `socket`/`bind`/`listen`.
    package static func listenUnix(
        path: String,
        mode: UInt32?,
        owner: UInt32? = nil,
        group: UInt32? = nil,
        backlog: Int32 = 1
    ) throws(PosixError) -> Int32 {
        var addr = try unixAddress(path)
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PosixError(errno: currentErrno(), function: "socket", object: path) }
        // Replace a stale socket file, never any other kind of file.
        var st = stat()
        if unsafe lstat(path, &st) == 0 {
            if st.st_mode & S_IFMT == S_IFSOCK {
                _ = unsafe unlink(path)
            } else {
                _ = Glibc.close(fd)
                throw PosixError(errno: EEXIST, function: "bind", object: path)
            }
        }
        let rc = unsafe withUnsafePointer(to: &addr) { ptr in
            unsafe ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                unsafe Glibc.bind(fd, sa, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc != 0 {
            let err = currentErrno()
            _ = Glibc.close(fd)
            throw PosixError(errno: err, function: "bind", object: path)
        }
        if let mode, unsafe chmod(path, mode_t(mode)) != 0 {
            let err = currentErrno()
            _ = Glibc.close(fd)
            throw PosixError(errno: err, function: "chmod", object: path)
        }
        if owner != nil || group != nil,
            unsafe lchown(path, owner ?? UInt32.max, group ?? UInt32.max) != 0
        {
            let err = currentErrno()
            _ = Glibc.close(fd)
            throw PosixError(errno: err, function: "lchown", object: path)
        }
        if Glibc.listen(fd, backlog) != 0 {
            let err = currentErrno()
            _ = Glibc.close(fd)
            throw PosixError(errno: err, function: "listen", object: path)
        }
        return fd
    }

    /// Creates a listening TCP socket on `bindAddress:port` (IPv4 or IPv6 literal). Wraps `bind`/`listen`.
    package static func listenTCP(bindAddress: String, port: UInt16, backlog: Int32 = 1) throws(PosixError) -> Int32 {
        let object = "\(bindAddress):\(port)"
        var addr4 = sockaddr_in()
        var addr6 = sockaddr_in6()
        let family: Int32
        if unsafe inet_pton(AF_INET, bindAddress, &addr4.sin_addr) == 1 {
            family = AF_INET
            addr4.sin_family = sa_family_t(AF_INET)
            addr4.sin_port = port.bigEndian
        } else if unsafe inet_pton(AF_INET6, bindAddress, &addr6.sin6_addr) == 1 {
            family = AF_INET6
            addr6.sin6_family = sa_family_t(AF_INET6)
            addr6.sin6_port = port.bigEndian
        } else {
            throw PosixError(errno: EINVAL, function: "inet_pton", object: bindAddress)
        }
        let fd = Glibc.socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PosixError(errno: currentErrno(), function: "socket", object: object) }
        var one: Int32 = 1
        _ = unsafe setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc: Int32
        if family == AF_INET {
            rc = unsafe withUnsafePointer(to: &addr4) { ptr in
                unsafe ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    unsafe Glibc.bind(fd, sa, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        } else {
            rc = unsafe withUnsafePointer(to: &addr6) { ptr in
                unsafe ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    unsafe Glibc.bind(fd, sa, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
        if rc != 0 || Glibc.listen(fd, backlog) != 0 {
            let err = currentErrno()
            _ = Glibc.close(fd)
            throw PosixError(errno: err, function: "bind", object: object)
        }
        return fd
    }

    /// Accepts one connection (close-on-exec); TCP connections get TCP_NODELAY. Wraps `accept`.
    package static func accept(_ listener: Int32) throws(PosixError) -> Int32 {
        let fd = try retryingEINTR("accept") { Glibc.accept(listener, nil, nil) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        setNoDelay(fd)
        return fd
    }

    /// Bounds every later blocking read and write on `fd` to `milliseconds` (SO_RCVTIMEO, SO_SNDTIMEO): a
    /// call that waits longer fails with EAGAIN. Wraps `setsockopt`.
    package static func setTimeouts(_ fd: Int32, milliseconds: Int) throws(PosixError) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            if unsafe setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size)) != 0 {
                throw PosixError(errno: currentErrno(), function: "setsockopt(SO_RCVTIMEO)")
            }
        }
    }

    /// The process, user and group of a UNIX socket's peer (SO_PEERCRED), or nil. Wraps `getsockopt`.
    package static func peerCredentials(_ fd: Int32) -> (pid: Int32, uid: UInt32, gid: UInt32)? {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        guard unsafe cvtpm_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
        return (pid, uid, gid)
    }

    /// Shuts a socket down both ways: a thread blocked in `accept` or `read` on it returns. Wraps `shutdown`.
    package static func shutdown(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    /// Turns Nagle off where the socket is TCP; harmless elsewhere.
    package static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = unsafe setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Connects to a UNIX stream socket. Wraps `connect`.
    package static func connectUnix(path: String) throws(PosixError) -> Int32 {
        var addr = try unixAddress(path)
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PosixError(errno: currentErrno(), function: "socket", object: path) }
        let rc = unsafe withUnsafePointer(to: &addr) { ptr in
            unsafe ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                unsafe Glibc.connect(fd, sa, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc != 0 {
            let err = currentErrno()
            _ = Glibc.close(fd)
            throw PosixError(errno: err, function: "connect", object: path)
        }
        return fd
    }

    /// Connects to a UNIX stream socket, giving up after `timeoutMilliseconds`: a listener whose backlog is
    /// full refuses a non-blocking connect with EAGAIN, which is retried every 10 ms until then (a blocking
    /// connect would wait for as long as the listener does not accept). The socket is blocking afterwards.
    /// Wraps `connect`.
    package static func connectUnix(path: String, timeoutMilliseconds: Int) throws(PosixError) -> Int32 {
        var addr = try unixAddress(path)
        let flags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        let fd = Glibc.socket(AF_UNIX, flags, 0)
        guard fd >= 0 else { throw PosixError(errno: currentErrno(), function: "socket", object: path) }
        let deadline = ProcessControl.monotonicNanoseconds() + UInt64(max(0, timeoutMilliseconds)) * 1_000_000
        while true {
            let rc = unsafe withUnsafePointer(to: &addr) { ptr in
                unsafe ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    unsafe Glibc.connect(fd, sa, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if rc == 0 { break }
            let err = currentErrno()
            if err == EINTR { continue }
            if err == EAGAIN && ProcessControl.monotonicNanoseconds() < deadline {
                _ = try? pollDescriptors([], timeoutMilliseconds: 10)
                continue
            }
            _ = Glibc.close(fd)
            throw PosixError(errno: err == EAGAIN ? ETIMEDOUT : err, function: "connect", object: path)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return fd
    }

    /// Connects to a TCP port on an IPv4 address. Wraps `connect`.
    package static func connectTCP(host: String, port: UInt16) throws(PosixError) -> Int32 {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard unsafe inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            throw PosixError(errno: EINVAL, function: "inet_pton", object: host)
        }
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PosixError(errno: currentErrno(), function: "socket", object: host) }
        let rc = unsafe withUnsafePointer(to: &addr) { ptr in
            unsafe ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                unsafe Glibc.connect(fd, sa, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if rc != 0 {
            let err = currentErrno()
            _ = Glibc.close(fd)
            throw PosixError(errno: err, function: "connect", object: "\(host):\(port)")
        }
        setNoDelay(fd)
        return fd
    }

    /// A connected pair of UNIX stream sockets. Wraps `socketpair`.
    package static func pair() throws(PosixError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        let rc = unsafe fds.withUnsafeMutableBufferPointer { buf in
            unsafe socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, buf.baseAddress)
        }
        guard rc == 0 else { throw PosixError(errno: currentErrno(), function: "socketpair") }
        return (fds[0], fds[1])
    }

    /// Reads up to `max` bytes and any SCM_RIGHTS descriptors that came with them (at most 4).
    /// An empty byte array means end of stream. Wraps `recvmsg`.
    package static func receive(_ fd: Int32, max: Int) throws(PosixError) -> (bytes: [UInt8], fds: [Int32]) {
        if Sys.injected(.recv, nil) != nil { throw PosixError(errno: currentErrno(), function: "recvmsg") }
        var buffer = [UInt8](repeating: 0, count: max)
        let controlLength = cmsgSpace(4 * MemoryLayout<Int32>.size)
        var control = [UInt8](repeating: 0, count: controlLength)
        var controlUsed = 0
        var n = -1
        var err: Int32 = 0
        repeat {
            unsafe buffer.withUnsafeMutableBytes { dataBuf in
                unsafe control.withUnsafeMutableBytes { ctlBuf in
                    var iov = unsafe iovec(iov_base: dataBuf.baseAddress, iov_len: dataBuf.count)
                    unsafe withUnsafeMutablePointer(to: &iov) { iovPtr in
                        var msg = unsafe msghdr()
                        unsafe msg.msg_iov = iovPtr
                        unsafe msg.msg_iovlen = 1
                        unsafe msg.msg_control = ctlBuf.baseAddress
                        unsafe msg.msg_controllen = ctlBuf.count
                        n = unsafe recvmsg(fd, &msg, Int32(MSG_CMSG_CLOEXEC))
                        err = n < 0 ? currentErrno() : 0
                        controlUsed = unsafe n >= 0 ? Int(msg.msg_controllen) : 0
                    }
                }
            }
        } while n < 0 && err == EINTR
        if n < 0 { throw PosixError(errno: err, function: "recvmsg") }
        // Walk the control messages by hand (the CMSG_* macros are not imported).
        var received: [Int32] = []
        let headerSize = MemoryLayout<cmsghdr>.size
        unsafe control.withUnsafeBytes { ctlBuf in
            var offset = 0
            while offset + headerSize <= controlUsed {
                let header = unsafe ctlBuf.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
                let length = Int(header.cmsg_len)
                if length < headerSize || offset + length > controlUsed { break }
                if header.cmsg_level == SOL_SOCKET && header.cmsg_type == Int32(SCM_RIGHTS) {
                    var p = offset + cmsgAlign(headerSize)
                    while p + MemoryLayout<Int32>.size <= offset + length {
                        received.append(unsafe ctlBuf.loadUnaligned(fromByteOffset: p, as: Int32.self))
                        p += MemoryLayout<Int32>.size
                    }
                }
                offset += cmsgAlign(length)
            }
        }
        buffer.removeSubrange(n...)
        return (buffer, received)
    }

    /// Sends `bytes` with one descriptor attached as SCM_RIGHTS (what QEMU does for CMD_SET_DATAFD).
    package static func send(_ fd: Int32, _ bytes: [UInt8], passing passed: Int32) throws(PosixError) {
        if Sys.injected(.send, nil) != nil { throw PosixError(errno: currentErrno(), function: "sendmsg") }
        var control = [UInt8](repeating: 0, count: cmsgSpace(MemoryLayout<Int32>.size))
        var payload = bytes
        var n = -1
        var err: Int32 = 0
        unsafe payload.withUnsafeMutableBytes { dataBuf in
            unsafe control.withUnsafeMutableBytes { ctlBuf in
                var header = cmsghdr()
                header.cmsg_len = cmsgAlign(MemoryLayout<cmsghdr>.size) + MemoryLayout<Int32>.size
                header.cmsg_level = SOL_SOCKET
                header.cmsg_type = Int32(SCM_RIGHTS)
                unsafe ctlBuf.storeBytes(of: header, toByteOffset: 0, as: cmsghdr.self)
                unsafe ctlBuf.storeBytes(
                    of: passed,
                    toByteOffset: cmsgAlign(MemoryLayout<cmsghdr>.size),
                    as: Int32.self
                )
                var iov = unsafe iovec(iov_base: dataBuf.baseAddress, iov_len: dataBuf.count)
                unsafe withUnsafeMutablePointer(to: &iov) { iovPtr in
                    var msg = unsafe msghdr()
                    unsafe msg.msg_iov = iovPtr
                    unsafe msg.msg_iovlen = 1
                    unsafe msg.msg_control = ctlBuf.baseAddress
                    unsafe msg.msg_controllen = ctlBuf.count
                    n = unsafe sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
                    err = n < 0 ? currentErrno() : 0
                }
            }
        }
        if n < 0 { throw PosixError(errno: err, function: "sendmsg") }
    }

    /// Reads up to `max` bytes; an empty result means end of stream. Wraps `read`.
    package static func read(_ fd: Int32, max: Int) throws(PosixError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        let n = try retryingEINTR("read") { Sys.receive(fd, &buffer, 0, max) }
        buffer.removeSubrange(n...)
        return buffer
    }

    /// Reads into `buffer[offset..<offset+count]`; returns bytes read (0 = end of stream). Wraps `read`.
    package static func read(
        _ fd: Int32,
        into buffer: inout [UInt8],
        at offset: Int,
        count: Int
    ) throws(PosixError)
        -> Int
    {
        try retryingEINTR("read") { Sys.receive(fd, &buffer, offset, count) }
    }

    /// Writes all of `bytes` to a socket (MSG_NOSIGNAL), handling partial writes and EINTR. Wraps `send`.
    package static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(PosixError) {
        var offset = 0
        while offset < bytes.count {
            let n = Sys.send(fd, bytes, offset, flags: 0)
            if n < 0 {
                let err = currentErrno()
                if err == EINTR { continue }
                if err == ENOTSOCK {
                    try writeAll(fd: fd, Array(bytes[offset...]))
                    return
                }
                throw PosixError(errno: err, function: "send")
            }
            offset += n
        }
    }

    /// Writes as much of `bytes[offset...]` as the descriptor takes now (MSG_DONTWAIT | MSG_NOSIGNAL) and
    /// returns how many bytes that was: 0 when its buffer is full. A descriptor that is not a socket (a
    /// character device) is written with `write`. Wraps `send`.
    package static func sendAvailable(_ fd: Int32, _ bytes: [UInt8], from offset: Int) throws(PosixError) -> Int {
        var sent = offset
        while sent < bytes.count {
            let n = Sys.send(fd, bytes, sent, flags: Int32(MSG_DONTWAIT))
            if n < 0 {
                let err = currentErrno()
                if err == EINTR { continue }
                if err == EAGAIN || err == EWOULDBLOCK { break }
                if err == ENOTSOCK {
                    try writeAll(fd: fd, Array(bytes[sent...]))
                    return bytes.count - offset
                }
                throw PosixError(errno: err, function: "send")
            }
            sent += n
        }
        return sent - offset
    }

    /// Whether `fd` is a socket. Wraps `fstat`.
    package static func isSocket(_ fd: Int32) -> Bool {
        var st = stat()
        return unsafe fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
    }

    /// The local TCP port a socket is bound to (tests bind port 0).
    package static func localPort(_ fd: Int32) -> UInt16? {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = unsafe withUnsafeMutablePointer(to: &addr) { ptr in
            unsafe ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in unsafe getsockname(fd, sa, &len) }
        }
        return rc == 0 ? UInt16(bigEndian: addr.sin_port) : nil
    }

    private static func unixAddress(_ path: String) throws(PosixError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw PosixError(errno: ENAMETOOLONG, function: "bind", object: path)
        }
        unsafe withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { unsafe raw[i] = b }
            unsafe raw[bytes.count] = 0
        }
        return addr
    }
}

private func cmsgAlign(_ length: Int) -> Int {
    let align = MemoryLayout<Int>.size
    return (length + align - 1) & ~(align - 1)
}

private func cmsgSpace(_ length: Int) -> Int {
    cmsgAlign(MemoryLayout<cmsghdr>.size) + cmsgAlign(length)
}

/// Events for `pollDescriptors`.
package struct PollEvents: OptionSet, Sendable {
    package let rawValue: Int16
    package init(rawValue: Int16) { self.rawValue = rawValue }
    package static let readable = PollEvents(rawValue: Int16(POLLIN))
    package static let writable = PollEvents(rawValue: Int16(POLLOUT))
    package static let hangup = PollEvents(rawValue: Int16(POLLHUP))
    package static let error = PollEvents(rawValue: Int16(POLLERR))
    package static let invalid = PollEvents(rawValue: Int16(POLLNVAL))
}

/// Waits until one of `fds` is ready or `timeoutMilliseconds` passes (-1 = forever).
/// Returns the received events per descriptor, in order. Wraps `poll`.
package func pollDescriptors(
    _ fds: [(fd: Int32, events: PollEvents)],
    timeoutMilliseconds: Int32
) throws(PosixError)
    -> [PollEvents]
{
    var pfds = fds.map { pollfd(fd: $0.fd, events: $0.events.rawValue, revents: 0) }
    let rc = unsafe pfds.withUnsafeMutableBufferPointer { buf in
        unsafe poll(buf.baseAddress, nfds_t(buf.count), timeoutMilliseconds)
    }
    if rc < 0 {
        let err = currentErrno()
        if err == EINTR { return fds.map { _ in PollEvents() } }
        throw PosixError(errno: err, function: "poll")
    }
    return pfds.map { PollEvents(rawValue: $0.revents) }
}

/// Waits until `fd` is readable or the timeout passes; returns whether it became readable (or hung up).
package func waitReadable(_ fd: Int32, timeoutMilliseconds: Int32) throws(PosixError) -> Bool {
    let events = try pollDescriptors([(fd, .readable)], timeoutMilliseconds: timeoutMilliseconds)
    return !events[0].isEmpty
}

/// Reads from `fd` into `buffer` until it holds `count` bytes, the peer closes, or `deadline` (monotonic
/// nanoseconds) passes, never beyond `count`: a peer that paces its bytes is cut off at the deadline.
/// Returns whether `buffer` holds `count` bytes.
package func readUntilFilled(_ buffer: inout [UInt8], from fd: Int32, to count: Int, deadline: UInt64) -> Bool {
    while buffer.count < count {
        let now = ProcessControl.monotonicNanoseconds()
        guard now < deadline else { return false }
        let waitMs = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
        guard (try? waitReadable(fd, timeoutMilliseconds: waitMs)) == true else { continue }
        guard let more = try? Socket.read(fd, max: min(count - buffer.count, 1 << 16)), !more.isEmpty else {
            return false
        }
        buffer.append(contentsOf: more)
    }
    return true
}
