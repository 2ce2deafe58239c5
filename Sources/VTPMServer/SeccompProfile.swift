import _VTPMPosix

/// vtpmd's seccomp filter: the system calls it needs once it serves (after the configuration is read, the
/// sockets and files are open and `--runas` took effect), as an allow list. Everything else gets the action
/// of `--seccomp action=` (swtpm's option): `kill` (the default, as swtpm's), `log` (allowed, logged by the
/// kernel as audit type 1326) or `none` (no filter).
///
/// How the list was measured is in docs/SECCOMP.md: `scripts/seccomp-syscalls.sh` traces what vtpmd calls
/// after this point in each mode (socket, chardev, clone-rekey with the CA in-process, created on first use,
/// or in the separated signer, SQLite and PostgreSQL registries), and a few calls of paths that trace does
/// not reach are added, each named there; the whole test suite (QEMU guests, libvirt, swtpm's own suite)
/// runs under `action=kill`.
public enum SeccompProfile {
    /// What a system call outside the list gets.
    public enum Action: String, Sendable, Hashable, CaseIterable {
        case none, kill, log
    }

    /// The allow list, by libseccomp's names (x86_64: a name another architecture lacks, such as aarch64's
    /// missing `epoll_create`, resolves to a placeholder libseccomp leaves out of the filter).
    public static let allowed: [String] = [
        // Files: the state directory (read, atomic replace, directory sync, the lock), the log, the registry's
        // SQLite files, the host CA (created in its directory at the first certificate), /proc and cgroup facts.
        "openat", "read", "write", "pread64", "pwrite64", "lseek", "close", "newfstatat", "fstat", "statfs", "fcntl",
        "fsync", "fdatasync", "ftruncate", "getdents64", "renameat", "renameat2", "unlink", "unlinkat", "mkdirat",
        "linkat", "fchmod",
        // Sockets: control and data connections (accept, descriptors passed with SCM_RIGHTS), the CA signer and
        // PostgreSQL (connect), SwiftNIO's vector writes.
        "accept", "socket", "connect", "recvmsg", "sendmsg", "sendto", "readv", "writev", "setsockopt",
        "getsockopt", "getsockname", "getpeername",
        // glibc's resolver, for a PostgreSQL registry named by host: DNS over UDP, FIONREAD, and the netlink
        // socket that sorts several addresses. `socket` is allowed for UNIX, IPv4, IPv6 and netlink only, and
        // `ioctl` for FIONREAD only (argument filters).
        "sendmmsg", "recvfrom", "ioctl", "bind", "uname",
        // Waiting: vtpmd's poll loop, SwiftNIO's event loop (PostgreSQL), the registry writer's back-off.
        "poll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2",
        "timerfd_create", "timerfd_settime", "futex", "nanosleep", "clock_nanosleep", "clock_gettime",
        "restart_syscall",
        // Memory.
        "brk", "mmap", "munmap", "mprotect", "mremap", "madvise",
        // Daemon mode: standard error onto /dev/null once the parent has the ready report.
        "dup2",
        // Threads (the registry writer, Dispatch, SwiftNIO): start, name, priority, end; signal masks. `clone` only
        // with CLONE_THREAD; `clone3`, whose flags a filter cannot see, fails with ENOSYS and glibc uses `clone`.
        "clone", "clone3", "set_robust_list", "rseq", "prctl", "setpriority", "sched_yield", "sched_getaffinity",
        "gettid",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "exit", "exit_group",
        // Facts: random numbers (keys, serials, nonces), ids for file-ownership checks.
        "getrandom", "getpid", "getuid", "geteuid", "getgid", "getegid",
    ]

    /// The filter for `action` over ``allowed``.
    /// - Returns: How many system calls it allows (``installable``).
    @discardableResult
    static func install(_ action: Action) throws -> Int {
        let filterAction: SeccompFilter.Action
        switch action {
        case .none: filterAction = .none
        case .kill: filterAction = .kill
        case .log: filterAction = .log
        }
        let names = self.installable
        try SeccompFilter.install(action: filterAction, allowing: names)
        return names.count
    }

    /// ``allowed`` without names libseccomp does not know at all.
    static var installable: [String] {
        self.allowed.filter { SeccompFilter.isKnown($0) }
    }
}
