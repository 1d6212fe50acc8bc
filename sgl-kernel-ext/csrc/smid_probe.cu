/* SM-id probe: which SMs do a stream's kernels really run on?
 *
 * Each block spins for a while (so the block scheduler has to spread the
 * blocks over every SM the stream may use instead of reusing a few freed
 * ones), then records the SM it ran on. On a green-context stream the set of
 * recorded SMs shows the partition the driver really enforces.
 */
#include <cuda_runtime.h>

#include "internal.h"

namespace {

constexpr int kThreadsPerBlock = 32;

__device__ __forceinline__ unsigned int sm_id() {
  unsigned int id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

__device__ __forceinline__ unsigned long long global_time_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void smid_probe_kernel(unsigned int* out, unsigned long long spin_ns) {
  const unsigned long long start = global_time_ns();
  while (global_time_ns() - start < spin_ns) {
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sm_id();
}

int runtime_fail(cudaError_t err, const char* call) {
  return drift_fail(static_cast<int>(err), "drift_smid_probe: %s failed: %s (%s)", call,
                    cudaGetErrorName(err), cudaGetErrorString(err));
}

}  // namespace

extern "C" DRIFT_API int drift_smid_probe(uintptr_t stream, int blocks, int spin_ns,
                                          unsigned int* host_out) {
  drift_clear_error();
  if (blocks <= 0 || spin_ns < 0 || host_out == nullptr) {
    return drift_fail(DRIFT_ERR_INVALID_ARGUMENT,
                      "drift_smid_probe: need blocks > 0, spin_ns >= 0 and an output buffer "
                      "(got blocks=%d, spin_ns=%d, host_out=%p)",
                      blocks, spin_ns, static_cast<void*>(host_out));
  }
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const size_t bytes = static_cast<size_t>(blocks) * sizeof(unsigned int);
  unsigned int* dev_out = nullptr;

  cudaError_t err = cudaMalloc(&dev_out, bytes);
  if (err != cudaSuccess) return runtime_fail(err, "cudaMalloc");

  const char* failed = nullptr;
  // 0xFFFFFFFF marks a block that never wrote its SM id.
  err = cudaMemsetAsync(dev_out, 0xFF, bytes, s);
  if (err != cudaSuccess) {
    failed = "cudaMemsetAsync";
  } else {
    smid_probe_kernel<<<blocks, kThreadsPerBlock, 0, s>>>(
        dev_out, static_cast<unsigned long long>(spin_ns));
    err = cudaGetLastError();
    if (err != cudaSuccess) failed = "kernel launch";
  }
  if (failed == nullptr) {
    err = cudaMemcpyAsync(host_out, dev_out, bytes, cudaMemcpyDeviceToHost, s);
    if (err != cudaSuccess) failed = "cudaMemcpyAsync";
  }
  if (failed == nullptr) {
    err = cudaStreamSynchronize(s);
    if (err != cudaSuccess) failed = "cudaStreamSynchronize";
  }
  const cudaError_t free_err = cudaFree(dev_out);
  if (failed != nullptr) return runtime_fail(err, failed);
  if (free_err != cudaSuccess) return runtime_fail(free_err, "cudaFree");
  return 0;
}
