/* The thread-local error message behind drift_last_error(). */
#include <cstdarg>
#include <cstdio>

#include "internal.h"

namespace {
thread_local char g_last_error[1024];
}  // namespace

int drift_fail(int code, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_last_error, sizeof(g_last_error), fmt, args);
  va_end(args);
  return code;
}

void drift_clear_error(void) { g_last_error[0] = '\0'; }

extern "C" DRIFT_API const char* drift_last_error(void) { return g_last_error; }

extern "C" DRIFT_API int drift_ext_abi_version(void) { return DRIFT_EXT_ABI_VERSION; }
