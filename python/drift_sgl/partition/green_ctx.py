"""Green-context partitions on an NVIDIA GPU: the split table as stream pairs.

At start-up every split of the table gets its own pair of streams, each in a
green context: the mixed splits get two disjoint SM groups, the single-phase
splits one green context over the whole device (so that both phases always
run inside green contexts; work on the primary context is not confined).

Three providers can make the pairs, tried in this order:
  ``cuda-bindings``  the driver API through ``cuda.bindings`` (the layer torch
                     >= 2.14 builds its own green contexts on; installed with
                     it). Splits the device once, so the groups are disjoint
                     by construction, and reads the realized counts back.
  ``sgl-kernel-ext`` drift's C helper (``sgl-kernel-ext/``), the same calls for
                     stacks without ``cuda.bindings``.
  ``sgl-kernel``     ``sgl_kernel.spatial`` from sglang-kernel. It does not
                     report the SMs it granted, so the counts are the rounded
                     requests; the SM-id probe (``partition.probe``) checks them.
torch's own ``GreenContext(num_sms=...)`` is not used for pairs: before 2.15 it
carves each context from the whole device, so two of them overlap.

Any failure raises ``GreenContextUnavailable`` with every provider's reason;
``partition.create_partition_backend`` turns that into one warning and the
time-multiplexed backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drift_sgl.partition.base import SmSplit
from drift_sgl.partition.sm_layout import (
    SmGranularity,
    driver_granularity,
    granularity_for,
    planned_split_table,
)
from drift_sgl.partition.stream_pairs import StreamPair, StreamPairBackend

logger = logging.getLogger(__name__)

#: Driver API version (``cuDriverGetVersion``) that has green-context streams.
MIN_DRIVER_VERSION = 12050


class GreenContextUnavailable(RuntimeError):
    """Green contexts cannot be had here; the message says why."""


@dataclass(frozen=True)
class _RawPair:
    """A provider's pair: stream handles, realized counts, and how to release it."""

    prefill_stream: int
    decode_stream: int
    prefill_sms: int
    decode_sms: int
    release: Callable[[], None]


class _Provider:
    """Makes green-context stream pairs through one API."""

    name = "base"
    #: Whether the realized SM counts are read back from the driver.
    reads_counts = True

    def granularity(self, device: int, fallback: SmGranularity) -> SmGranularity:
        return fallback

    def create(self, device: int, prefill_sms: int, decode_sms: int) -> _RawPair:
        raise NotImplementedError


class _CudaBindingsProvider(_Provider):
    name = "cuda-bindings"

    def __init__(self) -> None:
        from cuda.bindings import driver

        self._drv = driver
        version = self._call("cuDriverGetVersion")
        if version < MIN_DRIVER_VERSION:
            raise GreenContextUnavailable(
                f"the driver supports CUDA {version // 1000}.{version % 1000 // 10}; green-context "
                "streams need 12.5 or newer"
            )

    def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self._drv, name)(*args)
        err, values = result[0], result[1:]
        if err != self._drv.CUresult.CUDA_SUCCESS:
            _, text = self._drv.cuGetErrorName(err)
            raise GreenContextUnavailable(f"{name} failed: {text.decode() if text else err}")
        return values[0] if len(values) == 1 else values

    def _sm_resource(self, device: int) -> Any:
        dev = self._call("cuDeviceGet", device)
        return self._call(
            "cuDeviceGetDevResource", dev, self._drv.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
        )

    def granularity(self, device: int, fallback: SmGranularity) -> SmGranularity:
        sm = self._sm_resource(device).sm
        return driver_granularity(
            int(getattr(sm, "minSmPartitionSize", 0) or 0),
            int(getattr(sm, "smCoscheduledAlignment", 0) or 0),
            fallback,
        )

    def create(self, device: int, prefill_sms: int, decode_sms: int) -> _RawPair:
        drv = self._drv
        dev = self._call("cuDeviceGet", device)
        whole = self._sm_resource(device)
        made: list[tuple[str, Any]] = []

        def release() -> None:
            for kind, handle in reversed(made):
                if kind == "stream":
                    drv.cuStreamDestroy(handle)
                else:
                    drv.cuGreenCtxDestroy(handle)
            made.clear()

        def context(resource: Any) -> Any:
            desc = self._call("cuDevResourceGenerateDesc", [resource], 1)
            flags = drv.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM
            gctx = self._call("cuGreenCtxCreate", desc, dev, flags)
            made.append(("context", gctx))
            return gctx

        def stream(gctx: Any) -> int:
            flags = drv.CUstream_flags.CU_STREAM_NON_BLOCKING
            handle = self._call("cuGreenCtxStreamCreate", gctx, flags, 0)
            made.append(("stream", handle))
            return int(handle)

        def sm_count(gctx: Any) -> int:
            kind = drv.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
            return int(self._call("cuGreenCtxGetDevResource", gctx, kind).sm.smCount)

        try:
            if prefill_sms == 0 or decode_sms == 0:
                gctx = context(whole)
                total = sm_count(gctx)
                return _RawPair(
                    stream(gctx),
                    stream(gctx),
                    total if prefill_sms else 0,
                    total if decode_sms else 0,
                    release,
                )
            # Decode first, off the whole device; prefill from what remains,
            # so the two groups cannot overlap.
            split = "cuDevSmResourceSplitByCount"
            groups, _, remaining = self._call(split, 1, whole, 0, decode_sms)
            decode_ctx = context(groups[0])
            if prefill_sms < remaining.sm.smCount:
                groups, _, _ = self._call(split, 1, remaining, 0, prefill_sms)
                prefill_ctx = context(groups[0])
            else:
                prefill_ctx = context(remaining)
            return _RawPair(
                stream(prefill_ctx),
                stream(decode_ctx),
                sm_count(prefill_ctx),
                sm_count(decode_ctx),
                release,
            )
        except Exception:
            release()
            raise


