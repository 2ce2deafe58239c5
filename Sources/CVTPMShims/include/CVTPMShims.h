#ifndef CVTPM_SHIMS_H
#define CVTPM_SHIMS_H

#include <stddef.h>

/// renameat2(2) with RENAME_EXCHANGE: atomically swaps two names in directories. Returns 0 or -1 with errno.
int cvtpm_rename_exchange(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);

/// The process, user and group of a UNIX socket's peer (SO_PEERCRED). Returns 0 or -1 with errno.
int cvtpm_peer_credentials(int fd, int *pid, unsigned int *uid, unsigned int *gid);

/// What a seccomp filter does with a system call outside its allow list.
enum cvtpm_seccomp_action {
    CVTPM_SECCOMP_KILL = 1,  ///< kill the process (SCMP_ACT_KILL_PROCESS)
    CVTPM_SECCOMP_LOG = 2,   ///< allow it and have the kernel log it (SCMP_ACT_LOG)
};

/// Installs a seccomp filter on every thread of the process (TSYNC; NO_NEW_PRIVS is set) that allows the
/// `count` system calls named in `names` and gives every other one `action`. `socket`, `ioctl`, `clone` and
/// `clone3` are allowed only in part (see shims.c): socket families, FIONREAD, threads only. Returns 0, or a negative errno;
/// -EINVAL with `*unknown` set to the index of a name libseccomp does not know for this architecture.
int cvtpm_seccomp_install(int action, const char *const *names, size_t count, size_t *unknown);

/// Whether libseccomp knows the system call `name` on this architecture.
int cvtpm_seccomp_known(const char *name);

/// Makes a system call outside any profile vtpmd installs (personality(2) querying the current persona, which
/// changes nothing), for the tests of the filter. Returns its result.
int cvtpm_seccomp_probe(void);

/// Empties the capability bounding set (where this process may: with CAP_SETPCAP) and the ambient set.
/// Returns 0 or a negative errno.
int cvtpm_drop_bounding_capabilities(void);

/// Clears the permitted, effective and inheritable capability sets (capset(2)). Returns 0 or a negative errno.
int cvtpm_clear_capabilities(void);

#endif

// SQLite's file I/O under the fault rules of tests (FaultInjection in _VTPMPosix): a VFS that passes every call
// to SQLite's default one and first asks `hook(call, path)`, which returns 0 or an errno (the call then fails as
// SQLite's I/O error). Registered as the default VFS on first use; only a test's fault rules install it.
#define CVTPM_FAULT_OPEN 1
#define CVTPM_FAULT_WRITE 2
#define CVTPM_FAULT_SYNC 3
#define CVTPM_FAULT_TRUNCATE 4
typedef int (*cvtpm_fault_hook)(int call, const char *path);
int cvtpm_sqlite_faults_install(cvtpm_fault_hook hook);
