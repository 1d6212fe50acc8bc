"""sgl-kernel-ext: build.py, the built library's C API, and its ctypes bindings.

Without a GPU the library is driven against a fake libcuda.so.1 (a few lines of C
below, compiled here) that models an H100's 132 SMs split in groups of 8: this
checks the split logic, realized counts, error messages and cleanup on failure.
The real driver and the SM-id probe are only exercised by the ``gpu`` test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drift_sgl.partition.ext import (
    ENV_VAR,
    ExtSmResource,
    KernelExt,
    KernelExtError,
    library_path,
)
from scripts import load_script

REPO = Path(__file__).resolve().parents[2]
BUILD_PY = REPO / "sgl-kernel-ext" / "build.py"
API_SYMBOLS = {
    "drift_ext_abi_version",
    "drift_last_error",
    "drift_smid_probe",
    "drift_sm_resource",
    "drift_green_pair_create",
    "drift_green_pair_destroy",
}


build_py = load_script(BUILD_PY, "drift_ext_build")


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILD_PY), *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def nvcc() -> Path:
    found = build_py.find_nvcc()
    if found is None:
        pytest.skip(f"no nvcc found ({build_py.NVCC_SEARCH})")
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("nvcc needs a host C++ compiler: install g++")
    return found[0]


@pytest.fixture(scope="module")
def built_lib(nvcc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library built once (default architectures) into a temporary directory."""
    out = tmp_path_factory.mktemp("ext") / "libdrift_sgl_ext.so"
    proc = run_build("--nvcc", str(nvcc), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file()
    return out


# --- build.py ---------------------------------------------------------------


def test_check_compiles_every_source_for_every_supported_default_arch(nvcc):
    proc = run_build("--check", "--nvcc", str(nvcc))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    supported = build_py.supported_archs(nvcc)
    expected = [a for a in build_py.DEFAULT_ARCHS if supported is None or a in supported]
    assert 90 in expected, f"this nvcc cannot compile for sm_90 ({supported})"
    archs_line = next(line for line in proc.stdout.splitlines() if " archs " in line)
    assert archs_line.endswith(", ".join(f"sm_{a}" for a in expected))
    for src in sorted((REPO / "sgl-kernel-ext" / "csrc").glob("*.cu")):
        assert f"{src.name}: ok" in proc.stdout


def test_build_skips_cleanly_without_nvcc(tmp_path):
    # -S: no site-packages, so not the nvidia-cuda-nvcc wheel either (build.py is stdlib only).
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-S", str(BUILD_PY), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sgl-kernel-ext: skipped: no nvcc found (")
    assert len(proc.stdout.splitlines()) == 1


