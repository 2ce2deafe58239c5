#ifndef CLIBTPMS_SHIM_H
#define CLIBTPMS_SHIM_H

#include <libtpms/tpm_types.h>
#include <libtpms/tpm_error.h>
#include <libtpms/tpm_library.h>
#include <libtpms/tpm_memory.h>
#include <libtpms/tpm_tis.h>

#endif
