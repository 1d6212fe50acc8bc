"""docs/sglang-parity.md names everything of the installed SGLang that drift must keep.

The inventory is checked against SGLang itself, read by test/sglang_surface.py in a
process of its own: every method SGLang's normal loop and batch selection call,
every HTTP route, every request field. A new duty in an SGLang upgrade fails here
until the page says how drift keeps it, refuses it, or why it does not apply.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "docs" / "sglang-parity.md"


@pytest.fixture(scope="module")
def surface() -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "test" / "sglang_surface.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def named() -> set[str]:
    """Everything the inventory writes as code (between backticks)."""
    return set(re.findall(r"`([^`\n]+)`", INVENTORY.read_text(encoding="utf-8")))


def test_every_call_of_sglangs_loop_is_in_the_inventory(surface, named):
    missing = {
        f"{root} -> {call}"
        for root, calls in surface["loop_calls"].items()
        for call in calls
        if call not in named
    }
    assert not missing, f"add rows for these to {INVENTORY.name}: {sorted(missing)}"


def test_the_loop_was_read(surface):
    # A root that moved or was renamed must not pass as "calls nothing".
    calls = surface["loop_calls"]
    assert "get_new_batch_prefill" in calls["get_next_batch_to_run"]
    assert "grammar_manager.get_ready_grammar_requests" in calls["_get_new_batch_prefill_raw"]
    assert all(calls.values())


def test_every_http_route_is_in_the_inventory(surface, named):
    missing = [path for path in surface["routes"] if path not in named]
    assert not missing, f"add these routes to {INVENTORY.name}: {missing}"
    assert "/generate" in surface["routes"] and len(surface["routes"]) > 50


def test_every_request_field_is_in_the_inventory(surface, named):
    missing = [name for name in surface["request_fields"] if name not in named]
    assert not missing, f"add these request fields to {INVENTORY.name}: {missing}"
    assert {"regex", "json_schema", "priority", "session_params"} <= set(surface["request_fields"])


def test_the_inventory_names_its_proofs():
    """Every test the page cites exists."""
    text = INVENTORY.read_text(encoding="utf-8")
    cited = set(re.findall(r"`(test_\w+)(?:\.py)?`", text))
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "test").rglob("*.py"))
    files = {p.stem for p in (ROOT / "test").rglob("test_*.py")}
    unknown = [
        name for name in cited if name not in files and not re.search(rf"def {name}\b", sources)
    ]
    assert not unknown, f"{INVENTORY.name} cites tests that do not exist: {unknown}"
