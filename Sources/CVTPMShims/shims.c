#define _GNU_SOURCE
#include <stdio.h>
#include <fcntl.h>
#include "CVTPMShims.h"

int cvtpm_rename_exchange(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    return renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_EXCHANGE);
}
