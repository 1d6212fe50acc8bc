"""drift's flags, their split from SGLang's, and the check of SGLang's ServerArgs."""

import os
import subprocess
import sys

import pytest
from sglang.srt.server_args import prepare_server_args

from drift_sgl import server_args_check
from drift_sgl.config import DriftConfig, DriftConfigError
from drift_sgl.cpu.environment import SGLANG_CPU_ARGS
from drift_sgl.launch_server import split_argv
from drift_sgl.server_args_check import (
    CPU_MEM_FRACTION_STATIC,
    check_and_complete,
    requested_chunk_tokens,
)
from model_dirs import fake_model_dir

# --- DriftConfig ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        (dict(layer_budget_tokens=0), "--drift-layer-budget-tokens"),
        (dict(layer_budget_tokens=-1), "--drift-layer-budget-tokens"),
        (dict(partition="green"), "--drift-partition"),
        (dict(splits="100"), "--drift-splits"),
        (dict(splits="100:0"), "--drift-splits"),
        (dict(max_graph_memory_gb=0.0), "--drift-max-graph-memory-gb"),
        (dict(stall_timeout_s=0.0), "--drift-stall-timeout-s"),
        (dict(stall_timeout_s=float("nan")), "--drift-stall-timeout-s"),
        (dict(max_graph_memory_gb=float("nan")), "--drift-max-graph-memory-gb"),
    ],
)
def test_config_error_starts_with_flag(kwargs, flag):
    with pytest.raises(DriftConfigError) as info:
        DriftConfig(**kwargs)
    assert str(info.value).startswith(flag + ": ")
    assert info.value.flag == flag
    assert isinstance(info.value, ValueError)


def test_config_defaults_are_valid():
    config = DriftConfig()
    assert config.partition == "auto"
    assert config.layer_budget_tokens >= 1


# --- split_argv ----------------------------------------------------------------


def test_split_argv_separates_both_flag_forms():
    argv = [
        "--model-path", "/m",
        "--drift-layer-budget-tokens", "64",
        "--tp", "2",
        "--drift-partition=time-mux",
        "--disable-radix-cache",
    ]  # fmt: skip
    config, rest = split_argv(argv)
    assert config == DriftConfig(partition="time-mux", layer_budget_tokens=64)
    assert rest == ["--model-path", "/m", "--tp", "2", "--disable-radix-cache"]


def test_split_argv_reads_partition_flags():
    argv = ["--drift-partition", "green-ctx", "--drift-splits", "116:16,68:64"]
    config, _ = split_argv([*argv, "--drift-max-graph-memory-gb", "6.5"])
    assert config.partition == "green-ctx"
    assert config.splits == "116:16,68:64"
    assert config.max_graph_memory_gb == 6.5


def test_split_argv_without_drift_flags_gives_defaults():
    argv = ["--model-path", "/m", "--port=30001"]
    config, rest = split_argv(argv)
    assert config == DriftConfig()
    assert rest == argv


@pytest.mark.parametrize(
    "argv", [["--drift-foo", "1"], ["--model-path", "/m", "--drift-foo=1"], ["--drift-foo"]]
)
def test_split_argv_rejects_unknown_drift_flag(argv):
    with pytest.raises(DriftConfigError) as info:
        split_argv(argv)
    assert info.value.flag == "--drift-foo"
    assert str(info.value).startswith("--drift-foo: ")


def test_split_argv_validates_values():
    with pytest.raises(DriftConfigError, match=r"^--drift-layer-budget-tokens: "):
        split_argv(["--drift-layer-budget-tokens=0"])


# --- check_and_complete with SGLang's real parser ------------------------------


def server_args(*extra):
    return prepare_server_args(["--model-path", "x", *extra])


def test_defaults_are_completed_with_notes():
    sa = server_args()
    assert sa.chunked_prefill_size is None and sa.disable_overlap_schedule is False
    notes = check_and_complete(sa, "cuda")
    assert sa.chunked_prefill_size == -1
    assert sa.disable_overlap_schedule is True
    assert any("--max-prefill-tokens" in n for n in notes)  # drift chunks at that size
    assert any("--disable-overlap-schedule" in n for n in notes)
    assert sa.device is None  # CUDA: nothing CPU-specific filled in


