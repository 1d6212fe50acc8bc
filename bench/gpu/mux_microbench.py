#!/usr/bin/env python3
"""Green-context multiplexing on one GPU: SM-share scaling, co-run interference, and the
prefill throughput it buys under a TPOT target, against chunked mixed batches.

    PYTHONPATH=python python bench/gpu/mux_microbench.py --out DIR [--quick]
    PYTHONPATH=python python bench/gpu/mux_microbench.py --smoke --out DIR   # CPU self-test

Llama-3.1-8B layer shapes, random weights, torch kernels only (cuBLAS, SDPA); no SGLang.
Stages: probe (SM ids per split), solo latency per split, co-run on a split's two
partitions, chunked baseline, headline. bench/gpu/README.md explains every JSON key.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "python") not in sys.path:  # also runs without the editable install
    sys.path.insert(0, str(ROOT / "python"))

sys.path.insert(0, str(Path(__file__).resolve().parent))  # llama_layers, when imported

from llama_layers import Model, Shapes  # noqa: E402

from drift_sgl.partition.green_ctx import (  # noqa: E402
    GreenContextUnavailable,
    build_green_context_backend,
)
from drift_sgl.partition.probe import probe_split  # noqa: E402
from drift_sgl.partition.sm_layout import parse_splits, split_table  # noqa: E402
from drift_sgl.partition.stream_pairs import StreamPair, StreamPairBackend  # noqa: E402
from drift_sgl.partition.time_mux import TimeMultiplexedBackend  # noqa: E402

STARTED = time.perf_counter()
Fn = Callable[[], Any]


SMOKE_SHAPES = Shapes(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, layers=2)


@dataclass(frozen=True)
class Options:
    """Every option is a command-line flag (``--prefill-tokens 512,2048``); the defaults
    are the full GPU run, ``--quick`` and ``--smoke`` change some (``PRESETS``)."""

    out: Path = Path("mux-microbench")  # directory for the JSON and PNG
    model_config: Path = ROOT / "bench" / "models" / "llama-3.1-8b" / "config.json"
    splits: str = "auto"  # or "p1:d1,p2:d2": the mixed splits to request (SMs)
    device: int = 0  # CUDA device index
    smoke: bool = False  # CPU self-test: tiny shapes, phases take turns, no graphs/probe
    quick: bool = False  # fewer sizes: about 2 minutes on an H100
    allow_time_mux: bool = False  # without green contexts, measure the phases taking turns
    prefill_tokens: tuple[int, ...] = (128, 512, 2048, 8192)  # new tokens per prefill block
    prefill_layers: int = 4  # layers per prefill block
    decode_batches: tuple[int, ...] = (8, 32, 128)
    context: int = 2048  # KV tokens per decode request
    #: More KV tokens per request for solo decode steps: the profile fit needs more
    #: than one context to tell the per-sequence cost from the KV read.
    decode_contexts: tuple[int, ...] = (512, 8192)
    decode_layers: int | None = None  # model depth; None: num_hidden_layers
    headline_batch: int = 64
    tpot_ms: float | None = 50.0  # None (smoke only): derived from the measured step times
    warmup: int = 3
    repeats: int = 7
    corun_ms: float = 400.0  # shortest co-run window
    chunk_granule: int = 64  # chunk sizes searched are multiples of this
    max_chunk: int = 16384
    weight_sets: int = 4  # distinct layers' weights (and KV), reused cyclically


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(prefill_tokens=(2048,), decode_batches=(32,), decode_contexts=(8192,),
                  warmup=2, repeats=5),
    "smoke": dict(prefill_tokens=(32, 64), decode_batches=(2, 4), prefill_layers=1, context=32,
                  decode_contexts=(64,),
                  headline_batch=4, tpot_ms=None, warmup=1, repeats=3, chunk_granule=16,
                  max_chunk=1024, weight_sets=2),
}  # fmt: skip


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Options: see bench/gpu/README.md."
    )
    for f in fields(Options):  # one flag per option, typed by its default
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None)
            continue
        kind = float if f.name == "tpot_ms" else type(default or 0)
        if isinstance(default, tuple):
            kind = lambda t: tuple(int(v) for v in t.split(","))  # noqa: E731
            default = ",".join(map(str, default))
        parser.add_argument(flag, type=kind, help=f"default: {default} (full run)")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    preset = "smoke" if given.get("smoke") else "quick" if given.get("quick") else None
    return replace(Options(), **{**PRESETS.get(preset, {}), **given})  # flags over presets


def progress(stage: str, message: str) -> None:
    elapsed = time.perf_counter() - STARTED
    print(f"[mux_microbench +{elapsed:6.1f}s] {stage}: {message}", file=sys.stderr, flush=True)


class Clock:
    """Marks on a stream: CUDA events on a GPU (device time); on a CPU the host clock,
    since CPU ops have finished when they return."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self, stream: Any) -> Any:
        if not self.cuda:
            return time.perf_counter() * 1e3
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def ms(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) if self.cuda else b - a

    def wait(self, *streams: Any) -> None:
        # Stream by stream: green contexts' streams are not covered by a device-wide sync.
        for stream in streams if self.cuda else ():
            stream.synchronize()


