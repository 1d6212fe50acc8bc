"""The libcuda.so.1 stand-in and the CPU environment SGLang needs."""

import ctypes
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drift_sgl.cpu import stub
from drift_sgl.cpu.environment import (
    model_path_is_local,
    prepare_cpu_environment,
    quiet_cpu_import_noise,
    requested_device,
    server_process_env,
)
from drift_sgl.cpu.stub import StubBuildError, build_stub, has_nvidia_driver

CUDA_ERROR_NO_DEVICE = 100


@pytest.fixture(scope="module")
def stub_lib(tmp_path_factory):
    return build_stub(tmp_path_factory.mktemp("stub"))


def test_build_stub_produces_the_soname(stub_lib):
    assert stub_lib.name == "libcuda.so.1"
    assert stub_lib.is_file() and stub_lib.stat().st_size > 0
    assert not list(stub_lib.parent.glob("*.so"))  # no temporary left behind


def test_stub_reports_no_device(stub_lib):
    lib = ctypes.CDLL(str(stub_lib))
    assert lib.cuInit(0) == CUDA_ERROR_NO_DEVICE

    count = ctypes.c_int(-1)
    assert lib.cuDeviceGetCount(ctypes.byref(count)) == CUDA_ERROR_NO_DEVICE
    assert count.value == 0

    version = ctypes.c_int(-1)
    assert lib.cuDriverGetVersion(ctypes.byref(version)) == CUDA_ERROR_NO_DEVICE
    assert version.value == 0

    message = ctypes.c_char_p()
    assert lib.cuGetErrorString(CUDA_ERROR_NO_DEVICE, ctypes.byref(message)) == 0
    assert message.value

    name = ctypes.c_char_p()
    assert lib.cuGetErrorName(CUDA_ERROR_NO_DEVICE, ctypes.byref(name)) == 0
    assert name.value == b"CUDA_ERROR_NO_DEVICE"


def test_second_build_reuses_the_library(stub_lib):
    before = stub_lib.stat().st_mtime_ns
    assert build_stub(stub_lib.parent, compiler="/nonexistent-cc") == stub_lib
    assert stub_lib.stat().st_mtime_ns == before


def test_failing_compiler_raises_stub_build_error(tmp_path):
    with pytest.raises(StubBuildError):
        build_stub(tmp_path / "fresh", compiler="false")
    assert not (tmp_path / "fresh" / "libcuda.so.1").exists()
    assert not list((tmp_path / "fresh").glob("*.so"))


def test_missing_compiler_raises_stub_build_error(tmp_path):
    with pytest.raises(StubBuildError, match="cannot run C compiler"):
        build_stub(tmp_path / "fresh", compiler="/nonexistent-cc")
    assert not list((tmp_path / "fresh").glob("*.so"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model-path", "m", "--device", "cpu"], "cpu"),
        (["--device=cuda", "--tp", "2"], "cuda"),
        (["--model-path", "m"], None),
        (["--device"], None),
        ([], None),
    ],
)
def test_requested_device(argv, expected):
    assert requested_device(argv) == expected


def test_model_path_is_local(tmp_path):
    assert model_path_is_local(["--model-path", str(tmp_path)])
    assert model_path_is_local([f"--model-path={tmp_path}", "--port", "1"])
    assert not model_path_is_local(["--model-path", str(tmp_path / "missing")])
    assert not model_path_is_local(["--model-path", "meta-llama/Llama-3.1-8B"])
    assert not model_path_is_local(["--port", "1"])


@pytest.fixture
def stub_dir(tmp_path, monkeypatch):
    path = tmp_path / "stub-dir"
    monkeypatch.setenv("DRIFT_SGL_STUB_DIR", str(path))
    return path


def test_prepare_sets_sglang_cpu_variables(stub_dir):
    env = {"DRIFT_SGL_STUB_DIR": str(stub_dir), "LD_LIBRARY_PATH": "/opt/a:/opt/b"}
    result = prepare_cpu_environment(env, offline=True, preload=False)
    assert env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert env["SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND"] == "python"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert result.variables["SGLANG_USE_CPU_ENGINE"] == "1"
    assert "SGLANG_USE_CPU_ENGINE=1" in result.describe()
    if has_nvidia_driver():
        pytest.skip("a real NVIDIA driver is present: no stand-in")
    assert result.stub_path == stub_dir / "libcuda.so.1"
    assert result.stub_path.is_file()
    assert env["LD_LIBRARY_PATH"] == os.pathsep.join([str(stub_dir), "/opt/a", "/opt/b"])


