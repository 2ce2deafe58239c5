#ifndef CVTPM_SHIMS_H
#define CVTPM_SHIMS_H

/// renameat2(2) with RENAME_EXCHANGE: atomically swaps two names in directories. Returns 0 or -1 with errno.
int cvtpm_rename_exchange(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);

#endif
