/* A no-device stand-in for the NVIDIA driver library (libcuda.so.1).
 *
 * sglang imports sgl_kernel at module level, and the PyPI build of sgl_kernel
 * links against libcuda.so.1 even when it will never touch a GPU. On a machine
 * without an NVIDIA driver this library satisfies that link: every entry point
 * reports CUDA_ERROR_NO_DEVICE (100), so torch.cuda.is_available() stays False.
 * drift_sgl only puts it on the library path when no real driver is present.
 */
#include <stddef.h>

typedef int CUresult;
#define CUDA_ERROR_NO_DEVICE 100

static const char kNoDevice[] = "no CUDA-capable device (drift-sgl CPU stand-in for libcuda.so.1)";
static const char kNoDeviceName[] = "CUDA_ERROR_NO_DEVICE";

CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_ERROR_NO_DEVICE; }

CUresult cuDriverGetVersion(int *version) {
  if (version) *version = 0;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuDeviceGetCount(int *count) {
  if (count) *count = 0;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {
  (void)symbol; (void)version; (void)flags;
  if (pfn) *pfn = NULL;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags,
                             void *status) {
  (void)symbol; (void)version; (void)flags; (void)status;
  if (pfn) *pfn = NULL;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuPointerGetAttribute(void *data, int attribute, unsigned long long ptr) {
  (void)data; (void)attribute; (void)ptr;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuGetErrorString(CUresult error, const char **str) {
  (void)error;
  if (str) *str = kNoDevice;
  return 0;
}

CUresult cuGetErrorName(CUresult error, const char **str) {
  (void)error;
  if (str) *str = kNoDeviceName;
  return 0;
}