@dataclass
class Bench:
    opts: Options
    layers: int  # model depth: decode step, chunked step, prefill token conversion
    backend: StreamPairBackend
    concurrent: bool  # green contexts; otherwise the phases take turns on one stream
    model: Model
    clock: Clock
    streams: Any  # torch.cuda or torch.cpu

    def release(self) -> None:
        """Wait for every stream (inputs made on the default stream are ready; nothing
        freed is in use) and return cached blocks, which each stream keeps apart."""
        if self.clock.cuda:
            for pair in map(self.backend.pair, range(len(self.backend.splits))):
                self.clock.wait(pair.prefill, pair.decode)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def summary(times: list[float]) -> dict[str, Any]:
    if not times:
        return {"median_ms": None, "min_ms": None, "n": 0}
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
            "n": len(times)}  # fmt: skip


def ms(t: dict[str, Any]) -> str:
    return f"{t['median_ms']} ms"


def time_solo(b: Bench, stream: Any, fn: Fn, repeats: int = 0) -> dict[str, Any]:
    marks = []
    with b.streams.stream(stream):
        for _ in range(b.opts.warmup):
            fn()
        for _ in range(repeats or b.opts.repeats):
            start = b.clock.mark(stream)
            fn()
            marks.append((start, b.clock.mark(stream)))
    b.clock.wait(stream)
    return summary([b.clock.ms(*m) for m in marks])


def decode_runner(b: Bench, stream: Any, x: torch.Tensor, kv: Any) -> Fn:
    """The decode step; on a GPU a CUDA graph captured on ``stream``: its kernels keep the
    green context they were captured under, wherever the graph is replayed."""
    step = lambda: b.model.forward(x, b.layers, kv, decode_rows=x.shape[0])  # noqa: E731
    if not b.clock.cuda:
        return step
    with b.streams.stream(stream):
        for _ in range(2):  # cuBLAS/SDPA set-up on this stream happens before the capture
            step()
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        step()
    return graph.replay


