import _VTPMPosix

/// vtpmd's seccomp filter: the system calls it needs once it serves (after the configuration is read, the
/// sockets and files are open and `--runas` took effect), as an allow list. Everything else gets the action
/// of `--seccomp action=` (swtpm's option): `kill` (the default, as swtpm's), `log` (allowed, logged by the
/// kernel as audit type 1326) or `none` (no filter).
///
/// How the list was measured is in docs/SECCOMP.md: the whole test suite (QEMU guests, swtpm's own suite,
/// clone/rollback/migration, SQLite and PostgreSQL registries, TLS) run with `action=log`, and every
/// logged call reviewed. A call is here because one of those paths makes it, named beside it.
public enum SeccompProfile {
    /// What a system call outside the list gets.
    public enum Action: String, Sendable, Hashable, CaseIterable {
        case none, kill, log
    }

    /// The allow list, by libseccomp's names (x86_64 and aarch64 names alike; names this architecture
    /// lacks are left out by ``installable``).
    public static let allowed: [String] = [
        // Descriptors and files: the state directory, the log, the registry's SQLite file, the CA, /proc.
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek", "close",
        "openat", "open", "fstat", "newfstatat", "stat", "lstat", "statx", "fstatfs", "statfs", "fcntl", "flock",
        "fsync", "fdatasync", "ftruncate", "fallocate", "getdents64", "rename", "renameat", "renameat2", "unlink",
        "unlinkat", "mkdir", "mkdirat", "fchmod", "fchmodat", "chmod", "fchown", "fchownat", "link", "linkat",
        "readlink", "readlinkat", "access", "faccessat", "faccessat2", "getcwd", "dup", "dup2", "dup3", "pipe2",
        "ioctl", "umask", "fadvise64",
        // Sockets: control and data connections (accept, SCM_RIGHTS), PostgreSQL connections.
        "socket", "connect", "accept", "accept4", "getsockname", "getpeername", "getsockopt", "setsockopt",
        "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "socketpair",
        // Waiting: the poll loop, SwiftNIO's event loop (PostgreSQL), Dispatch.
        "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
        "epoll_pwait", "eventfd2", "timerfd_create", "timerfd_settime", "nanosleep", "clock_nanosleep",
        "clock_gettime", "clock_getres", "gettimeofday",
        // Memory.
        "mmap", "munmap", "mprotect", "mremap", "brk", "madvise",
        // Threads (the registry writer, Dispatch, SwiftNIO) and signals.
        "clone", "clone3", "futex", "set_robust_list", "rseq", "set_tid_address", "sched_yield", "sched_getaffinity",
        "getpriority", "setpriority", "prctl", "gettid", "getpid", "tgkill", "exit", "exit_group", "sigaltstack",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "restart_syscall",
        // Process facts: getrandom for keys and nonces, ids for file ownership checks.
        "getrandom", "getuid", "geteuid", "getgid", "getegid", "uname", "sysinfo", "prlimit64", "getrlimit",
    ]

    /// The filter for `action` over ``allowed``.
    static func install(_ action: Action) throws {
        let filterAction: SeccompFilter.Action
        switch action {
        case .none: filterAction = .none
        case .kill: filterAction = .kill
        case .log: filterAction = .log
        }
        try SeccompFilter.install(action: filterAction, allowing: self.installable)
    }

    /// ``allowed`` without the names this architecture does not have (aarch64 has no `open`, `stat`, ...).
    static var installable: [String] {
        self.allowed.filter { SeccompFilter.isKnown($0) }
    }
}
