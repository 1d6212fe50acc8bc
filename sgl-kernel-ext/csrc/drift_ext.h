/* drift-sgl kernel extension: the C API of libdrift_sgl_ext.so.
 *
 * A plain C ABI (no torch headers), loaded from Python with ctypes
 * (python/drift_sgl/partition/ext.py). It provides what neither torch nor
 * sglang-kernel provides:
 *
 *   - drift_smid_probe: which SMs a stream's kernels really run on;
 *   - drift_sm_resource: the device's SM resource and its split granularity;
 *   - drift_green_pair_create/destroy: two green contexts on disjoint SM
 *     groups (decode, prefill), one stream in each, with the SM counts the
 *     driver really granted.
 *
 * Conventions
 *   - Every int-returning call returns 0 on success and a nonzero code on
 *     failure; drift_last_error() then describes it (the failing call and the
 *     CUresult / cudaError_t name).
 *   - Positive codes are the CUresult (driver calls) or cudaError_t (runtime
 *     calls of the probe) that failed; negative codes are DRIFT_ERR_*.
 *   - Streams are passed as uintptr_t holding a CUstream / cudaStream_t (the
 *     two are the same handle), e.g. torch.cuda.Stream.cuda_stream.
 *   - The driver API is resolved at run time (dlopen of libcuda.so.1 and
 *     cuGetProcAddress), so the library loads on machines without a driver;
 *     calls then fail with a message.
 *
 * Requires CUDA >= 12.5 headers to build (cuGreenCtxStreamCreate) and a driver
 * that supports green contexts (>= 12.5) to run the green-context calls.
 */
#ifndef DRIFT_SGL_EXT_H_
#define DRIFT_SGL_EXT_H_

#include <stdint.h>

#if defined(__GNUC__)
#define DRIFT_API __attribute__((visibility("default")))
#else
#define DRIFT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature or drift_green_pair's layout changes; the Python
 * loader refuses a library whose version it does not know. */
#define DRIFT_EXT_ABI_VERSION 1

/* Negative error codes (positive ones are CUresult / cudaError_t values). */
#define DRIFT_ERR_INVALID_ARGUMENT (-1) /* a bad argument (message says which) */
#define DRIFT_ERR_DRIVER_UNAVAILABLE (-2) /* libcuda.so.1 or a driver entry point missing */
#define DRIFT_ERR_PARTITION (-3)         /* the SMs cannot be split as requested */

/* Two streams for the prefill and decode phases, each in a green context.
 *
 * Filled by drift_green_pair_create. The public fields are the first four;
 * the rest are opaque handles for drift_green_pair_destroy. */
typedef struct drift_green_pair {
  uintptr_t prefill_stream; /* CUstream, non-blocking, in the prefill green context */
  uintptr_t decode_stream;  /* CUstream, non-blocking, in the decode green context */
  int prefill_sms;          /* SMs the driver granted to the prefill context */
  int decode_sms;           /* SMs the driver granted to the decode context */
  /* Opaque: do not touch. */
  int device;
  int flags;         /* DRIFT_PAIR_* below */
  void* prefill_ctx; /* CUgreenCtx */
  void* decode_ctx;  /* CUgreenCtx; NULL when both streams share prefill_ctx */
} drift_green_pair;

#define DRIFT_PAIR_SHARED_CTX 0x1        /* one green context on the whole device, two streams */
#define DRIFT_PAIR_RETAINED_PRIMARY 0x2  /* create retained the primary context: release it */

/* DRIFT_EXT_ABI_VERSION of the built library. */
DRIFT_API int drift_ext_abi_version(void);

/* Message of this thread's last failed call ("" if none). The buffer is
 * thread-local and stays valid until this thread's next failing call. */
DRIFT_API const char* drift_last_error(void);

/* SM-id probe.
 *
 * Launches `blocks` blocks on `stream`; each block spins for `spin_ns`
 * nanoseconds (%globaltimer), so that blocks spread over every SM the stream
 * may use, then writes its %smid to host_out[blockIdx.x]. Allocates device
 * memory (on the calling thread's current device, which must be the stream's
 * device: torch sets it), copies the result back, synchronizes `stream` and
 * frees. host_out must hold `blocks` entries. */
DRIFT_API int drift_smid_probe(uintptr_t stream, int blocks, int spin_ns, unsigned int* host_out);

/* The device's SM resource (cuDeviceGetDevResource).
 *
 * total_sms: SMs of the device. min_partition_sms / alignment: the smallest
 * SM group a split can make and the multiple group sizes are rounded to, as
 * CUDA >= 13 reports them (CUdevSmResource.minSmPartitionSize /
 * smCoscheduledAlignment); 0 when the headers the library was built with do
 * not have them (the caller falls back to a compute-capability table).
 * Any output pointer may be NULL. */
DRIFT_API int drift_sm_resource(int device, int* total_sms, int* min_partition_sms, int* alignment);

/* Create two green contexts on disjoint SM groups of `device`, one stream each.
 *
 * The device's SMs are split once into a decode group of at least
 * decode_sms SMs (rounded up to the split granularity) and the remaining
 * SMs; prefill gets a group of prefill_sms split from the remaining ones when
 * prefill_sms is smaller than what remains, else all of them. The groups are
 * disjoint by construction; out->prefill_sms / decode_sms are the counts the
 * driver realized (read back from each green context).
 *
 * decode_sms == 0 or prefill_sms == 0: one phase uses the whole device. One
 * green context is made from all SMs and both streams are created in it; both
 * realized counts are then the device's SM count.
 *
 * If no context is current on the calling thread, the device's primary
 * context is retained and made current (torch normally has done this already).
 * On failure everything created is released and *out is zeroed. */
DRIFT_API int drift_green_pair_create(int device, int prefill_sms, int decode_sms,
                                      drift_green_pair* out);

/* Destroy the streams and green contexts of a pair (and release the primary
 * context if create retained it). Idempotent: a zeroed pair is a no-op, and
 * *pair is zeroed on return. Work still queued on the streams must be
 * finished (synchronize first). */
DRIFT_API int drift_green_pair_destroy(drift_green_pair* pair);

#ifdef __cplusplus
}
#endif

#endif /* DRIFT_SGL_EXT_H_ */
