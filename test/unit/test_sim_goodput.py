"""bench/sim_goodput.py: chunked prefill is searched per chunk size and reported at its best."""

from __future__ import annotations

import json
from pathlib import Path

from scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sim_goodput.py"


def test_chunked_is_reported_at_its_best_chunk_size(capsys):
    sim_goodput = load_script(SCRIPT, "sim_goodput")
    argv = ["--traces", "agent", "--sessions", "4", "--policies", "drift", "chunked"]
    argv += ["--chunk-sizes", "256", "4096", "--bisect-steps", "1", "--jobs", "1"]
    assert sim_goodput.main(argv) == 0
    report = json.loads(capsys.readouterr().out)["traces"]["agent"]
    chunked = report["results"]["chunked"]
    assert set(chunked["chunk_sweep"]) == {"256", "4096"}
    assert chunked["goodput_rps_per_gpu"] == max(chunked["chunk_sweep"].values())
    assert chunked["chunk_size"] in (256, 4096)
    assert chunked["chunk_sweep"][str(chunked["chunk_size"])] == chunked["goodput_rps_per_gpu"]
    assert set(report["results"]) == {"drift", "chunked"}
    assert report["drift_over"]["chunked"] is not None