def corun(b: Bench, pair: StreamPair, prefill: Fn, decode: Fn, solo_p: float, solo_d: float):
    """(decode step times, prefill block times, prefill cycle times) with both phases busy.
    A cycle is the time per prefill block on the prefill side; taking turns, it includes
    the decode step, and a decode step waits for a whole prefill block."""
    clock, opts = b.clock, b.opts
    if not b.concurrent:
        marks = []
        with b.streams.stream(pair.prefill):
            for r in range(opts.warmup + opts.repeats):
                t0 = clock.mark(pair.prefill)
                prefill()
                t1 = clock.mark(pair.prefill)
                decode()
                marks += [(t0, t1, clock.mark(pair.prefill))] if r >= opts.warmup else []
        clock.wait(pair.prefill)
        cycles = [clock.ms(t0, t2) for t0, _, t2 in marks]
        return cycles, [clock.ms(t0, t1) for t0, t1, _ in marks], cycles
    window = max(opts.corun_ms, 6 * solo_d, 4 * solo_p)
    clock.wait(pair.prefill, pair.decode)
    ref = clock.mark(pair.decode)
    runs: dict[str, list] = {"p": [], "d": []}
    due = {"p": 0.0, "d": 0.0}
    # Enqueue on whichever stream is due soonest by the solo times, so that both queues stay
    # fed over the whole window; decode goes first so that its window opens before prefill's.
    while min(due.values()) < window:
        side = "p" if due["p"] < due["d"] else "d"
        stream, fn = (pair.prefill, prefill) if side == "p" else (pair.decode, decode)
        due[side] += solo_p if side == "p" else solo_d
        with b.streams.stream(stream):
            start = clock.mark(stream)
            fn()
            runs[side].append((start, clock.mark(stream)))
    clock.wait(pair.prefill, pair.decode)
    spans = {k: [(clock.ms(ref, s), clock.ms(ref, e)) for s, e in v] for k, v in runs.items()}

    def inside(k: str, other: str) -> list[float]:  # runs wholly within the other's window
        lo, hi = spans[other][0][0], spans[other][-1][1]
        return [e - s for s, e in spans[k] if s >= lo and e <= hi]

    return inside("d", "p"), inside("p", "d"), inside("p", "d")


def stage_probe(b: Bench) -> dict[str, Any]:
    if not b.concurrent:
        return {"skipped": "no GPU" if b.opts.smoke else "no green contexts (time-mux run)"}
    try:
        from drift_sgl.partition.ext import KernelExt

        ext = KernelExt.load()
    except (ImportError, OSError, RuntimeError) as err:
        return {"skipped": f"sgl-kernel-ext not loadable: {err}"}
    if ext is None:
        return {"skipped": "sgl-kernel-ext is not built (python sgl-kernel-ext/build.py)"}
    rows = []
    for i, split in enumerate(b.backend.splits):
        pair = b.backend.pair(i)
        handles = pair.prefill.cuda_stream, pair.decode.cuda_stream
        verdict = probe_split(ext.smid_probe, split, *handles, b.backend.total_units).as_dict()
        rows.append({"split_index": i, **verdict})
        progress(
            "probe", f"split {i} {split.prefill_units}:{split.decode_units}: ok={verdict['ok']}"
        )
    return {"library": str(ext.path), "all_ok": all(r["ok"] for r in rows), "splits": rows}


def prefill_fn(b: Bench, x: torch.Tensor) -> Fn:
    return lambda: b.model.forward(x, b.opts.prefill_layers)


def stage_solo_prefill(b: Bench) -> list[dict[str, Any]]:
    xs = {n: b.model.tokens(n) for n in b.opts.prefill_tokens}
    b.release()
    rows = []
    for i, split in enumerate(b.backend.splits):
        for n in xs if split.prefill_units else ():
            t = time_solo(b, b.backend.pair(i).prefill, prefill_fn(b, xs[n]))
            rate = n * b.opts.prefill_layers / b.layers / t["median_ms"] * 1e3
            row = dict(split_index=i, prefill_sms=split.prefill_units, tokens=n, **t)
            rows.append({**row, "layers": b.opts.prefill_layers, "tokens_per_s": round(rate, 1)})
            progress("solo-prefill", f"split {i} ({split.prefill_units} SMs) N={n}: {ms(t)}")
        b.release()
    return rows