class _KernelExtProvider(_Provider):
    name = "sgl-kernel-ext"

    def __init__(self) -> None:
        from drift_sgl.partition.ext import KernelExt

        ext = KernelExt.load()
        if ext is None:
            raise GreenContextUnavailable(
                "sgl-kernel-ext is not built (make ext, or set DRIFT_SGL_EXT_LIB)"
            )
        self._ext = ext

    def granularity(self, device: int, fallback: SmGranularity) -> SmGranularity:
        resource = self._ext.sm_resource(device)
        return driver_granularity(resource.min_partition_sms, resource.alignment, fallback)

    def create(self, device: int, prefill_sms: int, decode_sms: int) -> _RawPair:
        handle = self._ext.create_pair(device, prefill_sms, decode_sms)
        return _RawPair(
            handle.prefill_stream,
            handle.decode_stream,
            handle.prefill_sms,
            handle.decode_sms,
            handle.close,
        )


class _SglKernelProvider(_Provider):
    name = "sgl-kernel"
    reads_counts = False

    def __init__(self) -> None:
        from sgl_kernel import spatial

        self._spatial = spatial

    def create(self, device: int, prefill_sms: int, decode_sms: int) -> _RawPair:
        import torch

        if prefill_sms == 0 or decode_sms == 0:
            # sgl_kernel splits only; a whole-device pair is two plain streams.
            total = torch.cuda.get_device_properties(device).multi_processor_count
            first, second = torch.cuda.Stream(device), torch.cuda.Stream(device)
            return _RawPair(
                first.cuda_stream,
                second.cuda_stream,
                total if prefill_sms else 0,
                total if decode_sms else 0,
                lambda: None,
            )
        prefill, decode = self._spatial.create_greenctx_stream_by_value(
            prefill_sms, decode_sms, device
        )
        return _RawPair(
            prefill.cuda_stream, decode.cuda_stream, prefill_sms, decode_sms, lambda: None
        )


_PROVIDERS: tuple[type[_Provider], ...] = (
    _CudaBindingsProvider,
    _KernelExtProvider,
    _SglKernelProvider,
)


def check_device(device: int) -> tuple[int, SmGranularity]:
    """The device's SM count and table granularity; raises ``GreenContextUnavailable``
    where green contexts cannot work (no CUDA, MIG slice, old GPU)."""
    import torch

    if not torch.cuda.is_available():
        raise GreenContextUnavailable("torch sees no CUDA device")
    props = torch.cuda.get_device_properties(device)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if "MIG" in props.name or visible.startswith("MIG-"):
        raise GreenContextUnavailable(f"{props.name} is a MIG slice; MIG has no green contexts")
    try:
        return props.multi_processor_count, granularity_for(props.major, props.minor)
    except ValueError as err:
        raise GreenContextUnavailable(f"{props.name}: {err}") from None


def build_green_context_backend(
    device: int, requested: tuple[tuple[int, int], ...] | None
) -> StreamPairBackend:
    """Make the split table's stream pairs on ``device`` (a CUDA index).

    Args:
        device: the CUDA device index of this process.
        requested: mixed (prefill, decode) pairs from ``--drift-splits``, or None
            for ``auto``.

    Raises:
        GreenContextUnavailable: with each provider's reason.
        ValueError: ``requested`` does not fit this device.
    """
    import torch

    total, fallback = check_device(device)
    torch.cuda.set_device(device)
    torch.cuda.init()
    torch.empty(1, device=f"cuda:{device}")  # the primary context green contexts derive from
    reasons = []
    for provider_type in _PROVIDERS:
        try:
            provider = provider_type()
            granularity = provider.granularity(device, fallback)
        except (ImportError, OSError, RuntimeError) as err:
            reasons.append(f"{provider_type.name}: {err}")
            continue
        table = planned_split_table(total, granularity, requested)
        try:
            return _backend(provider, device, total, granularity, table)
        except (OSError, RuntimeError) as err:
            reasons.append(f"{provider.name}: {err}")
    raise GreenContextUnavailable("; ".join(reasons))


def _backend(
    provider: _Provider,
    device: int,
    total: int,
    granularity: SmGranularity,
    table: tuple[SmSplit, ...],
) -> StreamPairBackend:
    import torch

    raws: list[_RawPair] = []

    def close() -> None:
        for raw in reversed(raws):
            raw.release()

    try:
        for split in table:
            raws.append(provider.create(device, split.prefill_units, split.decode_units))
    except Exception:
        close()
        raise
    pairs = [
        StreamPair(
            prefill=torch.cuda.ExternalStream(raw.prefill_stream, device=device),
            decode=torch.cuda.ExternalStream(raw.decode_stream, device=device),
            split=SmSplit(prefill_units=raw.prefill_sms, decode_units=raw.decode_sms),
        )
        for raw in raws
    ]
    notes = (
        f"provider {provider.name}",
        f"granularity min {granularity.min_count} x{granularity.multiple} ({granularity.source})",
        "realized SM counts read back"
        if provider.reads_counts
        else "SM counts as requested (not reported by the provider; run the SM-id probe)",
    )
    return StreamPairBackend(
        "green-ctx", total, pairs, streams=torch.cuda, close=close, notes=notes
    )
