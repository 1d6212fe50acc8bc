/* Green contexts on disjoint SM groups, through the CUDA driver API.
 *
 * The driver is not linked: libcuda.so.1 is opened at the first call and every
 * entry point is resolved with cuGetProcAddress, at the CUDA version of the
 * headers (or the driver's, if older). So the library loads without a driver,
 * an old driver gives a clear error instead of an unresolved symbol, and the
 * prototypes below are exactly the headers' ones.
 */
#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <mutex>

#include "internal.h"

#if CUDA_VERSION < 12050
#error "sgl-kernel-ext needs CUDA >= 12.5 headers (cuGreenCtxStreamCreate)"
#endif

namespace {

// Driver entry points used here. decltype(&name) follows cuda.h's renames
// (cuStreamDestroy -> cuStreamDestroy_v2, ...), and the base name is what
// cuGetProcAddress expects.
#define DRIFT_DRIVER_FUNCTIONS(X) \
  X(cuDeviceGet)                  \
  X(cuCtxGetCurrent)              \
  X(cuCtxSetCurrent)              \
  X(cuDevicePrimaryCtxRetain)     \
  X(cuDevicePrimaryCtxRelease)    \
  X(cuDeviceGetDevResource)       \
  X(cuDevSmResourceSplitByCount)  \
  X(cuDevResourceGenerateDesc)    \
  X(cuGreenCtxCreate)             \
  X(cuGreenCtxDestroy)            \
  X(cuGreenCtxGetDevResource)     \
  X(cuGreenCtxStreamCreate)       \
  X(cuStreamDestroy)

struct Driver {
  int status = 0;  // 0, or the error code every call returns
  char error[512] = {0};
  decltype(&cuGetErrorName) p_cuGetErrorName = nullptr;
#define X(name) decltype(&name) p_##name = nullptr;
  DRIFT_DRIVER_FUNCTIONS(X)
#undef X
};

using GetProcAddressFn = CUresult (*)(const char*, void**, int, cuuint64_t,
                                      CUdriverProcAddressQueryResult*);

int load_failed(Driver* d, int code, const char* what, const char* detail) {
  std::snprintf(d->error, sizeof(d->error), "%s: %s", what, detail);
  d->status = code;
  return code;
}

int load_driver(Driver* d) {
  // The handle is kept for the life of the process.
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    return load_failed(d, DRIFT_ERR_DRIVER_UNAVAILABLE, "dlopen(libcuda.so.1) failed",
                       why ? why : "unknown error (is an NVIDIA driver installed?)");
  }
  auto init = reinterpret_cast<decltype(&cuInit)>(dlsym(lib, "cuInit"));
  auto driver_version =
      reinterpret_cast<decltype(&cuDriverGetVersion)>(dlsym(lib, "cuDriverGetVersion"));
  auto get_proc = reinterpret_cast<GetProcAddressFn>(dlsym(lib, "cuGetProcAddress_v2"));
  d->p_cuGetErrorName = reinterpret_cast<decltype(&cuGetErrorName)>(dlsym(lib, "cuGetErrorName"));
  if (!init || !driver_version || !get_proc || !d->p_cuGetErrorName) {
    return load_failed(d, DRIFT_ERR_DRIVER_UNAVAILABLE, "libcuda.so.1",
                       "lacks cuInit/cuDriverGetVersion/cuGetProcAddress_v2/cuGetErrorName "
                       "(driver older than CUDA 12.0?)");
  }
  const char* call = "cuInit";
  CUresult r = init(0);
  int version = 0;
  if (r == CUDA_SUCCESS) {
    call = "cuDriverGetVersion";
    r = driver_version(&version);
  }
  if (r == CUDA_SUCCESS && version < 12050) {
    char detail[128];
    std::snprintf(detail, sizeof(detail),
                  "the driver supports CUDA %d.%d; green-context streams need 12.5",
                  version / 1000, version % 1000 / 10);
    return load_failed(d, DRIFT_ERR_DRIVER_UNAVAILABLE, "cuDriverGetVersion", detail);
  }
  const int request = version < CUDA_VERSION ? version : CUDA_VERSION;
#define X(name)                                                                          \
  if (r == CUDA_SUCCESS) {                                                               \
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SUCCESS;                  \
    call = "cuGetProcAddress(" #name ")";                                                \
    r = get_proc(#name, reinterpret_cast<void**>(&d->p_##name), request,                 \
                 CU_GET_PROC_ADDRESS_DEFAULT, &found);                                   \
    if (r == CUDA_SUCCESS && (found != CU_GET_PROC_ADDRESS_SUCCESS || !d->p_##name)) {   \
      return load_failed(d, DRIFT_ERR_DRIVER_UNAVAILABLE, call,                          \
                         found == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT              \
                             ? "the driver's CUDA version is too old"                    \
                             : "symbol not found in libcuda.so.1");                      \
    }                                                                                    \
  }
  DRIFT_DRIVER_FUNCTIONS(X)
#undef X
  if (r != CUDA_SUCCESS) {
    const char* name = nullptr;
    if (d->p_cuGetErrorName(r, &name) != CUDA_SUCCESS || name == nullptr) name = "unknown CUresult";
    char what[96], detail[160];
    std::snprintf(what, sizeof(what), "%s failed", call);
    std::snprintf(detail, sizeof(detail), "%s (%d)", name, static_cast<int>(r));
    return load_failed(d, static_cast<int>(r), what, detail);
  }
  return 0;
}

// The driver table, loaded once per process (thread-safe).
const Driver& driver() {
  static Driver d;
  static std::once_flag once;
  std::call_once(once, [] { load_driver(&d); });
  return d;
}

// Return `r` with the thread's error set to "<where>: <call> failed: <NAME> (<r>)".
int cu_fail(const Driver& d, const char* where, const char* call, CUresult r) {
  const char* name = nullptr;
  if (d.p_cuGetErrorName == nullptr || d.p_cuGetErrorName(r, &name) != CUDA_SUCCESS ||
      name == nullptr) {
    name = "unknown CUresult";
  }
  return drift_fail(static_cast<int>(r), "%s: %s failed: %s (%d)", where, call, name,
                    static_cast<int>(r));
}

// Call driver entry point `fn` of the table `drv` in scope; on failure return
// its CUresult with the message naming `fn`.
#define CU_TRY(where, fn, ...)                                      \
  do {                                                              \
    const CUresult r_ = drv.p_##fn(__VA_ARGS__);                    \
    if (r_ != CUDA_SUCCESS) return cu_fail(drv, where, #fn, r_);    \
  } while (0)

// The driver table, or the load error as this thread's message.
const Driver* driver_or_fail(const char* where, int* code) {
  const Driver& d = driver();
  if (d.status != 0) {
    *code = drift_fail(d.status, "%s: %s", where, d.error);
    return nullptr;
  }
  return &d;
}

// Count of SMs in an SM resource.
int sm_count(const CUdevResource& res) { return static_cast<int>(res.sm.smCount); }

// A green context on `res` (with its default stream, which
// cuGreenCtxStreamCreate requires).
int make_green_ctx(const Driver& drv, CUdevice dev, CUdevResource* res, CUgreenCtx* ctx) {
  static const char* where = "drift_green_pair_create";
  CUdevResourceDesc desc;
  CU_TRY(where, cuDevResourceGenerateDesc, &desc, res, 1);
  CU_TRY(where, cuGreenCtxCreate, ctx, desc, dev, CU_GREEN_CTX_DEFAULT_STREAM);
  return 0;
}

int new_stream(const Driver& drv, CUgreenCtx ctx, uintptr_t* out) {
  static const char* where = "drift_green_pair_create";
  CUstream stream = nullptr;
  CU_TRY(where, cuGreenCtxStreamCreate, &stream, ctx, CU_STREAM_NON_BLOCKING, 0);
  *out = reinterpret_cast<uintptr_t>(stream);
  return 0;
}

int realized_sms(const Driver& drv, CUgreenCtx ctx, int* out) {
  static const char* where = "drift_green_pair_create";
  CUdevResource res;
  std::memset(&res, 0, sizeof(res));
  CU_TRY(where, cuGreenCtxGetDevResource, ctx, &res, CU_DEV_RESOURCE_TYPE_SM);
  *out = sm_count(res);
  return 0;
}

// Release what `p` holds. With report=false the thread's error message is
// left alone (used to clean up after a failed create).
int destroy_pair(const Driver& drv, drift_green_pair* p, bool report) {
  static const char* where = "drift_green_pair_destroy";
  int first = 0;
  auto note = [&](CUresult r, const char* call) {
    if (r != CUDA_SUCCESS && first == 0) first = report ? cu_fail(drv, where, call, r) : int(r);
  };
  if (p->decode_stream != 0 && p->decode_stream != p->prefill_stream) {
    note(drv.p_cuStreamDestroy(reinterpret_cast<CUstream>(p->decode_stream)),
         "cuStreamDestroy(decode_stream)");
  }
  if (p->prefill_stream != 0) {
    note(drv.p_cuStreamDestroy(reinterpret_cast<CUstream>(p->prefill_stream)),
         "cuStreamDestroy(prefill_stream)");
  }
  if (p->decode_ctx != nullptr && p->decode_ctx != p->prefill_ctx) {
    note(drv.p_cuGreenCtxDestroy(static_cast<CUgreenCtx>(p->decode_ctx)),
         "cuGreenCtxDestroy(decode)");
  }
  if (p->prefill_ctx != nullptr) {
    note(drv.p_cuGreenCtxDestroy(static_cast<CUgreenCtx>(p->prefill_ctx)),
         "cuGreenCtxDestroy(prefill)");
  }
  if (p->flags & DRIFT_PAIR_RETAINED_PRIMARY) {
    CUdevice dev;
    CUresult r = drv.p_cuDeviceGet(&dev, p->device);
    if (r == CUDA_SUCCESS) r = drv.p_cuDevicePrimaryCtxRelease(dev);
    note(r, "cuDevicePrimaryCtxRelease");
  }
  std::memset(p, 0, sizeof(*p));
  return first;
}

int create_pair(const Driver& drv, int device, int prefill_sms, int decode_sms,
                drift_green_pair* p) {
  static const char* where = "drift_green_pair_create";
  CUdevice dev;
  CU_TRY(where, cuDeviceGet, &dev, device);

  CUcontext current = nullptr;
  CU_TRY(where, cuCtxGetCurrent, &current);
  if (current == nullptr) {
    CUcontext primary = nullptr;
    CU_TRY(where, cuDevicePrimaryCtxRetain, &primary, dev);
    p->flags |= DRIFT_PAIR_RETAINED_PRIMARY;
    CU_TRY(where, cuCtxSetCurrent, primary);
  }

  CUdevResource whole;
  std::memset(&whole, 0, sizeof(whole));
  CU_TRY(where, cuDeviceGetDevResource, dev, &whole, CU_DEV_RESOURCE_TYPE_SM);

  int rc;
  if (decode_sms == 0 || prefill_sms == 0) {
    // One phase on the whole device: one green context, two streams in it.
    CUgreenCtx ctx = nullptr;
    if ((rc = make_green_ctx(drv, dev, &whole, &ctx))) return rc;
    p->prefill_ctx = ctx;
    p->flags |= DRIFT_PAIR_SHARED_CTX;
    if ((rc = new_stream(drv, ctx, &p->prefill_stream))) return rc;
    if ((rc = new_stream(drv, ctx, &p->decode_stream))) return rc;
    if ((rc = realized_sms(drv, ctx, &p->prefill_sms))) return rc;
    p->decode_sms = p->prefill_sms;
    return 0;
  }

  // Split once: a decode group and the rest; prefill takes from the rest.
  CUdevResource decode_group, rest;
  std::memset(&decode_group, 0, sizeof(decode_group));
  std::memset(&rest, 0, sizeof(rest));
  unsigned int groups = 1;
  CU_TRY(where, cuDevSmResourceSplitByCount, &decode_group, &groups, &whole, &rest, 0,
         static_cast<unsigned int>(decode_sms));
  if (groups != 1 || sm_count(rest) == 0) {
    return drift_fail(DRIFT_ERR_PARTITION,
                      "%s: cannot split %d SMs into a decode group of %d SMs and a prefill "
                      "group (split gave %u group(s), %d SMs remaining)",
                      where, sm_count(whole), decode_sms, groups, sm_count(rest));
  }
  CUdevResource prefill_group = rest;
  if (prefill_sms < sm_count(rest)) {
    CUdevResource unused;
    std::memset(&unused, 0, sizeof(unused));
    groups = 1;
    CU_TRY(where, cuDevSmResourceSplitByCount, &prefill_group, &groups, &rest, &unused, 0,
           static_cast<unsigned int>(prefill_sms));
    if (groups != 1) {
      return drift_fail(DRIFT_ERR_PARTITION,
                        "%s: cannot make a prefill group of %d SMs from the %d SMs left "
                        "beside decode",
                        where, prefill_sms, sm_count(rest));
    }
  }

  CUgreenCtx decode_ctx = nullptr, prefill_ctx = nullptr;
  if ((rc = make_green_ctx(drv, dev, &decode_group, &decode_ctx))) return rc;
  p->decode_ctx = decode_ctx;
  if ((rc = make_green_ctx(drv, dev, &prefill_group, &prefill_ctx))) return rc;
  p->prefill_ctx = prefill_ctx;
  if ((rc = new_stream(drv, decode_ctx, &p->decode_stream))) return rc;
  if ((rc = new_stream(drv, prefill_ctx, &p->prefill_stream))) return rc;
  if ((rc = realized_sms(drv, decode_ctx, &p->decode_sms))) return rc;
  if ((rc = realized_sms(drv, prefill_ctx, &p->prefill_sms))) return rc;
  return 0;
}

}  // namespace

extern "C" DRIFT_API int drift_sm_resource(int device, int* total_sms, int* min_partition_sms,
                                           int* alignment) {
  static const char* where = "drift_sm_resource";
  drift_clear_error();
  int code = 0;
  const Driver* d = driver_or_fail(where, &code);
  if (d == nullptr) return code;
  const Driver& drv = *d;
  CUdevice dev;
  CU_TRY(where, cuDeviceGet, &dev, device);
  CUdevResource res;
  std::memset(&res, 0, sizeof(res));
  CU_TRY(where, cuDeviceGetDevResource, dev, &res, CU_DEV_RESOURCE_TYPE_SM);
  if (total_sms) *total_sms = sm_count(res);
#if CUDA_VERSION >= 13000
  if (min_partition_sms) *min_partition_sms = static_cast<int>(res.sm.minSmPartitionSize);
  if (alignment) *alignment = static_cast<int>(res.sm.smCoscheduledAlignment);
#else
  if (min_partition_sms) *min_partition_sms = 0;
  if (alignment) *alignment = 0;
#endif
  return 0;
}

extern "C" DRIFT_API int drift_green_pair_create(int device, int prefill_sms, int decode_sms,
                                                 drift_green_pair* out) {
  static const char* where = "drift_green_pair_create";
  drift_clear_error();
  if (out == nullptr || device < 0 || prefill_sms < 0 || decode_sms < 0) {
    return drift_fail(DRIFT_ERR_INVALID_ARGUMENT,
                      "%s: need an output struct, device >= 0 and SM counts >= 0 (got "
                      "device=%d, prefill_sms=%d, decode_sms=%d)",
                      where, device, prefill_sms, decode_sms);
  }
  std::memset(out, 0, sizeof(*out));
  int code = 0;
  const Driver* drv = driver_or_fail(where, &code);
  if (drv == nullptr) return code;
  out->device = device;
  code = create_pair(*drv, device, prefill_sms, decode_sms, out);
  if (code != 0) destroy_pair(*drv, out, /*report=*/false);  // also zeroes *out
  return code;
}

extern "C" DRIFT_API int drift_green_pair_destroy(drift_green_pair* pair) {
  drift_clear_error();
  if (pair == nullptr) return 0;
  if (pair->prefill_stream == 0 && pair->decode_stream == 0 && pair->prefill_ctx == nullptr &&
      pair->decode_ctx == nullptr && pair->flags == 0) {
    return 0;  // already destroyed (or never created)
  }
  int code = 0;
  const Driver* drv = driver_or_fail("drift_green_pair_destroy", &code);
  if (drv == nullptr) return code;
  return destroy_pair(*drv, pair, /*report=*/true);
}
