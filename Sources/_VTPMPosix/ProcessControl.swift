internal import CVTPMShims

#if canImport(Glibc)
import Glibc
#endif

/// Process-level calls: signals, daemonizing, identity, clocks.
package enum ProcessControl {
    /// Ignores SIGPIPE so a vanished peer surfaces as EPIPE, never as process death.
    package static func ignoreSIGPIPE() { _ = signal(SIGPIPE, SIG_IGN) }

    /// Installs handlers for SIGTERM, SIGINT and SIGHUP that write the signal number into a pipe,
    /// and returns the pipe's read end (the poll loop watches it). Wraps `pipe2` + `sigaction`.
    package static func terminationSignalDescriptor() throws(PosixError) -> Int32 {
        var fds: [Int32] = [-1, -1]
        let rc = unsafe fds.withUnsafeMutableBufferPointer { buf in unsafe pipe(buf.baseAddress) }
        guard rc == 0 else { throw PosixError(errno: currentErrno(), function: "pipe") }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        }
        unsafe signalPipeWriteEnd = fds[1]
        // A parent may have blocked these (the mask is inherited across exec): unblock them.
        var set = sigset_t()
        unsafe sigemptyset(&set)
        for sig in [SIGTERM, SIGINT, SIGHUP] { unsafe sigaddset(&set, sig) }
        _ = unsafe sigprocmask(SIG_UNBLOCK, &set, nil)
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            var action = sigaction()
            unsafe action.__sigaction_handler.sa_handler = signalToPipe
            unsafe sigemptyset(&action.sa_mask)
            action.sa_flags = Int32(SA_RESTART)
            _ = unsafe sigaction(sig, &action, nil)
        }
        return fds[0]
    }

    /// Reads one pending signal number from the descriptor `terminationSignalDescriptor` returned.
    package static func readSignal(_ fd: Int32) -> Int32? {
        var byte: UInt8 = 0
        let n = unsafe withUnsafeMutableBytes(of: &byte) { raw in unsafe Glibc.read(fd, raw.baseAddress, 1) }
        return n == 1 ? Int32(byte) : nil
    }

    /// Detaches like a classic daemon: fork, setsid, fork. The original process waits for the
    /// grandchild to report its setup result through `reportDaemonReady` and exits with that status.
    /// Returns (in the grandchild) the descriptor to report on. Wraps `fork`/`setsid`.
    /// Descriptors above 2 that are not in `keep` are closed in the daemon (a parent's pipes and
    /// sockets must not live on in it).
    package static func daemonize(keeping keep: Set<Int32> = []) throws(PosixError) -> Int32 {
        let (readEnd, writeEnd) = try Socket.pair()
        let first = fork()
        if first < 0 { throw PosixError(errno: currentErrno(), function: "fork") }
        if first > 0 {
            _ = Glibc.close(writeEnd)
            var status: [UInt8] = [1]
            let n = unsafe status.withUnsafeMutableBytes { buf in unsafe Glibc.read(readEnd, buf.baseAddress, 1) }
            var childStatus: Int32 = 0
            _ = unsafe waitpid(first, &childStatus, 0)
            _exit(n == 1 ? Int32(status[0]) : 1)
        }
        _ = Glibc.close(readEnd)
        _ = setsid()
        let second = fork()
        if second < 0 { _exit(1) }
        if second > 0 { _exit(0) }
        for fd in Int32(3)..<Int32(1024) where fd != writeEnd && !keep.contains(fd) {
            if fcntl(fd, F_GETFD) >= 0 { _ = Glibc.close(fd) }
        }
        _ = unsafe chdir("/")
        let devNull = unsafe Glibc.open("/dev/null", O_RDWR)
        if devNull >= 0 {
            _ = dup2(devNull, 0)
            _ = dup2(devNull, 1)
            if devNull > 2 { _ = Glibc.close(devNull) }
        }
        return writeEnd
    }

    /// Tells the waiting original process that setup finished with `status` (0 = ready).
    package static func reportDaemonReady(_ fd: Int32, status: UInt8) {
        var byte = [status]
        _ = unsafe byte.withUnsafeMutableBytes { buf in unsafe Glibc.write(fd, buf.baseAddress, 1) }
        _ = Glibc.close(fd)
    }

    /// Redirects stderr to /dev/null (after daemonizing, once logging is set up).
    package static func detachStderr() {
        let devNull = unsafe Glibc.open("/dev/null", O_RDWR)
        if devNull >= 0 {
            _ = dup2(devNull, 2)
            if devNull > 2 { _ = Glibc.close(devNull) }
        }
    }

    /// The effective user's name and home directory from the password database (not `$USER`/`$HOME`,
    /// which stay those of whoever started the process after `runAs`). Wraps `getpwuid`.
    package static func effectiveUser() -> (name: String, home: String)? {
        guard let pw = unsafe getpwuid(geteuid()) else { return nil }
        guard let name = unsafe pw.pointee.pw_name, let home = unsafe pw.pointee.pw_dir else { return nil }
        return unsafe (String(cString: name), String(cString: home))
    }

    /// Switches to `user` (name or numeric uid) for good: the capability bounding and ambient sets are
    /// emptied (where the process holds CAP_SETPCAP), the supplementary groups are dropped (the process keeps
    /// only the user's primary group; a process that may not set groups must have none other already), then
    /// gid and uid change and the permitted, effective and inheritable capabilities are cleared. Wraps
    /// `setgroups`, `setgid`, `setuid` and `capset`.
    package static func runAs(user: String) throws(PosixError) {
        guard let pw = unsafe getpwnam(user) ?? (UInt32(user).flatMap { unsafe getpwuid($0) }) else {
            throw PosixError(errno: ENOENT, function: "getpwnam", object: user)
        }
        let uid = unsafe pw.pointee.pw_uid
        var gid = unsafe pw.pointee.pw_gid
        // Without CAP_SETPCAP the bounding set stays as it is; the capabilities themselves go at setuid.
        let dropped = cvtpm_drop_bounding_capabilities()
        if dropped != 0 && dropped != -EPERM {
            throw PosixError(errno: -dropped, function: "prctl(PR_CAPBSET_DROP)", object: user)
        }
        if unsafe setgroups(1, &gid) != 0 {
            // A process that may not set groups (no CAP_SETGID) is fine only if it has no other group already.
            let code = currentErrno()
            guard code == EPERM, Self.supplementaryGroups().allSatisfy({ $0 == gid }) else {
                throw PosixError(errno: code, function: "setgroups", object: user)
            }
        }
        if setgid(gid) != 0 { throw PosixError(errno: currentErrno(), function: "setgid", object: user) }
        if setuid(uid) != 0 { throw PosixError(errno: currentErrno(), function: "setuid", object: user) }
        if uid != 0 {
            let rc = cvtpm_clear_capabilities()
            if rc != 0 { throw PosixError(errno: -rc, function: "capset", object: user) }
        }
    }

    /// The supplementary groups of this process. Wraps `getgroups`.
    package static func supplementaryGroups() -> [UInt32] {
        let count = unsafe getgroups(0, nil)
        guard count > 0 else { return [] }
        var groups = [gid_t](repeating: 0, count: Int(count))
        let got = unsafe getgroups(count, &groups)
        return got < 0 ? [] : Array(groups.prefix(Int(got)))
    }

    /// The id of user `name` (or a numeric uid), or nil. Wraps `getpwnam`.
    package static func userID(_ name: String) -> UInt32? {
        if let user = unsafe getpwnam(name) { return unsafe user.pointee.pw_uid }
        return UInt32(name)
    }

    /// The id of group `name` (or a numeric gid), or nil. Wraps `getgrnam`.
    package static func groupID(_ name: String) -> UInt32? {
        if let group = unsafe getgrnam(name) { return unsafe group.pointee.gr_gid }
        return UInt32(name)
    }

    /// Replaces this process with `path` run with `arguments` (`arguments[0]` is the program name it
    /// sees), keeping the environment and every descriptor not marked close-on-exec. Wraps `execv`;
    /// returns only by throwing.
    package static func replaceProcess(path: String, arguments: [String]) throws(PosixError) -> Never {
        var pointers: [UnsafeMutablePointer<CChar>?] = unsafe arguments.map { unsafe strdup($0) }
        unsafe pointers.append(nil)
        // What this process printed must come out before another program takes the descriptors over.
        _ = unsafe fflush(nil)
        _ = unsafe execv(path, &pointers)
        let code = currentErrno()
        for index in 0..<arguments.count { unsafe free(pointers[index]) }
        throw PosixError(errno: code, function: "execv", object: path)
    }

    /// The device and inode of `path` (symbolic links followed), or nil when it cannot be stat-ed.
    package static func fileIdentity(_ path: String) -> (device: UInt64, inode: UInt64)? {
        var st = stat()
        guard unsafe stat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    package static var processID: Int32 { getpid() }
    package static var effectiveUserID: UInt32 { geteuid() }

    /// Monotonic time in nanoseconds. Wraps `clock_gettime(CLOCK_MONOTONIC)`.
    package static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        unsafe clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Wall-clock seconds and microseconds, for log lines.
    package static func wallClock() -> (seconds: Int, microseconds: Int) {
        var tv = timeval()
        unsafe gettimeofday(&tv, nil)
        return (Int(tv.tv_sec), Int(tv.tv_usec))
    }

    /// Exits immediately with `status` (no atexit handlers).
    package static func exitNow(_ status: Int32) -> Never { _exit(status) }

    /// The value of environment variable `name`, or nil. Wraps `getenv`.
    package static func environment(_ name: String) -> String? {
        guard let value = unsafe getenv(name) else { return nil }
        return unsafe String(cString: value)
    }
}

/// The write end of the signal pipe; set once before the handlers are installed and only read
/// by the async-signal-safe handler afterwards.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

private let signalToPipe: @convention(c) (Int32) -> Void = { sig in
    var byte = UInt8(truncatingIfNeeded: sig)
    _ = unsafe withUnsafeMutableBytes(of: &byte) { raw in unsafe Glibc.write(signalPipeWriteEnd, raw.baseAddress, 1) }
}
