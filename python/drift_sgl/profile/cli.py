"""``python -m drift_sgl.profile``: make, fit and inspect latency profiles.

    profile run --model-path M [SGLang args] --out P.json [--samples S.jsonl] [--budget-min N]
    profile fit --samples S.jsonl --out P.json [--holdout 0.2] [--max-p95-error 0.08] [--force]
    profile estimate --model-path M --gpu h100 --out P.json
    profile plot --profile P.json --samples S.jsonl --out P.png

See docs/latency-model.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from drift_sgl.latency.fit import FitError, fit_latency_model
from drift_sgl.latency.identity import DeviceIdentity, ModelIdentity, read_hf_config
from drift_sgl.latency.model import LatencyModel, ProfileError
from drift_sgl.latency.roofline import GPU_SPECS, estimate_profile, memory_info
from drift_sgl.latency.samples import Sample, SampleError, read_samples

logger = logging.getLogger("drift_sgl.profile")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------ shared


def _add_fit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="profile JSON to write")
    parser.add_argument(
        "--holdout", type=float, default=0.2, help="share of samples held out to score the fit"
    )
    parser.add_argument(
        "--max-p95-error",
        type=float,
        default=0.08,
        help="refuse to write the profile if a phase's held-out p95 error is above this "
        "(a fraction; default %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="write it even above the bound")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")


def fit_and_write(
    samples: list[Sample],
    device: DeviceIdentity,
    model: ModelIdentity,
    args: argparse.Namespace,
    info: dict[str, Any],
) -> LatencyModel:
    """Fit, print the errors, and write the profile unless it breaks the bound."""
    try:
        profile = fit_latency_model(
            samples, device, model, holdout=args.holdout, seed=args.seed, info=info, progress=print
        )
    except FitError as err:
        raise CliError(f"cannot fit: {err}") from None
    over = [
        f"{phase} p95 error {row['p95_ape']:.1%}"
        for phase, row in profile.errors.items()
        if row["p95_ape"] > args.max_p95_error
    ]
    if over and not args.force:
        raise CliError(
            f"{', '.join(over)} above --max-p95-error {args.max_p95_error:.1%}; nothing written "
            "(collect more samples, or pass --force to write it anyway)"
        )
    for line in over:
        print(f"warning: {line} above the bound; written because of --force")
    profile.save(args.out)
    print(f"wrote {args.out}: {profile.describe()}")
    return profile


# --------------------------------------------------------------------- fit


def _identity_from_samples(
    samples: list[Sample], args: argparse.Namespace
) -> tuple[DeviceIdentity, ModelIdentity, dict[str, Any]]:
    """Device, model and the profile's memory info (empty without --model-path)."""
    names = {s.extra.get("device") for s in samples} - {None}
    models = [s.extra["model"] for s in samples if isinstance(s.extra.get("model"), dict)]
    name = args.device_name or (names.pop() if len(names) == 1 else None)
    if name is None:
        raise CliError("the samples do not name one device; pass --device-name")
    memory: dict[str, Any] = {}
    if args.model_path:
        try:
            config = read_hf_config(args.model_path)
        except FileNotFoundError as err:
            raise CliError(str(err)) from None
        model = ModelIdentity.from_hf_config(config, args.dtype)
        memory = memory_info(config, model.dtype)
    elif models and all(m == models[0] for m in models):
        model = ModelIdentity.from_json(models[0])
    else:
        raise CliError("the samples do not name one model; pass --model-path")
    kind = "cpu" if name.startswith("cpu") else "cuda"
    return DeviceIdentity(kind, name, samples[0].total_sm), model, memory


def cmd_fit(args: argparse.Namespace) -> None:
    try:
        samples = read_samples(args.samples)
    except (SampleError, OSError) as err:
        raise CliError(str(err)) from None
    if not samples:
        raise CliError(f"{args.samples} holds no samples")
    device, model, memory = _identity_from_samples(samples, args)
    if not memory:
        print(
            "note: without --model-path the profile records no weight bytes; the simulator's "
            "KV pool then estimates them from layers and hidden size (off for wide MLPs)"
        )
    fit_and_write(samples, device, model, args, {"samples_file": str(args.samples), **memory})


