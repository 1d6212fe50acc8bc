"""SGLang's own serving benchmark (`python -m sglang.benchmark.serving`) against drift.

It runs as a user runs it (a subprocess) on the datasets that need no download,
with a request rate, a concurrency cap and goodput SLOs, and its JSONL result
file is checked: every request completed, none failed, the goodput keys are
there, and the server_info it recorded is drift's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drift_sgl.tools.server_process import ServerProcess

pytestmark = pytest.mark.slow

NUM_PROMPTS = 10
#: Loose SLOs (ms): a loaded 2-core CPU still meets them, so attainment is 100%.
GOODPUT = ["ttft:60000", "tpot:10000"]

DATASETS = {
    "random-ids": [
        "--dataset-name", "random-ids",
        "--num-prompts", str(NUM_PROMPTS),
        "--random-input-len", "128",
        "--random-output-len", "16",
        "--random-range-ratio", "1",
    ],
    # --num-prompts does not apply here: the count is groups x prompts per group.
    # The tiny model's 512-token vocabulary re-tokenizes the generated text
    # longer than asked (192 + 32 became ~340 tokens), so keep these small.
    "generated-shared-prefix": [
        "--dataset-name", "generated-shared-prefix",
        "--gsp-num-groups", "2",
        "--gsp-prompts-per-group", str(NUM_PROMPTS // 2),
        "--gsp-system-prompt-len", "128",
        "--gsp-question-len", "16",
        "--gsp-output-len", "16",
        "--cache-report",
    ],
}  # fmt: skip


def bench_serving(
    server: ServerProcess, model_dir: Path, out: Path, home: Path, *args: str
) -> dict:
    """Run the benchmark; return the last record of its JSONL output file."""
    env = dict(os.environ)
    # The benchmark sends `Authorization: Bearer $OPENAI_API_KEY` (its API_KEY
    # variable is sent without "Bearer " and is refused by SGLang's --api-key).
    env["OPENAI_API_KEY"] = server.api_key or ""
    # The tokenizer is a local directory: nothing needs the Hugging Face hub.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # generated-shared-prefix caches its prompts in ~/.cache/sglang/benchmark,
    # keyed by its arguments and the tokenizer's class, not the tokenizer.
    env["HOME"] = str(home)
    result = subprocess.run(
        [
            sys.executable, "-m", "sglang.benchmark.serving",
            "--backend", "sglang",
            "--base-url", server.url,
            "--model", str(model_dir),
            "--tokenizer", str(model_dir),
            "--request-rate", "8",
            "--max-concurrency", "4",
            "--goodput", *GOODPUT,
            "--output-file", str(out),
            "--output-details",
            "--disable-tqdm",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "Serving Benchmark Result" in result.stdout, result.stdout[-3000:]
    assert "Goodput" in result.stdout, result.stdout[-3000:]
    lines = out.read_text().splitlines()
    assert lines, "the benchmark wrote no result"
    return json.loads(lines[-1])


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_sglang_bench_serving_completes_against_drift(
    drift_server, tiny_model_dir, tmp_path, dataset
):
    record = bench_serving(
        drift_server,
        tiny_model_dir,
        tmp_path / "result.jsonl",
        tmp_path,
        *DATASETS[dataset],
    )
    assert record["dataset_name"] == dataset
    assert record["completed"] == NUM_PROMPTS, record["errors"]
    # --output-details: one entry per request, "" for a success.
    assert record["errors"] == [""] * NUM_PROMPTS
    assert record["total_output_tokens"] == NUM_PROMPTS * 16
    assert record["request_throughput"] > 0
    for key in ("mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "p99_itl_ms"):
        assert record[key] > 0, key
    # Goodput: the SLOs as given, and all requests met them.
    assert record["goodput_slos_ms"] == {"ttft": 60000.0, "tpot": 10000.0}
    assert record["slo_attainment"] == 1.0
    assert record["slo_attainment_by_metric"] == {"ttft": 1.0, "tpot": 1.0}
    assert record["request_goodput"] > 0
    # The benchmark recorded /server_info: it talked to drift.
    assert "drift" in record["server_info"]["internal_states"][0]
    if dataset == "generated-shared-prefix":
        # Later prompts of a group reuse its system prompt from the radix cache.
        assert record["cache_report"]["total_cached_tokens"] > 0, record["cache_report"]
