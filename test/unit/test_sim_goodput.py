"""bench/sim_goodput.py: chunked prefill is searched per chunk size and reported at its best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_a_given_kv_pool_is_what_every_policy_runs_with(capsys, tmp_path):
    sim_goodput = load_script(SCRIPT, "sim_goodput")
    argv = ["--traces", "agent", "--sessions", "4", "--policies", "drift", "sglang"]
    argv += ["--bisect-steps", "1", "--jobs", "1", "--kv-capacity-tokens", "50000"]
    assert sim_goodput.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kv_capacity_tokens_per_gpu"] == 50000
    for row in report["traces"]["agent"]["results"].values():
        assert row["assumptions"]["kv_capacity"] == {"source": "--kv-capacity-tokens"}
    # A GPU whose memory size is unknown: one line asking for the pool, no worker traceback.
    profile = json.loads(sim_goodput.PROFILE.read_text())
    profile["device"]["name"] = "Mystery Accelerator"
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(profile))
    with pytest.raises(SystemExit) as info:
        sim_goodput.main(["--profile", str(unknown), "--policies", "drift", "sglang"])
    assert info.value.code == 2
    assert "give --kv-capacity-tokens" in capsys.readouterr().err


def test_sensitivity_reports_every_variant_against_the_best_chunk_size(capsys):
    load_script(SCRIPT, "sim_goodput")  # what the script imports
    sensitivity = load_script(SCRIPT.with_name("sim_sensitivity.py"), "sim_sensitivity")
    argv = ["--constants", "overlap_loss", "--traces", "agent", "--sessions", "4"]
    argv += ["--chunk-sizes", "256", "2048", "--bisect-steps", "1", "--jobs", "1", "--markdown"]
    assert sensitivity.main(argv) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert list(report["variants"]) == ["central", "overlap_loss=0", "overlap_loss=0.5"]
    for row in (v["agent"] for v in report["variants"].values()):
        assert row["chunked_rate"] == max(row["chunk_sweep"].values())
        assert row["drift_over_chunked"] == round(row["drift_rate"] / row["chunked_rate"], 3)
    # Without the overlap loss short chunks are cheap: chunked can only gain.
    rates = {name: v["agent"]["chunk_sweep"]["256"] for name, v in report["variants"].items()}
    assert rates["overlap_loss=0"] >= rates["central"] >= rates["overlap_loss=0.5"]
    assert "| overlap_loss=0.5 |" in err