@pytest.mark.parametrize(("device", "partition"), [("cuda", "auto"), ("cuda", "green-ctx")])
def test_gpu_partitions_turn_on_sglang_per_split_graphs(device, partition):
    sa = server_args()
    notes = check_and_complete(sa, device, partition)
    assert sa.enable_pdmux is True
    assert any("per-split decode CUDA graphs" in n for n in notes)


@pytest.mark.parametrize(("device", "partition"), [("cuda", "time-mux"), ("cpu", "auto")])
def test_no_per_split_graphs_without_partitions(device, partition):
    sa = server_args()
    check_and_complete(sa, device, partition)
    assert sa.enable_pdmux is False


def test_users_enable_pdmux_is_still_refused_on_gpu():
    with pytest.raises(DriftConfigError, match=r"^--enable-pdmux: "):
        check_and_complete(server_args("--enable-pdmux"), "cuda", "auto")


def test_explicit_compatible_values_need_no_other_notes():
    sa = server_args("--chunked-prefill-size", "-1", "--disable-overlap-schedule")
    notes = check_and_complete(sa, "cuda")
    assert len(notes) == 1 and "--max-prefill-tokens" in notes[0]
    assert sa.chunked_prefill_size == -1


@pytest.mark.parametrize("partition", ["time-mux", "auto"])
def test_chunked_prefill_moves_to_drift(partition):
    sa = server_args("--chunked-prefill-size", "512")
    assert requested_chunk_tokens(sa) == 512
    notes = check_and_complete(sa, "cuda", partition)
    # SGLang's layer-split machinery needs -1; drift's scheduler chunks at 512.
    assert sa.chunked_prefill_size == -1
    assert any(n.startswith("--chunked-prefill-size 512") for n in notes)


@pytest.mark.parametrize("value", [None, "-1", "0"])
def test_no_requested_chunk(value):
    sa = server_args(*(["--chunked-prefill-size", value] if value else []))
    assert requested_chunk_tokens(sa) is None


def test_models_sglang_serves_keep_sglang_settings():
    sa = server_args("--chunked-prefill-size", "512", "--enable-mixed-chunk")
    notes = check_and_complete(sa, "cpu", multiplexed=False)
    assert sa.chunked_prefill_size == 512 and sa.disable_overlap_schedule is False
    assert sa.enable_pdmux is False and sa.device == "cpu"
    assert not any("chunk" in n for n in notes)


def test_prefill_chunk_tokens_is_no_flag():
    with pytest.raises(DriftConfigError, match="unknown drift flag"):
        split_argv(["--drift-prefill-chunk-tokens", "5"])
    with pytest.raises(DriftConfigError, match=r"^--chunked-prefill-size: "):
        DriftConfig(prefill_chunk_tokens=0)


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--enable-pdmux"], "--enable-pdmux"),
        (["--pp-size", "2"], "--pp-size"),
        (["--enable-mixed-chunk"], "--enable-mixed-chunk"),
        (["--enable-dp-attention"], "--enable-dp-attention"),
        (["--disaggregation-mode", "prefill"], "--disaggregation-mode"),
        (["--disaggregation-mode", "decode"], "--disaggregation-mode"),
        (["--speculative-algorithm", "EAGLE"], "--speculative-algorithm"),
        (["--enable-pd-role-switch"], "--enable-pd-role-switch"),
        (["--enable-hisparse"], "--enable-hisparse"),
        (["--tokenizer-worker-num", "2"], "--tokenizer-worker-num"),
        (["--enable-lora"], "--enable-lora"),
        (["--lora-paths", "a=/tmp/lora"], "--lora-paths"),
        (["--enable-return-routed-experts"], "--enable-return-routed-experts"),
        (["--enable-return-indexer-topk"], "--enable-return-indexer-topk"),
    ],
)
def test_incompatible_flag_is_rejected(extra, flag):
    with pytest.raises(DriftConfigError) as info:
        check_and_complete(server_args(*extra), "cpu")
    assert info.value.flag == flag
    assert str(info.value).startswith(flag + ": ")


def test_every_incompatible_rule_names_a_real_sglang_field():
    sa = server_args()
    for rule in server_args_check._INCOMPATIBLE:
        assert hasattr(sa, rule.field), rule.field
        assert not rule.is_set(getattr(sa, rule.field)), rule.flag  # off by default


def test_attn_dp_size_is_rejected_like_enable_dp_attention():
    sa = server_args("--attn-dp-size", "2", "--tp", "2")
    with pytest.raises(DriftConfigError, match=r"^--attn-dp-size"):
        check_and_complete(sa, "cuda")


