"""ctypes bindings of the optional CUDA extension ``sgl-kernel-ext`` (libdrift_sgl_ext.so).

The extension (C API in ``sgl-kernel-ext/csrc/drift_ext.h``) provides what neither torch nor
sglang-kernel does: two green contexts on disjoint SM groups with the SM counts the driver
really granted, the device's split granularity, and an SM-id probe that shows which SMs a
stream's kernels ran on. Build it with ``make ext``; point ``$DRIFT_SGL_EXT_LIB`` at another
build. This module only uses ctypes and loads the library lazily, so it imports anywhere.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "ExtSmResource",
    "GreenPairHandle",
    "KernelExt",
    "KernelExtError",
    "library_path",
]

#: Environment variable naming the library to load instead of the in-tree build.
ENV_VAR = "DRIFT_SGL_EXT_LIB"
LIB_NAME = "libdrift_sgl_ext.so"
#: DRIFT_EXT_ABI_VERSION of drift_ext.h that these bindings follow.
ABI_VERSION = 1
#: drift_green_pair.flags bit DRIFT_PAIR_SHARED_CTX.
_PAIR_SHARED_CTX = 0x1


def library_path() -> Path | None:
    """The extension library to load: ``$DRIFT_SGL_EXT_LIB`` if set (whether or not it
    exists), else the in-tree build ``sgl-kernel-ext/build/libdrift_sgl_ext.so`` if it
    exists, else None."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    # python/drift_sgl/partition/ext.py -> the repository root.
    built = Path(__file__).resolve().parents[3] / "sgl-kernel-ext" / "build" / LIB_NAME
    return built if built.is_file() else None


class KernelExtError(RuntimeError):
    """The extension could not be loaded, or one of its calls failed.

    ``code`` is the call's nonzero return value (a CUresult or cudaError_t when
    positive, a DRIFT_ERR_* code when negative), or None for load errors.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ExtSmResource:
    """A device's SM resource; 0 in a field means the library could not tell."""

    total_sms: int
    min_partition_sms: int
    alignment: int


class _GreenPair(ctypes.Structure):
    """``drift_green_pair`` of drift_ext.h (layout of ABI version 1)."""

    _fields_ = [
        ("prefill_stream", ctypes.c_size_t),
        ("decode_stream", ctypes.c_size_t),
        ("prefill_sms", ctypes.c_int),
        ("decode_sms", ctypes.c_int),
        ("device", ctypes.c_int),
        ("flags", ctypes.c_int),
        ("prefill_ctx", ctypes.c_void_p),
        ("decode_ctx", ctypes.c_void_p),
    ]


class GreenPairHandle:
    """Prefill and decode streams in green contexts on disjoint SMs (from ``create_pair``).

    Streams are raw ``CUstream`` handles; wrap them with ``torch.cuda.ExternalStream``.
    ``prefill_sms`` / ``decode_sms`` are the SM counts the driver granted. Call ``close()``
    (or use the handle as a context manager) once no work is pending on the streams; it is
    not called on garbage collection, since torch may still hold the streams.
    """

    def __init__(self, ext: KernelExt, pair: _GreenPair) -> None:
        self._ext = ext
        self._pair = pair
        self._closed = False
        self.prefill_stream: int = int(pair.prefill_stream)
        self.decode_stream: int = int(pair.decode_stream)
        self.prefill_sms: int = int(pair.prefill_sms)
        self.decode_sms: int = int(pair.decode_sms)
        #: Both streams are in one green context on the whole device (an SM count was 0).
        self.shared_context: bool = bool(pair.flags & _PAIR_SHARED_CTX)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has run."""
        return self._closed

    def close(self) -> None:
        """Destroy the streams and green contexts; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._ext._call("drift_green_pair_destroy", ctypes.byref(self._pair))

    def __enter__(self) -> GreenPairHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"GreenPairHandle(prefill_sms={self.prefill_sms}, decode_sms={self.decode_sms}, "
            f"prefill_stream={self.prefill_stream:#x}, decode_stream={self.decode_stream:#x}, "
            f"{state})"
        )