def test_device_link_runs_one_architecture_at_a_time(nvcc, tmp_path):
    # nvcc's device link runs one nvlink per architecture; under --threads they run at
    # once on one shared registration file and now and then fail ("Could not read file
    # ..._dlink.reg.c"). So only the compile steps may use --threads, never the link.
    log = tmp_path / "nvcc.log"
    wrapper = tmp_path / "nvcc"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {nvcc} "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "lib" / "libdrift_sgl_ext.so"
    proc = run_build("--nvcc", str(wrapper), "--arch", "80,90", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file()
    steps = [line.split() for line in log.read_text().splitlines() if " -o " in line]
    compiles = [argv for argv in steps if "-c" in argv and "-shared" not in argv]
    links = [argv for argv in steps if "-shared" in argv]
    sources = sorted((REPO / "sgl-kernel-ext" / "csrc").glob("*.cu"))
    assert sorted(argv[argv.index("-c") + 1] for argv in compiles if "-x" not in argv) == [
        str(src) for src in sources
    ]
    assert len(links) == 1 and "--threads" not in links[0]
    assert not any(arg.endswith(".cu") for arg in links[0])


def test_parse_archs():
    assert build_py.parse_archs("90, sm_80,compute_100,90") == [80, 90, 100]
    with pytest.raises(Exception, match="bad architecture"):
        build_py.parse_archs("9x")


# --- the built library --------------------------------------------------------


def test_built_library_loads_and_exports_the_api(built_lib):
    ext = KernelExt.load(built_lib)
    assert ext is not None and ext.path == built_lib
    nm = shutil.which("nm")
    if nm is not None:
        out = subprocess.run(
            [nm, "-D", "--defined-only", str(built_lib)], capture_output=True, text=True
        ).stdout
        exported = {line.split()[-1] for line in out.splitlines() if " T " in line}
        # Only the C API: the static CUDA runtime's symbols stay private.
        assert exported == API_SYMBOLS
        needed = subprocess.run(
            ["readelf", "-d", str(built_lib)], capture_output=True, text=True
        ).stdout
        assert "libcuda" not in needed and "libcudart" not in needed


def test_argument_errors_carry_the_library_message(built_lib):
    ext = KernelExt.load(built_lib)
    assert ext is not None
    with pytest.raises(KernelExtError, match=r"device >= 0.*device=-1") as info:
        ext.create_pair(-1, 16, 16)
    assert info.value.code == -1
    with pytest.raises(KernelExtError, match="blocks > 0"):
        ext.smid_probe(0, 0)


# --- library_path / load -------------------------------------------------------


def test_library_path_honours_env(monkeypatch, tmp_path):
    target = tmp_path / "custom.so"
    monkeypatch.setenv(ENV_VAR, str(target))
    assert library_path() == target
    # Named but missing: an error, not a silent fallback.
    with pytest.raises(KernelExtError, match="does not exist"):
        KernelExt.load()
    target.write_text("not a shared library")
    with pytest.raises(KernelExtError, match="cannot load"):
        KernelExt.load()


def test_library_path_default(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    default = REPO / "sgl-kernel-ext" / "build" / "libdrift_sgl_ext.so"
    assert library_path() == (default if default.is_file() else None)
    if not default.is_file():
        assert KernelExt.load() is None


# --- against a fake driver -------------------------------------------------------

#: A libcuda.so.1 stand-in with just the calls green_ctx.cu uses: 132 SMs, groups of
#: multiples of 8; SM ranges are kept in the resources' internal padding; fake_* entry
#: points let a test inject failures and count what is still alive.
FAKE_DRIVER_C = r"""
#include <cuda.h>
#include <stdlib.h>
#include <string.h>

#define TOTAL_SMS 132
#define GRANULE 8

typedef struct { int first, count; } Range;
struct CUdevResourceDesc_st { Range range; };
struct CUgreenCtx_st { Range range; int streams; };
struct CUstream_st { struct CUgreenCtx_st* ctx; };
struct CUctx_st { int unused; };

static struct CUctx_st primary;
static CUcontext current;
static int live_ctxs, live_streams, primary_refs, driver_version = CUDA_VERSION;
static char fail_name[64], hidden[64];
static int fail_countdown;

void fake_fail(const char* name, int nth) { strncpy(fail_name, name, 63); fail_countdown = nth; }
void fake_hide(const char* name) { strncpy(hidden, name, 63); }
void fake_set_version(int v) { driver_version = v; }
int fake_live(void) { return live_ctxs * 10000 + live_streams * 100 + primary_refs; }
void fake_stream_range(CUstream s, int* first, int* count) {
  *first = s->ctx->range.first; *count = s->ctx->range.count;
}
static int failing(const char* name) {
  return fail_countdown > 0 && strcmp(name, fail_name) == 0 && --fail_countdown == 0;
}
#define MAYBE_FAIL(name) if (failing(name)) return CUDA_ERROR_OUT_OF_MEMORY

static void put_range(CUdevResource* r, Range g) {
  memset(r, 0, sizeof(*r));
  r->type = CU_DEV_RESOURCE_TYPE_SM;
  r->sm.smCount = (unsigned)g.count;
#if CUDA_VERSION >= 13000
  r->sm.minSmPartitionSize = GRANULE;
  r->sm.smCoscheduledAlignment = GRANULE;
#endif
  memcpy(r->_internal_padding, &g, sizeof(g));
}
static Range get_range(const CUdevResource* r) {
  Range g; memcpy(&g, r->_internal_padding, sizeof(g)); return g;
}

CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) { *v = driver_version; return CUDA_SUCCESS; }
CUresult cuGetErrorName(CUresult e, const char** s) {
  *s = e == CUDA_ERROR_OUT_OF_MEMORY ? "CUDA_ERROR_OUT_OF_MEMORY" : "CUDA_ERROR_FAKE";
  return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0; return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext* c) { *c = current; return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext c) { current = c; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
  (void)d; primary_refs++; *c = &primary; return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease(CUdevice d) {
  (void)d; if (--primary_refs == 0 && current == &primary) current = NULL;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetDevResource(CUdevice d, CUdevResource* r, CUdevResourceType t) {
  (void)d; (void)t; Range all = {0, TOTAL_SMS}; put_range(r, all); return CUDA_SUCCESS;
}
CUresult cuDevSmResourceSplitByCount(CUdevResource* result, unsigned int* nb,
                                     const CUdevResource* input, CUdevResource* remaining,
                                     unsigned int flags, unsigned int min_count) {
  (void)flags;
  MAYBE_FAIL("cuDevSmResourceSplitByCount");
  Range in = get_range(input);
  int n = min_count <= GRANULE ? GRANULE : (int)((min_count + GRANULE - 1) / GRANULE * GRANULE);
  if (*nb != 1) return CUDA_ERROR_INVALID_VALUE;
  if (n > in.count) { *nb = 0; if (remaining) put_range(remaining, in); return CUDA_SUCCESS; }
  Range group = {in.first, n}, rest = {in.first + n, in.count - n};
  put_range(result, group);
  if (remaining) put_range(remaining, rest);
  return CUDA_SUCCESS;
}
CUresult cuDevResourceGenerateDesc(CUdevResourceDesc* desc, CUdevResource* res, unsigned int n) {
  MAYBE_FAIL("cuDevResourceGenerateDesc");
  if (n != 1) return CUDA_ERROR_INVALID_VALUE;
  *desc = calloc(1, sizeof(**desc)); (*desc)->range = get_range(res); return CUDA_SUCCESS;
}
CUresult cuGreenCtxCreate(CUgreenCtx* g, CUdevResourceDesc desc, CUdevice d, unsigned int flags) {
  (void)d;
  MAYBE_FAIL("cuGreenCtxCreate");
  if (!(flags & CU_GREEN_CTX_DEFAULT_STREAM)) return CUDA_ERROR_INVALID_VALUE;
  *g = calloc(1, sizeof(**g)); (*g)->range = desc->range; live_ctxs++; return CUDA_SUCCESS;
}
CUresult cuGreenCtxDestroy(CUgreenCtx g) {
  if (g->streams != 0) return CUDA_ERROR_INVALID_CONTEXT;  /* streams first */
  free(g); live_ctxs--; return CUDA_SUCCESS;
}
CUresult cuGreenCtxGetDevResource(CUgreenCtx g, CUdevResource* r, CUdevResourceType t) {
  (void)t; put_range(r, g->range); return CUDA_SUCCESS;
}
CUresult cuGreenCtxStreamCreate(CUstream* s, CUgreenCtx g, unsigned int flags, int priority) {
  (void)priority;
  MAYBE_FAIL("cuGreenCtxStreamCreate");
  if (flags != CU_STREAM_NON_BLOCKING) return CUDA_ERROR_INVALID_VALUE;
  *s = calloc(1, sizeof(**s)); (*s)->ctx = g; g->streams++; live_streams++;
  return CUDA_SUCCESS;
}
CUresult cuStreamDestroy(CUstream s) {
  s->ctx->streams--; free(s); live_streams--; return CUDA_SUCCESS;
}

#define ENTRY(name) {#name, (void*)name}
static const struct { const char* name; void* fn; } entries[] = {
  ENTRY(cuDeviceGet), ENTRY(cuCtxGetCurrent), ENTRY(cuCtxSetCurrent),
  ENTRY(cuDevicePrimaryCtxRetain), ENTRY(cuDevicePrimaryCtxRelease),
  ENTRY(cuDeviceGetDevResource), ENTRY(cuDevSmResourceSplitByCount),
  ENTRY(cuDevResourceGenerateDesc), ENTRY(cuGreenCtxCreate), ENTRY(cuGreenCtxDestroy),
  ENTRY(cuGreenCtxGetDevResource), ENTRY(cuGreenCtxStreamCreate), ENTRY(cuStreamDestroy),
};
CUresult cuGetProcAddress(const char* symbol, void** pfn, int version, cuuint64_t flags,
                          CUdriverProcAddressQueryResult* status) {
  (void)version; (void)flags;
  for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
    if (strcmp(symbol, entries[i].name) == 0 && strcmp(symbol, hidden) != 0) {
      *pfn = entries[i].fn;
      if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
      return CUDA_SUCCESS;
    }
  }
  *pfn = NULL;
  if (status) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  return CUDA_SUCCESS;
}
"""

#: Run in a subprocess whose LD_LIBRARY_PATH puts the fake driver first; ``fake`` is the
#: fake driver (ctypes), ``ext`` the library, ``out`` what is printed back as JSON.
FAKE_PRELUDE = """
import ctypes, json, sys
from pathlib import Path
from drift_sgl.partition.ext import KernelExt, KernelExtError
fake = ctypes.CDLL("libcuda.so.1")
ext = KernelExt.load(Path(sys.argv[1]))
out = {}
def error(fn, *args):
    try:
        fn(*args)
    except KernelExtError as err:
        return [str(err), err.code]
    return None
def live():
    return fake.fake_live()
def stream_range(stream):
    first, count = ctypes.c_int(), ctypes.c_int()
    fake.fake_stream_range(ctypes.c_void_p(stream), ctypes.byref(first), ctypes.byref(count))
    return [first.value, count.value]
"""


@pytest.fixture(scope="module")
def fake_driver_dir(nvcc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the fake driver")
    include, _ = build_py.find_include(nvcc)
    if include is None:
        pytest.skip("no cuda.h for the fake driver")
    out_dir = tmp_path_factory.mktemp("fake-driver")
    src = out_dir / "fake_cuda.c"
    src.write_text(FAKE_DRIVER_C)
    cmd = [cc, "-shared", "-fPIC", "-O1", f"-I{include}", "-Wl,-soname,libcuda.so.1"]
    proc = subprocess.run(
        [*cmd, str(src), "-o", str(out_dir / "libcuda.so.1")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return out_dir


def run_against(lib: Path, lib_dir: Path, body: str) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p
    )
    script = FAKE_PRELUDE + body + "\nprint(json.dumps(out))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(lib)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_pairs_on_the_fake_driver(built_lib, fake_driver_dir):
    out = run_against(
        built_lib,
        fake_driver_dir,
        """
res = ext.sm_resource(0)
out["resource"] = [res.total_sms, res.min_partition_sms, res.alignment]
pair = ext.create_pair(0, 116, 16)
out["split"] = [pair.prefill_sms, pair.decode_sms, pair.shared_context]
out["ranges"] = [stream_range(pair.prefill_stream), stream_range(pair.decode_stream)]
out["live_open"] = live()
pair.close()
pair.close()
out["live_closed"] = live()
with ext.create_pair(0, 40, 20) as rounded:
    out["rounded"] = [rounded.prefill_sms, rounded.decode_sms]
    out["rounded_ranges"] = [stream_range(rounded.prefill_stream),
                             stream_range(rounded.decode_stream)]
with ext.create_pair(0, 0, 16) as whole:
    out["whole"] = [whole.prefill_sms, whole.decode_sms, whole.shared_context,
                    whole.prefill_stream != whole.decode_stream]
    out["whole_live"] = live()
out["too_big"] = error(ext.create_pair, 0, 16, 132)
out["bad_device"] = error(ext.create_pair, 1, 16, 16)
out["live_end"] = live()
""",
    )
    if out["resource"][1]:  # built with CUDA >= 13 headers: the granularity is read
        assert out["resource"] == [132, 8, 8]
    else:
        assert out["resource"] == [132, 0, 0]
    # decode 16, prefill the remaining 116; disjoint SM ranges
    assert out["split"] == [116, 16, False]
    assert out["ranges"] == [[16, 116], [0, 16]]
    # 2 green contexts, 2 streams, the primary context retained (none was current)
    assert out["live_open"] == 2 * 10000 + 2 * 100 + 1
    assert out["live_closed"] == 0
    # decode 20 -> 24 SMs (groups of 8); prefill 40 of the 108 left, after decode's
    assert out["rounded"] == [40, 24]
    assert out["rounded_ranges"] == [[24, 40], [0, 24]]
    # one phase on the whole device: one context, two streams
    assert out["whole"] == [132, 132, True, True]
    assert out["whole_live"] == 1 * 10000 + 2 * 100 + 1
    message, code = out["too_big"]
    assert code == -3 and "decode group of 132 SMs" in message
    message, code = out["bad_device"]
    assert "cuDeviceGet failed: CUDA_ERROR_FAKE" in message and code > 0
    assert out["live_end"] == 0


@pytest.mark.parametrize(
    ("call", "nth"),
    [
        ("cuDevSmResourceSplitByCount", 2),
        ("cuGreenCtxCreate", 2),
        ("cuGreenCtxStreamCreate", 2),
        ("cuGreenCtxStreamCreate", 1),
    ],
)
def test_failed_create_names_the_call_and_cleans_up(built_lib, fake_driver_dir, call, nth):
    out = run_against(
        built_lib,
        fake_driver_dir,
        f"""
fake.fake_fail({call.encode()!r}, {nth})
out["error"] = error(ext.create_pair, 0, 64, 16)
out["live"] = live()
with ext.create_pair(0, 64, 16) as pair:  # the next attempt works
    out["after"] = [pair.prefill_sms, pair.decode_sms]
""",
    )
    message, code = out["error"]
    assert message.startswith(f"drift_green_pair_create: {call} failed: CUDA_ERROR_OUT_OF_MEMORY")
    assert code == 2  # CUDA_ERROR_OUT_OF_MEMORY
    assert out["live"] == 0
    assert out["after"] == [64, 16]


def test_old_or_incomplete_driver_is_reported(built_lib, fake_driver_dir):
    hidden = run_against(
        built_lib,
        fake_driver_dir,
        """
fake.fake_hide(b"cuGreenCtxStreamCreate")
out["error"] = error(ext.create_pair, 0, 64, 16)
""",
    )
    message, code = hidden["error"]
    assert code == -2 and "cuGetProcAddress(cuGreenCtxStreamCreate)" in message
    old = run_against(
        built_lib,
        fake_driver_dir,
        """
fake.fake_set_version(12040)
out["error"] = error(ext.sm_resource, 0)
""",
    )
    message, code = old["error"]
    assert code == -2 and "CUDA 12.4" in message and "need 12.5" in message


def test_cpu_stand_in_driver_gives_clear_errors(built_lib):
    """With the project's no-device libcuda.so.1 (CPU machines), calls fail cleanly."""
    from drift_sgl.cpu.stub import StubBuildError, build_stub, has_nvidia_driver

    if has_nvidia_driver():
        pytest.skip("a real NVIDIA driver is installed")
    try:
        stub = build_stub()
    except StubBuildError as err:
        pytest.skip(str(err))
    out = run_against(
        built_lib,
        stub.parent,
        """
out["resource"] = error(ext.sm_resource, 0)
out["pair"] = error(ext.create_pair, 0, 64, 16)
out["probe"] = error(ext.smid_probe, 0, 4)
""",
    )
    for key in ("resource", "pair"):
        message, code = out[key]
        assert "cuInit failed: CUDA_ERROR_NO_DEVICE" in message and code == 100
    message, code = out["probe"]
    assert message.startswith("drift_smid_probe: cudaMalloc failed") and code > 0


# --- on a GPU ---------------------------------------------------------------------


@pytest.mark.gpu
def test_green_pair_confines_each_stream_to_disjoint_sms(built_lib):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch.cuda.is_available() is False")
    device = torch.cuda.current_device()
    if torch.cuda.get_device_capability(device) < (8, 0):
        pytest.skip("the default build targets sm_80 and newer")
    torch.zeros(1, device="cuda")  # the primary context is current, as in a server
    total = torch.cuda.get_device_properties(device).multi_processor_count
    ext = KernelExt.load(built_lib)
    assert ext is not None
    resource = ext.sm_resource(device)
    assert isinstance(resource, ExtSmResource) and resource.total_sms == total

    with ext.create_pair(device, total - 16, 16) as pair:
        assert not pair.shared_context
        assert pair.decode_sms >= 16
        assert pair.decode_sms + pair.prefill_sms <= total
        decode = ext.smid_probe(pair.decode_stream, 8 * total)
        prefill = ext.smid_probe(pair.prefill_stream, 8 * total)
        assert 0xFFFFFFFF not in decode and 0xFFFFFFFF not in prefill
        assert set(decode).isdisjoint(prefill)
        assert len(set(decode)) == pair.decode_sms
        assert len(set(prefill)) == pair.prefill_sms
    assert pair.closed