def test_server_process_env_is_a_prepared_copy_with_extras(stub_dir, monkeypatch):
    monkeypatch.delenv("SGLANG_USE_CPU_ENGINE", raising=False)
    env = server_process_env({"SOME_FLAG": 1})
    assert env["SOME_FLAG"] == "1"
    assert "SOME_FLAG" not in os.environ and "SGLANG_USE_CPU_ENGINE" not in os.environ
    if has_nvidia_driver():
        pytest.skip("a real NVIDIA driver is present: the environment is left as it is")
    assert env["SGLANG_USE_CPU_ENGINE"] == "1" and env["HF_HUB_OFFLINE"] == "1"


def test_prepare_keeps_user_values(stub_dir):
    env = {
        "DRIFT_SGL_STUB_DIR": str(stub_dir),
        "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "rust",
        "HF_HUB_OFFLINE": "0",
    }
    result = prepare_cpu_environment(env, offline=True, preload=False)
    assert env["SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND"] == "rust"
    assert env["HF_HUB_OFFLINE"] == "0"
    assert result.variables["SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND"] == "rust"


def test_prepare_twice_prepends_stub_dir_once(stub_dir):
    if has_nvidia_driver():
        pytest.skip("a real NVIDIA driver is present: no stand-in")
    env = {"DRIFT_SGL_STUB_DIR": str(stub_dir)}
    prepare_cpu_environment(env, offline=True, preload=False)
    prepare_cpu_environment(env, offline=True, preload=False)
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(stub_dir)]


def test_prepare_online_leaves_hub_access(stub_dir):
    env = {"DRIFT_SGL_STUB_DIR": str(stub_dir)}
    prepare_cpu_environment(env, offline=False, preload=False)
    assert "HF_HUB_OFFLINE" not in env
    assert "TRANSFORMERS_OFFLINE" not in env
    assert env["SGLANG_USE_CPU_ENGINE"] == "1"


def test_no_nvidia_driver_on_this_machine():
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    assert has_nvidia_driver() is False


def test_default_stub_dir_honours_override(stub_dir):
    assert stub.default_stub_dir() == stub_dir
    assert stub.stub_path() == stub_dir / "libcuda.so.1"


def test_stub_lets_sgl_kernel_and_torch_import(stub_dir):
    if has_nvidia_driver():
        pytest.skip("a real NVIDIA driver is present: no stand-in")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    prepare_cpu_environment(env, offline=True, preload=False)
    assert env["LD_LIBRARY_PATH"] == str(stub_dir)
    proc = subprocess.run(
        [sys.executable, "-c", "import sgl_kernel, torch; print(torch.cuda.is_available())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_default_stub_dir_reads_the_given_environment(tmp_path):
    assert stub.default_stub_dir({"DRIFT_SGL_STUB_DIR": str(tmp_path)}) == tmp_path


def test_omp_threads_bind_gives_each_rank_its_cores():
    from drift_sgl.cpu.environment import omp_threads_bind

    assert omp_threads_bind(2, [0, 1]) == "0|1"
    assert omp_threads_bind(2, [3, 2, 1, 0]) == "0-1|2-3"
    assert omp_threads_bind(3, [0, 1, 2, 3, 4, 5, 6]) == "0-1|2-3|4-5"
    assert omp_threads_bind(2, [0, 2, 4, 6]) == "0,2|4,6"
    assert omp_threads_bind(1, [0, 1]) is None
    assert omp_threads_bind(4, [0, 1]) is None


def test_prepare_quiets_sglangs_cpu_import_warnings_unless_the_user_set_their_own(stub_dir):
    env = {"DRIFT_SGL_STUB_DIR": str(stub_dir)}
    prepare_cpu_environment(env, offline=False, preload=False)
    assert "ignore:Only CUDA:UserWarning" in env["PYTHONWARNINGS"].split(",")
    mine = {"DRIFT_SGL_STUB_DIR": str(stub_dir), "PYTHONWARNINGS": "error"}
    prepare_cpu_environment(mine, offline=False, preload=False)
    assert mine["PYTHONWARNINGS"] == "error"


def test_the_registry_loses_only_its_cpu_kernel_import_noise(caplog):
    quiet_cpu_import_noise()
    quiet_cpu_import_noise()  # idempotent
    registry = logging.getLogger("sglang.srt.models.registry")
    with caplog.at_level(logging.WARNING, logger="sglang.srt.models.registry"):
        registry.warning(
            "Ignore import error when loading sglang.srt.models.qwen4_exp: "
            "'_OpNamespace' 'sgl_kernel' object has no attribute 'fused_sigmoid_mul_cpu'"
        )
        registry.warning(
            "Ignore import error when loading sglang.srt.models.mamba: cannot import name "
            "'causal_conv1d_fn' from 'sglang.srt.layers.attention.mamba.mamba' (...)"
        )
        registry.warning("Ignore import error when loading sglang.srt.models.x: No module named y")
    kept = [record.getMessage() for record in caplog.records]
    assert len(kept) == 1 and kept[0].endswith("No module named y"), kept