def solo_decode(
    b: Bench, i: int, x: torch.Tensor, kv: Any, context: int, out: dict[str, list]
) -> tuple[Fn, dict[str, Any]]:
    """The decode step of ``x`` on split ``i`` (its runner, and its solo time, recorded)."""
    split, stream = b.backend.splits[i], b.backend.pair(i).decode
    decode = decode_runner(b, stream, x, kv)
    solo = time_solo(b, stream, decode)
    batch = x.shape[0]
    row = dict(split_index=i, decode_sms=split.decode_units, batch=batch, **solo)
    out["decode"].append({**row, "context": context, "layers": b.layers})
    progress("solo-decode", f"split {i} ({split.decode_units} SMs) B={batch} context {context}: "
             f"{ms(solo)}")  # fmt: skip
    return decode, solo


def stage_decode_and_corun(b: Bench, solo_prefill: list, out: dict[str, list]) -> None:
    """Solo decode per (batch, split); on mixed splits, co-run with each prefill size."""
    opts = b.opts
    prefill_ms = {(r["split_index"], r["tokens"]): r["median_ms"] for r in solo_prefill}
    xs = {n: b.model.tokens(n) for n in opts.prefill_tokens}
    for batch in sorted({*opts.decode_batches, opts.headline_batch}):
        kv, x = b.model.kv_cache(batch, opts.context), b.model.tokens(batch)
        b.release()
        for i, split in enumerate(b.backend.splits):
            if not split.decode_units:
                continue
            pair = b.backend.pair(i)
            decode, solo = solo_decode(b, i, x, kv, opts.context, out)
            for n in opts.prefill_tokens if split.prefill_units else ():
                solo_p = prefill_ms[(i, n)]
                runs = corun(b, pair, prefill_fn(b, xs[n]), decode, solo_p, solo["median_ms"])
                row = corun_row(b, i, batch, n, solo["median_ms"], solo_p, *runs)
                out["corun"].append(row)
                progress(
                    "corun",
                    f"split {i} B={batch} N={n}: decode {row['decode_corun_ms']} ms "
                    f"(x{row['decode_slowdown']}), {row['prefill_tokens_per_s']} prefill tok/s",
                )
            del decode  # the graph and its memory pool
            b.release()
        del kv
    stage_decode_contexts(b, out)


def stage_decode_contexts(b: Bench, out: dict[str, list]) -> None:
    """Solo decode steps at the other contexts of ``--decode-contexts``, every split."""
    for batch, context in itertools.product(b.opts.decode_batches, b.opts.decode_contexts):
        if context == b.opts.context:
            continue
        kv, x = b.model.kv_cache(batch, context), b.model.tokens(batch)
        b.release()
        for i, split in enumerate(b.backend.splits):
            if not split.decode_units:
                continue
            solo_decode(b, i, x, kv, context, out)  # its graph is dropped here, then released
            b.release()
        del kv


def profile_samples(result: dict[str, Any], device: str, model: dict[str, Any]) -> list[dict]:
    """The measurements as latency samples (drift_sgl.latency.samples), for
    ``python -m drift_sgl.profile fit``: solo and co-run prefill, scaled from the
    measured block to all layers, and solo and co-run decode steps. Decode steps
    have no LM head; prefills have no prefix (see bench/gpu/README.md)."""
    total = result["environment"]["partition"]["total_units"]
    layers = result["model"]["model_layers"]
    scale = layers / result["options"]["prefill_layers"]
    extra = {"device": device, "model": model, "source": "mux_microbench"}

    def sample(phase: str, sm: int, new: int, batch: int, kv: int, co_run: bool, ms: float):
        return {**extra, "phase": phase, "sm": sm, "total_sm": total, "new_tokens": new,
                "prefix_tokens": 0, "batch_size": batch, "kv_tokens": kv, "co_run": co_run,
                "latency_ms": ms}  # fmt: skip

    rows = [
        sample("prefill", r["prefill_sms"], r["tokens"], 1, 0, False, r["median_ms"] * scale)
        for r in result["solo"]["prefill"]
        if r["median_ms"]
    ]
    for r in result["solo"]["decode"]:
        if r["median_ms"]:
            kv = r["batch"] * r["context"]
            ms = r["median_ms"]
            rows.append(sample("decode", r["decode_sms"], r["batch"], r["batch"], kv, False, ms))
    context = result["options"]["context"]
    for r in result["corun"] if result["mode"] == "green-ctx" else ():
        if r["prefill_corun_ms"]:
            ms = r["prefill_corun_ms"] * scale
            rows.append(sample("prefill", r["prefill_sms"], r["prefill_tokens"], 1, 0, True, ms))
        if r["decode_corun_ms"]:
            kv = r["batch"] * context
            ms = r["decode_corun_ms"]
            rows.append(sample("decode", r["decode_sms"], r["batch"], r["batch"], kv, True, ms))
    return rows