# ---------------------------------------------------------------- estimate


def cmd_estimate(args: argparse.Namespace) -> None:
    try:
        config = read_hf_config(args.model_path)
    except FileNotFoundError as err:
        raise CliError(str(err)) from None
    spec = GPU_SPECS[args.gpu]
    model = ModelIdentity.from_hf_config(config, args.dtype)
    device = DeviceIdentity("cuda", spec.name, spec.sms)
    profile = estimate_profile(config, model, spec, device, f"estimate:{args.gpu}")
    profile.save(args.out)
    print(f"wrote {args.out}: {profile.describe()}")
    print("(errors above are of the fitted form against the roofline, not measurements)")


# -------------------------------------------------------------------- plot


def cmd_plot(args: argparse.Namespace) -> None:
    from drift_sgl.profile.plot import plot_predicted_vs_measured

    try:
        profile = LatencyModel.load(args.profile)
        samples = read_samples(args.samples)
    except (ProfileError, SampleError, OSError) as err:
        raise CliError(str(err)) from None
    plot_predicted_vs_measured(profile, samples, args.out, title=args.title)
    print(f"wrote {args.out}")


# --------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace, sglang_argv: list[str]) -> None:
    from drift_sgl.profile.run_cli import run_and_fit

    run_and_fit(args, sglang_argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m drift_sgl.profile",
        description="Make, fit and inspect drift-sgl latency profiles (docs/latency-model.md).",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="measure on this device with SGLang's model runner, then fit",
        description="Any argument not listed here is an SGLang server argument "
        "(--model-path is required).",
        allow_abbrev=False,
    )
    _add_fit_args(run)
    run.add_argument("--samples", help="JSONL to append samples to (default: OUT.samples.jsonl)")
    run.add_argument(
        "--budget-min",
        type=float,
        help="minutes of measuring, across resumed runs; loading the model and fitting "
        "come on top (default: 30 on a GPU, 3 on a CPU)",
    )
    run.add_argument(
        "--max-tokens", type=int, default=32768, help="largest batch to measure, in KV tokens"
    )
    run.add_argument("--no-co-run", action="store_true", help="skip the contention measurements")

    fit = sub.add_parser("fit", help="fit a profile to samples", allow_abbrev=False)
    fit.add_argument("--samples", required=True, help="samples JSONL")
    _add_fit_args(fit)
    fit.add_argument(
        "--model-path",
        help="model directory with config.json (default: the identity in the samples; with it "
        "the profile also records the weight bytes the simulator's KV pool needs)",
    )
    fit.add_argument("--dtype", default=None, help="model dtype (with --model-path)")
    fit.add_argument("--device-name", help="device name (default: the one in the samples)")

    est = sub.add_parser(
        "estimate", help="a profile from peak figures, before measuring", allow_abbrev=False
    )
    est.add_argument("--model-path", required=True, help="model directory with config.json")
    est.add_argument("--gpu", required=True, choices=sorted(GPU_SPECS))
    est.add_argument("--dtype", default=None, help="model dtype (default: config.json's)")
    est.add_argument("--out", required=True, help="profile JSON to write")

    plot = sub.add_parser("plot", help="predicted vs measured latency (PNG)", allow_abbrev=False)
    plot.add_argument("--profile", required=True)
    plot.add_argument("--samples", required=True)
    plot.add_argument("--out", required=True, help="PNG to write")
    plot.add_argument("--title", default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "run":
            cmd_run(args, rest)
            return
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            {"fit": cmd_fit, "estimate": cmd_estimate, "plot": cmd_plot}[args.command](args)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            # Files that are missing, unreadable or not what they claim to be.
            raise CliError(f"{type(err).__name__}: {err}") from None
    except CliError as err:
        print(f"drift-sgl profile: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if args.command == "run":
            print(
                "interrupted: samples taken so far are kept; run again to resume", file=sys.stderr
            )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
