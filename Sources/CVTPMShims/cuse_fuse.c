// The character devices of `vtpmd cuse` (libfuse3's CUSE low-level API) and `vtpmd chardev --vtpm-proxy`
// (the kernel's /dev/vtpmx). The requests are handed to Swift handlers one at a time, on the thread that calls
// cvtpm_cuse_process; this file only moves bytes between libfuse and the handlers.
#define _GNU_SOURCE
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fcntl.h>
#include <fuse3/cuse_lowlevel.h>
#include <fuse3/fuse_lowlevel.h>
#include <linux/vtpm_proxy.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "CVTPMShims.h"

int cvtpm_vtpm_proxy_new(int vtpmx, unsigned int flags, unsigned int *tpm_number, int *fd, unsigned int *major,
                         unsigned int *minor)
{
    struct vtpm_proxy_new_dev request;
    memset(&request, 0, sizeof request);
    request.flags = flags;
    if (ioctl(vtpmx, VTPM_PROXY_IOC_NEW_DEV, &request) != 0) return -1;
    *tpm_number = request.tpm_num;
    *fd = (int)request.fd;
    *major = request.major;
    *minor = request.minor;
    return 0;
}

// Largest read or ioctl argument a handler is given a buffer for (a TPM response is at most 4 KiB, an ioctl
// argument at most 16 KiB by its size field).
#define CVTPM_CUSE_MAX_TRANSFER (64 * 1024)

struct cvtpm_cuse {
    struct fuse_session *session;
    struct cvtpm_cuse_handlers handlers;
    struct fuse_buf buffer;
};

static struct cvtpm_cuse *cuse_of(fuse_req_t req) { return fuse_req_userdata(req); }

static void cuse_init_done(void *userdata)
{
    struct cvtpm_cuse *cuse = userdata;
    if (cuse->handlers.init_done) cuse->handlers.init_done(cuse->handlers.context);
}

static void cuse_open(fuse_req_t req, struct fuse_file_info *fi)
{
    struct cvtpm_cuse *cuse = cuse_of(req);
    int error = cuse->handlers.open(cuse->handlers.context);
    if (error != 0) {
        fuse_reply_err(req, error);
        return;
    }
    fi->direct_io = 1;
    fi->nonseekable = 1;
    fuse_reply_open(req, fi);
}

static void cuse_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)off;
    (void)fi;
    struct cvtpm_cuse *cuse = cuse_of(req);
    if (size > CVTPM_CUSE_MAX_TRANSFER) size = CVTPM_CUSE_MAX_TRANSFER;
    unsigned char *buffer = malloc(size ? size : 1);
    if (!buffer) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t length = 0;
    int error = cuse->handlers.read(cuse->handlers.context, buffer, size, &length);
    if (error != 0) {
        fuse_reply_err(req, error);
    } else {
        fuse_reply_buf(req, (const char *)buffer, length > size ? size : length);
    }
    free(buffer);
}

static void cuse_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)off;
    (void)fi;
    struct cvtpm_cuse *cuse = cuse_of(req);
    int error = cuse->handlers.write(cuse->handlers.context, (const unsigned char *)buf, size);
    if (error != 0) {
        fuse_reply_err(req, error);
    } else {
        fuse_reply_write(req, size);
    }
}

static void cuse_ioctl(fuse_req_t req, int cmd, void *arg, struct fuse_file_info *fi, unsigned int flags,
                       const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
    (void)arg;
    (void)fi;
    struct cvtpm_cuse *cuse = cuse_of(req);
    if (flags & FUSE_IOCTL_COMPAT) {
        fuse_reply_err(req, ENOSYS);
        return;
    }
    if (out_bufsz > CVTPM_CUSE_MAX_TRANSFER) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    unsigned char *output = calloc(1, out_bufsz ? out_bufsz : 1);
    if (!output) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t length = 0;
    int error = cuse->handlers.ioctl(cuse->handlers.context, (unsigned int)cmd, in_buf, in_bufsz, output, out_bufsz,
                                     &length);
    if (error != 0) {
        fuse_reply_err(req, error);
    } else {
        fuse_reply_ioctl(req, 0, out_bufsz ? output : NULL, length > out_bufsz ? out_bufsz : length);
    }
    free(output);
}

static void cuse_release(fuse_req_t req, struct fuse_file_info *fi)
{
    (void)fi;
    struct cvtpm_cuse *cuse = cuse_of(req);
    cuse->handlers.release(cuse->handlers.context);
    fuse_reply_err(req, 0);
}

static const struct cuse_lowlevel_ops cuse_operations = {
    .init_done = cuse_init_done,
    .open = cuse_open,
    .read = cuse_read,
    .write = cuse_write,
    .ioctl = cuse_ioctl,
    .release = cuse_release,
};

struct cvtpm_cuse *cvtpm_cuse_open(const char *cuse_path, const char *name, unsigned int major, unsigned int minor,
                                   const struct cvtpm_cuse_handlers *handlers, int *error)
{
    struct cvtpm_cuse *cuse = calloc(1, sizeof *cuse);
    char devname[160];
    char fdname[32];
    if (!cuse) {
        *error = ENOMEM;
        return NULL;
    }
    cuse->handlers = *handlers;
    if (snprintf(devname, sizeof devname, "DEVNAME=%s", name) >= (int)sizeof devname) {
        free(cuse);
        *error = ENAMETOOLONG;
        return NULL;
    }
    const char *info[] = {devname};
    struct cuse_info ci;
    memset(&ci, 0, sizeof ci);
    ci.dev_major = major;
    ci.dev_minor = minor;
    ci.dev_info_argc = 1;
    ci.dev_info_argv = info;
    char *argv[] = {"vtpmd", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(1, argv);
    cuse->session = cuse_lowlevel_new(&args, &ci, &cuse_operations, cuse);
    fuse_opt_free_args(&args);
    if (!cuse->session) {
        free(cuse);
        *error = ENOMEM;
        return NULL;
    }
    // Non-blocking: a request withdrawn between poll and read (its process was killed) must not leave the loop
    // blocked in read, deaf to SIGTERM; libfuse's receive then says EAGAIN.
    int fd = open(cuse_path, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        *error = errno;
        fuse_session_destroy(cuse->session);
        free(cuse);
        return NULL;
    }
    // libfuse takes an open descriptor as the mount point /dev/fd/N.
    snprintf(fdname, sizeof fdname, "/dev/fd/%d", fd);
    if (fuse_session_mount(cuse->session, fdname) != 0) {
        *error = EIO;
        close(fd);
        fuse_session_destroy(cuse->session);
        free(cuse);
        return NULL;
    }
    return cuse;
}

int cvtpm_cuse_fd(const struct cvtpm_cuse *cuse) { return fuse_session_fd(cuse->session); }

int cvtpm_cuse_process(struct cvtpm_cuse *cuse)
{
    if (fuse_session_exited(cuse->session)) return 0;
    int res = fuse_session_receive_buf(cuse->session, &cuse->buffer);
    if (res == -EINTR || res == -EAGAIN) return 1;
    if (res < 0) return res;
    if (res == 0) return 0;
    fuse_session_process_buf(cuse->session, &cuse->buffer);
    return fuse_session_exited(cuse->session) ? 0 : 1;
}

void cvtpm_cuse_close(struct cvtpm_cuse *cuse)
{
    if (!cuse) return;
    fuse_session_unmount(cuse->session);
    fuse_session_destroy(cuse->session);
    free(cuse->buffer.mem);
    free(cuse);
}