def corun_row(b: Bench, i: int, batch: int, n: int, solo_d: float, solo_p: float,
              steps: list, blocks: list, cycles: list) -> dict[str, Any]:  # fmt: skip
    split = b.backend.splits[i]
    d, p, c = (summary(t)["median_ms"] for t in (steps, blocks, cycles))
    ratio = lambda a, s: round(a / s, 4) if a and s else None  # noqa: E731
    rate = round(n * b.opts.prefill_layers / b.layers / c * 1e3, 1) if c else None
    return dict(
        split_index=i, prefill_sms=split.prefill_units, decode_sms=split.decode_units,
        batch=batch, prefill_tokens=n, decode_solo_ms=solo_d, decode_corun_ms=d,
        decode_slowdown=ratio(d, solo_d), prefill_solo_ms=solo_p, prefill_corun_ms=p,
        prefill_slowdown=ratio(p, solo_p), prefill_cycle_ms=c, prefill_tokens_per_s=rate,
        decode_steps=len(steps), prefill_blocks=len(blocks),
    )  # fmt: skip


def search_chunk(step_ms: Callable[[int], float], tpot: float, granule: int, max_chunk: int):
    """The largest chunk (a multiple of ``granule``, at most ``max_chunk``) whose mixed step
    meets ``tpot``: doubling, then bisection; assumes the step grows with the chunk."""
    trials: dict[int, float] = {}

    def fits(chunk: int) -> bool:
        trials[chunk] = step_ms(chunk)
        return trials[chunk] <= tpot

    best, fail, chunk = 0, None, granule
    while chunk <= max_chunk and fail is None:
        best, fail = (chunk, None) if fits(chunk) else (best, chunk)
        chunk *= 2
    while fail is not None and fail - best > granule:
        mid = (best + fail) // 2 // granule * granule
        best, fail = (mid, fail) if fits(mid) else (best, mid)
    ms = trials.get(best)
    rate = round(best / ms * 1e3, 1) if best and ms else 0.0
    tried = [{"chunk": c, "step_ms": t} for c, t in sorted(trials.items())]
    capped = fail is None and best > 0  # max_chunk met the target: the real limit is higher
    return {"best_chunk": best, "step_ms": ms, "tokens_per_s": rate, "capped": capped,
            "trials": tried}  # fmt: skip