def test_cpu_fills_device_settings():
    sa = server_args()
    notes = check_and_complete(sa, "cpu")
    assert sa.device == "cpu"
    assert sa.attention_backend == "torch_native"
    assert sa.disable_cuda_graph is True
    assert sa.mem_fraction_static == CPU_MEM_FRACTION_STATIC
    assert sa.sleep_on_idle is True
    for flag in ("--device", "--attention-backend", "--mem-fraction-static", "--sleep-on-idle"):
        assert any(n.startswith(flag) for n in notes), flag


def test_plain_sglang_cpu_args_are_what_drift_fills_in():
    """Benchmarks and tests start their SGLang oracle with SGLANG_CPU_ARGS: the
    same kernels and settings as drift, but for the memory fraction."""
    sa = server_args(*SGLANG_CPU_ARGS)
    notes = check_and_complete(sa, "cpu", multiplexed=False)
    assert [n.split()[0] for n in notes] == ["--mem-fraction-static"], notes


def test_gpu_leaves_sleep_on_idle_to_the_user():
    sa = server_args()
    check_and_complete(sa, "cuda")
    assert sa.sleep_on_idle is False


def test_cpu_keeps_user_values():
    sa = server_args("--attention-backend", "intel_amx", "--mem-fraction-static", "0.5")
    notes = check_and_complete(sa, "cpu")
    assert sa.attention_backend == "intel_amx"
    assert sa.mem_fraction_static == 0.5
    assert sa.device == "cpu"
    assert not any(n.startswith(("--attention-backend", "--mem-fraction-static")) for n in notes)


# --- the launcher CLI (fails before any server process starts) -----------------


def run_cli(*args, tmp_path):
    env = dict(os.environ, DRIFT_SGL_STUB_DIR=str(tmp_path / "stub"))
    return subprocess.run(
        [sys.executable, "-m", "drift_sgl.launch_server", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_help(tmp_path):
    proc = run_cli("--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--drift-layer-budget-tokens", "--drift-partition", "--model-path"):
        assert flag in proc.stdout


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("drift-sgl: error: ")]


def test_cli_rejects_an_unreadable_model_in_one_line(tmp_path):
    proc = run_cli("--model-path", str(tmp_path / "missing"), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("drift-sgl: error: --model-path: SGLang cannot load the model")


def test_cli_rejects_a_multimodal_model_in_one_line(tmp_path):
    model = fake_model_dir(tmp_path / "vlm", "LlavaLlamaForCausalLM")
    proc = run_cli("--model-path", str(model), "--device", "cpu", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert "LlavaLlamaForCausalLM is a multimodal model" in errors[0]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--drift-layer-budget-tokens", "0"], "--drift-layer-budget-tokens"),
        (["--drift-bogus", "1"], "--drift-bogus"),
        (["--drift-splits", "16"], "--drift-splits"),
        (["--drift-partition", "green-ctx", "--device", "cpu"], "--drift-partition"),
    ],
)
def test_cli_rejects_bad_drift_flags(args, flag, tmp_path):
    proc = run_cli("--model-path", "/nonexistent", *args, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"drift-sgl: error: {flag}")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--drift-layer-budget-tokens", "abc"], "--drift-layer-budget-tokens"),
        (["--drift-partition", "bogus"], "--drift-partition"),
        (["--drift-layer-budget", "5"], "--drift-layer-budget"),  # no abbreviations
    ],
)
def test_bad_drift_values_are_one_error_naming_the_flag(argv, flag):
    with pytest.raises(DriftConfigError) as info:
        split_argv(argv)
    assert str(info.value).startswith(flag + ":")
    assert "\n" not in str(info.value)


def test_resolve_device():
    from drift_sgl.cpu.stub import has_nvidia_driver
    from drift_sgl.launch_server import resolve_device

    assert resolve_device(["--device", "cpu"]) == "cpu"
    assert resolve_device(["--device=xpu"]) == "xpu"
    if has_nvidia_driver():
        assert resolve_device([]) == "cuda"
        return
    assert resolve_device(["--model-path", "m"]) == "cpu"
    with pytest.raises(DriftConfigError, match=r"^--device: 'cuda' needs an NVIDIA driver"):
        resolve_device(["--device", "cuda"])
