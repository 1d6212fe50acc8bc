"""Fuzz a drift server with generated requests, valid to hostile, for longer than the tests do.

    python bench/fuzz.py [--url URL | --model-path DIR] [--examples 2000] [--seed N] [--json OUT]

Without ``--url`` starts a drift server on the tiny random Llama (or
``--model-path``) and stops it after. Sends ``--examples`` requests drawn by
drift_sgl.tools.fuzz (the strategy test/e2e/test_fuzz.py runs with a fixed
seed), with a fresh seed unless ``--seed``. Invariants: no 5xx, every answer
within a minute, the server alive at the end, and, for a server it started,
every KV slot free after a cache flush. Prints one JSON object; exit status 1
when an invariant broke (the message holds the shrunk request).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import requests

from drift_sgl.tools.fuzz import FuzzLimits, InvariantBroken, fuzz
from drift_sgl.tools.server_process import (
    ServerStartError,
    drift_kv_pool_drained,
    start_local_server,
)


def vocab_size(url: str) -> int:
    info = requests.get(url + "/get_model_info", timeout=30).json()
    path = Path(info["model_path"]) / "config.json"
    return int(json.loads(path.read_text())["vocab_size"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="fuzz this server instead of starting one")
    parser.add_argument("--model-path", type=Path, help="default: the tiny random Llama")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, help="repeat a session (default: a fresh one)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    server = None
    try:
        url = args.url
        if url is None:
            model = args.model_path
            if model is None:
                from drift_sgl.tools.tiny_model import write_tiny_model

                model = write_tiny_model(work / "tiny-llama")
            server = start_local_server("drift_sgl.launch_server", model, work / "drift.log")
            url = server.url
        started = time.monotonic()
        report: dict = {"url": url, "examples": args.examples, "seed": args.seed}
        try:
            result = fuzz(url, vocab_size(url), args.examples, args.seed, FuzzLimits())
            report.update(result.as_dict(), invariants_held=True)
        except InvariantBroken as err:
            report.update(invariants_held=False, broken=str(err))
        if server is not None:
            report["kv_pool_drained"] = drift_kv_pool_drained(server)
        report["seconds"] = round(time.monotonic() - started, 1)
    except ServerStartError as err:
        print(f"fuzz: {err}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if report["invariants_held"] and report.get("kv_pool_drained", True) else 1


if __name__ == "__main__":
    sys.exit(main())