def stage_chunked(b: Bench, corun_rows: list[dict]) -> dict[str, Any]:
    """Baseline: one eager forward of the decode tokens plus a prefill chunk on the whole
    GPU (default stream, no partitions), as SGLang runs mixed chunked-prefill batches."""
    opts, batch = b.opts, b.opts.headline_batch
    kv = b.model.kv_cache(batch, opts.context)

    def step_ms(chunk: int) -> float:
        x = b.model.tokens(batch + chunk)
        fn = lambda: b.model.forward(x, b.layers, kv, decode_rows=batch)  # noqa: E731
        t = time_solo(b, b.streams.current_stream(), fn, repeats=max(3, opts.repeats // 2))
        progress("chunked", f"B={batch} chunk={chunk}: {ms(t)}")
        return t["median_ms"]

    decode_only = step_ms(0)
    tpot, source = opts.tpot_ms, "--tpot-ms"
    if tpot is None:  # smoke: a target both sides can meet, so that every code path runs
        mux = [r["decode_corun_ms"] or 0.0 for r in corun_rows if r["batch"] == batch]
        tpot, source = round(2 * max(decode_only, min(mux, default=0.0)), 4), "derived (smoke)"
    found = search_chunk(step_ms, tpot, opts.chunk_granule, opts.max_chunk)
    return dict(batch=batch, context=opts.context, layers=b.layers, tpot_ms=tpot,
                tpot_source=source, decode_only_ms=decode_only, **found)  # fmt: skip


def headline(b: Bench, corun_rows: list[dict], chunked: dict) -> dict[str, Any]:
    """Prefill tokens/s (new tokens through all layers) while decode steps run back to back
    within the TPOT target: the best mixed split and prefill size, against chunking."""
    tpot, batch = chunked.get("tpot_ms"), b.opts.headline_batch
    meets = [r for r in corun_rows if r["batch"] == batch and r["prefill_tokens_per_s"]
             and tpot is not None and (r["decode_corun_ms"] or tpot + 1) <= tpot]  # fmt: skip
    best = max(meets, key=lambda r: r["prefill_tokens_per_s"], default=None)
    mux: dict[str, Any] = {"tokens_per_s": 0.0, "candidates_meeting_tpot": len(meets)}
    if best:
        mux.update(tokens_per_s=best["prefill_tokens_per_s"], split_index=best["split_index"],
                   split=f"{best['prefill_sms']}:{best['decode_sms']}",
                   prefill_tokens=best["prefill_tokens"], decode_step_ms=best["decode_corun_ms"],
                   prefill_cycle_ms=best["prefill_cycle_ms"])  # fmt: skip
    rate = chunked.get("tokens_per_s") or 0.0
    chunk = {
        "tokens_per_s": rate,
        "chunk": chunked.get("best_chunk"),
        "step_ms": chunked.get("step_ms"),
    }
    ratio = round(mux["tokens_per_s"] / rate, 4) if rate else None
    return dict(tpot_ms=tpot, tpot_source=chunked.get("tpot_source"), batch=batch,
                context=b.opts.context, mux=mux, chunked=chunk,
                ratio_mux_over_chunked=ratio)  # fmt: skip


def environment(b: Bench) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    if b.clock.cuda:
        props = torch.cuda.get_device_properties(b.opts.device)
        version = ctypes.c_int()  # stays 0 if the driver library cannot be asked
        with contextlib.suppress(OSError):
            ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
        proc = Path("/proc/driver/nvidia/version")
        env.update(gpu=props.name, sm_count=props.multi_processor_count,
                   compute_capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), cuda_runtime=torch.version.cuda,
                   driver_cuda=f"{version.value // 1000}.{version.value % 1000 // 10}",
                   driver=proc.read_text().splitlines()[0] if proc.is_file() else None)  # fmt: skip
    else:
        env.update(gpu=None, cpu=platform.machine(), threads=torch.get_num_threads())
    env["partition"] = dict(backend=b.backend.name, concurrent=b.concurrent,
                            notes=list(b.backend.notes), total_units=b.backend.total_units,
                            splits=[asdict(s) for s in b.backend.splits])  # fmt: skip
    return env


def open_backend(opts: Options) -> tuple[StreamPairBackend, bool]:
    """The split table as stream pairs, and whether the phases really run concurrently."""
    if opts.smoke:  # a fake table on one CPU stream: the phases take turns
        stream = torch.cpu.Stream()
        pairs = [StreamPair(stream, stream, s) for s in split_table(8, ((6, 2), (4, 4)))]
        note = "CPU smoke run: one stream, the phases take turns; unit counts are nominal"
        return StreamPairBackend("time-mux (smoke)", 8, pairs, torch.cpu, notes=(note,)), False
    try:
        return build_green_context_backend(opts.device, parse_splits(opts.splits)), True
    except GreenContextUnavailable as err:
        if not opts.allow_time_mux:
            raise
        total = torch.cuda.get_device_properties(opts.device).multi_processor_count
        stream = torch.cuda.Stream(opts.device)
        pairs = [StreamPair(stream, stream, s) for s in TimeMultiplexedBackend(total).splits]
        notes = (f"green contexts unavailable: {err}", "one stream: the phases take turns")
        return StreamPairBackend("time-mux", total, pairs, torch.cuda, notes=notes), False


def run_stage(name: str, errors: dict[str, str], fn: Fn, default: Any) -> Any:
    progress(name, "start")
    try:
        return fn()
    except Exception as err:  # recorded; the later stages still run where they can
        errors[name] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        return default


def run(opts: Options, backend: StreamPairBackend, concurrent: bool) -> dict[str, Any]:
    cuda = not opts.smoke
    shapes = SMOKE_SHAPES if opts.smoke else Shapes.from_config(opts.model_config)
    layers = opts.decode_layers or shapes.layers
    torch.manual_seed(0)
    device, dtype = (f"cuda:{opts.device}", torch.bfloat16) if cuda else ("cpu", torch.float32)
    model = Model(shapes, min(opts.weight_sets, layers), device, dtype)
    streams = torch.cuda if cuda else torch.cpu
    b = Bench(opts, layers, backend, concurrent, model, Clock(cuda), streams)
    errors: dict[str, str] = {}
    result: dict[str, Any] = {
        "benchmark": "mux_microbench",
        "mode": "smoke" if opts.smoke else "green-ctx" if concurrent else "time-mux",
        "options": asdict(opts),
        "environment": environment(b),
        "model": dict(**asdict(shapes), model_layers=layers, weight_sets=len(model.sets),
                      dtype=str(dtype), source="smoke" if opts.smoke else str(opts.model_config)),
    }  # fmt: skip
    result["probe"] = run_stage("probe", errors, lambda: stage_probe(b), {"skipped": "failed"})
    solo_p = run_stage("solo-prefill", errors, lambda: stage_solo_prefill(b), [])
    measured: dict[str, list] = {"decode": [], "corun": []}
    run_stage("decode+corun", errors, lambda: stage_decode_and_corun(b, solo_p, measured), None)
    b.release()
    result["solo"] = {"prefill": solo_p, "decode": measured["decode"]}
    result["corun"] = measured["corun"]
    result["chunked"] = run_stage(
        "chunked", errors, lambda: stage_chunked(b, measured["corun"]), {}
    )
    result["headline"] = headline(b, measured["corun"], result["chunked"])
    result["errors"] = errors
    result["wall_s"] = round(time.perf_counter() - STARTED, 1)
    return result


def plot(result: dict[str, Any], path: Path) -> bool:
    """Solo latency against SMs per phase, decode slowdown per split, the headline bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    def lines(ax: Any, rows: list, key: str, x: str, y: str, ylabel: str) -> None:
        for value in sorted({r[key] for r in rows}):
            pts = sorted((r[x], r[y]) for r in rows if r[key] == value and r[y])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key} {value}")
        ax.set(xlabel=x.replace("_", " "), ylabel=ylabel)
        ax.legend(fontsize=8)

    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    lines(ax[0, 0], result["solo"]["prefill"], "tokens", "prefill_sms", "median_ms", "ms")
    lines(ax[0, 1], result["solo"]["decode"], "batch", "decode_sms", "median_ms", "ms")
    top = max(result["options"]["prefill_tokens"])
    rows = [r for r in result["corun"] if r["prefill_tokens"] == top]
    lines(ax[1, 0], rows, "batch", "decode_sms", "decode_slowdown", "co-run / solo")
    ax[0, 0].set_title(f"solo prefill block ({result['options']['prefill_layers']} layers)")
    ax[0, 1].set_title(f"solo decode step ({result['model']['model_layers']} layers)")
    ax[1, 0].set_title(f"decode slowdown beside a {top}-token prefill")
    head = result["headline"]
    rates = [head["mux"]["tokens_per_s"], head["chunked"]["tokens_per_s"]]
    ax[1, 1].bar([f"{result['mode']} mux", "chunked mixed"], rates, color=["C2", "C0"])
    ax[1, 1].set(ylabel="prefill tokens/s", title=f"TPOT {head['tpot_ms']} ms, B={head['batch']}: "
                 f"ratio {head['ratio_mux_over_chunked']}")  # fmt: skip
    fig.suptitle(f"mux_microbench ({result['mode']}, {result['environment']['gpu'] or 'CPU'})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_samples(result: dict[str, Any], opts: Options) -> None:
    """samples.jsonl beside the JSON, and the command that fits a profile from it."""
    from drift_sgl.latency.identity import ModelIdentity

    if opts.smoke:
        shapes = result["model"]
        device = "cpu (mux_microbench smoke)"
        model = ModelIdentity(
            architecture="LlamaForCausalLM",
            num_layers=shapes["model_layers"],
            hidden_size=shapes["hidden"],
            num_heads=shapes["heads"],
            num_kv_heads=shapes["kv_heads"],
            dtype="float32",
        )
    else:
        device = result["environment"]["gpu"]
        model = ModelIdentity.from_hf_config(json.loads(opts.model_config.read_text()), "bfloat16")
    rows = profile_samples(result, device, model.to_json())
    path = opts.out / "samples.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # --model-path: the profile then records the weight bytes the simulator's KV pool needs.
    model_path = "" if opts.smoke else f" --model-path {opts.model_config.parent}"
    progress("samples", f"{len(rows)} samples -> {path}; a profile: PYTHONPATH=python python -m "
             f"drift_sgl.profile fit --samples {path}{model_path} --out profile.json")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    if not opts.smoke and not torch.cuda.is_available():
        print("mux_microbench: torch sees no CUDA device; this benchmark needs an NVIDIA GPU "
              "(--smoke runs the CPU self-test)", file=sys.stderr)  # fmt: skip
        return 2
    if opts.smoke:
        torch.set_num_threads(1)  # tiny ops: threads only contend (badly, on a busy machine)
    try:
        backend, concurrent = open_backend(opts)
    except GreenContextUnavailable as err:
        print(f"mux_microbench: green contexts unavailable: {err}\n(the headline needs SM "
              "partitions; --allow-time-mux measures the phases taking turns)",
              file=sys.stderr)  # fmt: skip
        return 1
    except ValueError as err:  # --splits that do not parse or do not fit this GPU
        print(f"mux_microbench: {err}", file=sys.stderr)
        return 2
    try:
        result = run(opts, backend, concurrent)
    finally:
        backend.close()
    opts.out.mkdir(parents=True, exist_ok=True)
    result["plot"] = "mux_microbench.png" if plot(result, opts.out / "mux_microbench.png") else None
    out = opts.out / "mux_microbench.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_samples(result, opts)
    head, mux = result["headline"], result["headline"]["mux"]
    print(f"mux_microbench [{result['mode']}, {result['environment']['gpu'] or 'CPU'}] TPOT "
          f"{head['tpot_ms']} ms, B={head['batch']}: mux {mux['tokens_per_s']} tok/s (split "
          f"{mux.get('split')}, decode {mux.get('decode_step_ms')} ms) vs chunked "
          f"{head['chunked']['tokens_per_s']} tok/s (chunk {head['chunked']['chunk']}): ratio "
          f"{head['ratio_mux_over_chunked']}; {len(result['errors'])} stage errors -> {out}",
          flush=True)  # fmt: skip
    return 3 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