class KernelExt:
    """The loaded extension library. Create it with ``KernelExt.load()``."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._lib = lib
        c_int, c_int_p = ctypes.c_int, ctypes.POINTER(ctypes.c_int)
        signatures: dict[str, tuple[type | None, list[type]]] = {
            "drift_ext_abi_version": (c_int, []),
            "drift_last_error": (ctypes.c_char_p, []),
            "drift_smid_probe": (
                c_int,
                [ctypes.c_size_t, c_int, c_int, ctypes.POINTER(ctypes.c_uint)],
            ),
            "drift_sm_resource": (c_int, [c_int, c_int_p, c_int_p, c_int_p]),
            "drift_green_pair_create": (c_int, [c_int, c_int, c_int, ctypes.POINTER(_GreenPair)]),
            "drift_green_pair_destroy": (c_int, [ctypes.POINTER(_GreenPair)]),
        }
        for name, (restype, argtypes) in signatures.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as err:
                raise KernelExtError(f"{path} lacks {name}: rebuild it with `make ext`") from err
            fn.restype = restype
            fn.argtypes = argtypes
        version = lib.drift_ext_abi_version()
        if version != ABI_VERSION:
            raise KernelExtError(
                f"{path} has ABI version {version}, these bindings need {ABI_VERSION}: "
                "rebuild it with `make ext`"
            )

    @classmethod
    def load(cls, path: Path | None = None) -> KernelExt | None:
        """Load the library at ``path`` (default: ``library_path()``).

        Returns None when no path is given and there is no built library. Raises
        KernelExtError when the library named by ``path`` or ``$DRIFT_SGL_EXT_LIB`` does
        not exist, cannot be loaded (the reason is in the message), or does not match
        these bindings.
        """
        explicit = path is not None or bool(os.environ.get(ENV_VAR))
        target = path if path is not None else library_path()
        if target is None:
            return None
        if not target.is_file():
            source = "given path" if path is not None else f"${ENV_VAR}"
            if explicit:
                raise KernelExtError(f"sgl-kernel-ext library {target} ({source}) does not exist")
            return None
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as err:
            raise KernelExtError(f"cannot load sgl-kernel-ext library {target}: {err}") from err
        return cls(lib, target)

    def _call(self, name: str, *args: object) -> None:
        rc = getattr(self._lib, name)(*args)
        if rc != 0:
            raw = self._lib.drift_last_error() or b""
            message = raw.decode(errors="replace") or f"{name} failed"
            raise KernelExtError(f"{message} [code {rc}]", code=rc)

    def sm_resource(self, device: int) -> ExtSmResource:
        """SM count of ``device`` and its split granularity (0 where unknown)."""
        total, min_sms, align = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        self._call(
            "drift_sm_resource",
            device,
            ctypes.byref(total),
            ctypes.byref(min_sms),
            ctypes.byref(align),
        )
        return ExtSmResource(total.value, min_sms.value, align.value)

    def create_pair(self, device: int, prefill_sms: int, decode_sms: int) -> GreenPairHandle:
        """Green contexts for prefill and decode on disjoint SMs of ``device``, a stream each.

        ``decode_sms`` SMs (rounded up to the granularity) are split off for decode;
        prefill gets ``prefill_sms`` of the rest, or all of it. A count of 0 puts both
        streams in one green context on the whole device. The handle holds the counts
        the driver realized.
        """
        pair = _GreenPair()
        self._call("drift_green_pair_create", device, prefill_sms, decode_sms, ctypes.byref(pair))
        return GreenPairHandle(self, pair)

    def smid_probe(self, stream: int, blocks: int, spin_ns: int = 20000) -> list[int]:
        """SM id of each of ``blocks`` blocks launched on ``stream`` (synchronizes it).

        Each block spins ``spin_ns`` ns first so that blocks spread over every SM the
        stream may use; an entry of 0xFFFFFFFF is a block that never wrote its id. The
        calling thread's current CUDA device must be the stream's.
        """
        if blocks <= 0:
            raise KernelExtError(f"smid_probe needs blocks > 0, got {blocks}")
        out = (ctypes.c_uint * blocks)()
        self._call("drift_smid_probe", stream, blocks, spin_ns, out)
        return list(out)

    def __repr__(self) -> str:
        return f"KernelExt({self.path})"
