/* Helpers shared by the extension's sources; not part of the C API. */
#ifndef DRIFT_SGL_EXT_INTERNAL_H_
#define DRIFT_SGL_EXT_INTERNAL_H_

#include "drift_ext.h"

/* Format this thread's error message (printf-style) and return `code`, so
 * that a failure path reads `return drift_fail(code, "...", ...);`. */
int drift_fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clear this thread's error message (at the start of every API call). */
void drift_clear_error(void);

#endif /* DRIFT_SGL_EXT_INTERNAL_H_ */
