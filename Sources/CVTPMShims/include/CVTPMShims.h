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

/// Creates a vTPM proxy device through the opened /dev/vtpmx (VTPM_PROXY_IOC_NEW_DEV with `flags`, 1 for a
/// TPM 2). The kernel's /dev/tpmN and /dev/tpmrmN then take their commands from `*fd`. Returns 0 or -1 with errno.
int cvtpm_vtpm_proxy_new(int vtpmx, unsigned int flags, unsigned int *tpm_number, int *fd, unsigned int *major,
                         unsigned int *minor);

/// What a CUSE device's requests are handed to (libfuse3's CUSE low-level API, cuse_fuse.c). Each returns 0 or an
/// errno for the request; `context` is passed back unchanged.
struct cvtpm_cuse_handlers {
    void *context;
    /// The kernel created the device node.
    void (*init_done)(void *context);
    int (*open)(void *context);
    /// Fills at most `size` bytes of `buffer` and sets `*length`.
    int (*read)(void *context, unsigned char *buffer, size_t size, size_t *length);
    int (*write)(void *context, const unsigned char *buffer, size_t size);
    /// A restricted ioctl: `input` holds the argument's bytes when the command writes (`_IOW`, `_IOWR`), and the
    /// handler fills at most `output_size` bytes of `output` when it reads (`_IOR`, `_IOWR`).
    int (*ioctl)(void *context, unsigned int command, const unsigned char *input, size_t input_size,
                 unsigned char *output, size_t output_size, size_t *output_length);
    void (*release)(void *context);
};

struct cvtpm_cuse;

/// Opens `cuse_path` (/dev/cuse) and starts a CUSE session for the device `name` (DEVNAME=name, created by the
/// kernel as /dev/name once the first request, CUSE_INIT, is processed). `major` 0 lets the kernel choose. The
/// handlers are copied. Returns the session, or NULL with `*error` set to an errno.
struct cvtpm_cuse *cvtpm_cuse_open(const char *cuse_path, const char *name, unsigned int major, unsigned int minor,
                                   const struct cvtpm_cuse_handlers *handlers, int *error);

/// The session's descriptor (poll it for readable).
int cvtpm_cuse_fd(const struct cvtpm_cuse *cuse);

/// Receives one request and processes it (the handlers run on this thread). Returns 1, 0 when the session ended
/// (the device is gone), or a negative errno.
int cvtpm_cuse_process(struct cvtpm_cuse *cuse);

/// Ends the session: the kernel removes the device.
void cvtpm_cuse_close(struct cvtpm_cuse *cuse);

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
