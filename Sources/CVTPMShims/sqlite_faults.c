// A SQLite VFS that passes every call to the default one, except that a hook may fail a write, a sync, a
// truncation or an open: the registry's own I/O under vtpmd's fault injection (FaultInjection in _VTPMPosix).
// Registered only when a test installs fault rules; never in normal operation.
#include "CVTPMShims.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

static sqlite3_vfs *cvtpm_real_vfs;
static sqlite3_vfs cvtpm_fault_vfs;
static cvtpm_fault_hook cvtpm_hook;

struct cvtpm_fault_file {
    sqlite3_file base;
    sqlite3_io_methods methods;
    char path[512];
    sqlite3_file *real;
};

static struct cvtpm_fault_file *fault_file(sqlite3_file *file) { return (struct cvtpm_fault_file *)file; }

static int fault(struct cvtpm_fault_file *f, int call) {
    return cvtpm_hook != NULL && cvtpm_hook(call, f->path) != 0;
}

static int f_close(sqlite3_file *file) {
    struct cvtpm_fault_file *f = fault_file(file);
    return f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
}
static int f_read(sqlite3_file *file, void *buffer, int amount, sqlite3_int64 offset) {
    struct cvtpm_fault_file *f = fault_file(file);
    return f->real->pMethods->xRead(f->real, buffer, amount, offset);
}
static int f_write(sqlite3_file *file, const void *buffer, int amount, sqlite3_int64 offset) {
    struct cvtpm_fault_file *f = fault_file(file);
    if (fault(f, CVTPM_FAULT_WRITE)) return SQLITE_IOERR_WRITE;
    return f->real->pMethods->xWrite(f->real, buffer, amount, offset);
}
static int f_truncate(sqlite3_file *file, sqlite3_int64 size) {
    struct cvtpm_fault_file *f = fault_file(file);
    if (fault(f, CVTPM_FAULT_TRUNCATE)) return SQLITE_IOERR_TRUNCATE;
    return f->real->pMethods->xTruncate(f->real, size);
}
static int f_sync(sqlite3_file *file, int flags) {
    struct cvtpm_fault_file *f = fault_file(file);
    if (fault(f, CVTPM_FAULT_SYNC)) return SQLITE_IOERR_FSYNC;
    return f->real->pMethods->xSync(f->real, flags);
}
static int f_file_size(sqlite3_file *file, sqlite3_int64 *size) {
    return fault_file(file)->real->pMethods->xFileSize(fault_file(file)->real, size);
}
static int f_lock(sqlite3_file *file, int level) {
    return fault_file(file)->real->pMethods->xLock(fault_file(file)->real, level);
}
static int f_unlock(sqlite3_file *file, int level) {
    return fault_file(file)->real->pMethods->xUnlock(fault_file(file)->real, level);
}
static int f_check_reserved_lock(sqlite3_file *file, int *out) {
    return fault_file(file)->real->pMethods->xCheckReservedLock(fault_file(file)->real, out);
}
static int f_file_control(sqlite3_file *file, int op, void *arg) {
    return fault_file(file)->real->pMethods->xFileControl(fault_file(file)->real, op, arg);
}
static int f_sector_size(sqlite3_file *file) {
    return fault_file(file)->real->pMethods->xSectorSize(fault_file(file)->real);
}
static int f_device_characteristics(sqlite3_file *file) {
    return fault_file(file)->real->pMethods->xDeviceCharacteristics(fault_file(file)->real);
}
static int f_shm_map(sqlite3_file *file, int page, int size, int extend, void volatile **out) {
    return fault_file(file)->real->pMethods->xShmMap(fault_file(file)->real, page, size, extend, out);
}
static int f_shm_lock(sqlite3_file *file, int offset, int n, int flags) {
    return fault_file(file)->real->pMethods->xShmLock(fault_file(file)->real, offset, n, flags);
}
static void f_shm_barrier(sqlite3_file *file) { fault_file(file)->real->pMethods->xShmBarrier(fault_file(file)->real); }
static int f_shm_unmap(sqlite3_file *file, int delete_flag) {
    return fault_file(file)->real->pMethods->xShmUnmap(fault_file(file)->real, delete_flag);
}
static int f_fetch(sqlite3_file *file, sqlite3_int64 offset, int amount, void **out) {
    return fault_file(file)->real->pMethods->xFetch(fault_file(file)->real, offset, amount, out);
}
static int f_unfetch(sqlite3_file *file, sqlite3_int64 offset, void *page) {
    return fault_file(file)->real->pMethods->xUnfetch(fault_file(file)->real, offset, page);
}

static int f_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags) {
    (void)vfs;
    struct cvtpm_fault_file *f = fault_file(file);
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)(f + 1);
    if (name != NULL) {
        strncpy(f->path, name, sizeof(f->path) - 1);
        if (fault(f, CVTPM_FAULT_OPEN)) return SQLITE_CANTOPEN;
    }
    int rc = cvtpm_real_vfs->xOpen(cvtpm_real_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK || f->real->pMethods == NULL) {
        // A failed open may still have left methods (the VFS contract allows it): let the real file close.
        if (f->real->pMethods != NULL) f->real->pMethods->xClose(f->real);
        f->base.pMethods = NULL;
        return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
    }
    const sqlite3_io_methods *real = f->real->pMethods;
    sqlite3_io_methods *m = &f->methods;
    m->iVersion = real->iVersion;
    m->xClose = f_close;
    m->xRead = f_read;
    m->xWrite = f_write;
    m->xTruncate = f_truncate;
    m->xSync = f_sync;
    m->xFileSize = f_file_size;
    m->xLock = f_lock;
    m->xUnlock = f_unlock;
    m->xCheckReservedLock = f_check_reserved_lock;
    m->xFileControl = f_file_control;
    m->xSectorSize = f_sector_size;
    m->xDeviceCharacteristics = f_device_characteristics;
    if (real->iVersion >= 2) {
        m->xShmMap = real->xShmMap ? f_shm_map : NULL;
        m->xShmLock = real->xShmLock ? f_shm_lock : NULL;
        m->xShmBarrier = real->xShmBarrier ? f_shm_barrier : NULL;
        m->xShmUnmap = real->xShmUnmap ? f_shm_unmap : NULL;
    }
    if (real->iVersion >= 3) {
        m->xFetch = real->xFetch ? f_fetch : NULL;
        m->xUnfetch = real->xUnfetch ? f_unfetch : NULL;
    }
    f->base.pMethods = m;
    return SQLITE_OK;
}

int cvtpm_sqlite_faults_install(cvtpm_fault_hook hook) {
    if (cvtpm_real_vfs != NULL) {
        cvtpm_hook = hook;
        return 0;
    }
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    if (real == NULL) return -1;
    cvtpm_real_vfs = real;
    cvtpm_fault_vfs = *real;
    cvtpm_fault_vfs.zName = "vtpm-faults";
    cvtpm_fault_vfs.szOsFile = (int)sizeof(struct cvtpm_fault_file) + real->szOsFile;
    cvtpm_fault_vfs.xOpen = f_open;
    cvtpm_fault_vfs.pNext = NULL;
    cvtpm_hook = hook;
    return sqlite3_vfs_register(&cvtpm_fault_vfs, 1) == SQLITE_OK ? 0 : -1;
}
