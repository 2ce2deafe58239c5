#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "CVTPMShims.h"

int cvtpm_rename_exchange(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    return renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_EXCHANGE);
}

int cvtpm_peer_credentials(int fd, int *pid, unsigned int *uid, unsigned int *gid)
{
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

/* Adds the allow rule for system call `nr` named `name`. Four calls are allowed only in part, by their
 * arguments (which a filter can see when they are not behind a pointer):
 *   socket  only for AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (glibc's resolver sorts addresses over netlink);
 *   ioctl   only FIONREAD (glibc's resolver) and TCGETS (isatty: glibc's stdio asks it of a character device,
 *           such as the /dev/null a daemon's stdout is, at its first output there);
 *   clone   only with CLONE_THREAD: a thread, never a new process;
 *   clone3  fails with ENOSYS (its flags are behind a pointer), and glibc then creates threads with clone. */
static int add_allow_rule(scmp_filter_ctx ctx, const char *name, int nr)
{
    if (strcmp(name, "socket") == 0) {
        const int domains[] = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK};
        for (size_t i = 0; i < sizeof domains / sizeof domains[0]; i++) {
            struct scmp_arg_cmp domain = SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)domains[i]);
            int rc = seccomp_rule_add_exact_array(ctx, SCMP_ACT_ALLOW, nr, 1, &domain);
            if (rc < 0) return rc;
        }
        return 0;
    }
    if (strcmp(name, "ioctl") == 0) {
        const unsigned long requests[] = {FIONREAD, TCGETS};
        for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
            struct scmp_arg_cmp request = SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t)requests[i]);
            int rc = seccomp_rule_add_exact_array(ctx, SCMP_ACT_ALLOW, nr, 1, &request);
            if (rc != 0) return rc;
        }
        return 0;
    }
    if (strcmp(name, "clone") == 0) {
        struct scmp_arg_cmp flags = SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD);
        return seccomp_rule_add_exact_array(ctx, SCMP_ACT_ALLOW, nr, 1, &flags);
    }
    if (strcmp(name, "clone3") == 0) {
        return seccomp_rule_add_exact_array(ctx, SCMP_ACT_ERRNO(ENOSYS), nr, 0, NULL);
    }
    return seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, NULL);
}

int cvtpm_seccomp_install(int action, const char *const *names, size_t count, size_t *unknown)
{
    uint32_t otherwise;
    switch (action) {
    case CVTPM_SECCOMP_KILL: otherwise = SCMP_ACT_KILL_PROCESS; break;
    case CVTPM_SECCOMP_LOG: otherwise = SCMP_ACT_LOG; break;
    default: return -EINVAL;
    }
    scmp_filter_ctx ctx = seccomp_init(otherwise);
    if (ctx == NULL) return -ENOMEM;
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        int nr = seccomp_syscall_resolve_name(names[i]);
        if (nr == __NR_SCMP_ERROR) {
            if (unknown != NULL) *unknown = i;
            rc = -EINVAL;
            break;
        }
        rc = add_allow_rule(ctx, names[i], nr);
    }
    if (rc == 0) rc = seccomp_load(ctx);
    seccomp_release(ctx);
    return rc < 0 ? rc : 0;
}

int cvtpm_seccomp_known(const char *name)
{
    return seccomp_syscall_resolve_name(name) != __NR_SCMP_ERROR;
}

int cvtpm_seccomp_probe(void)
{
    return personality(0xffffffff);
}

int cvtpm_drop_bounding_capabilities(void)
{
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -errno;
    for (unsigned long cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0) break; /* past the last capability */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return -errno;
    }
    return 0;
}

int cvtpm_clear_capabilities(void)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0) return -errno;
    return 0;
}
