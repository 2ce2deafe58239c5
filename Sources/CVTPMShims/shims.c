#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
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
        rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, NULL);
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
