#!/usr/bin/env python3
"""Build or check sgl-kernel-ext (libdrift_sgl_ext.so) with nvcc. Standard library only.

    python sgl-kernel-ext/build.py                 # build sgl-kernel-ext/build/libdrift_sgl_ext.so
    python sgl-kernel-ext/build.py --check         # only compile every source, for every arch
    python sgl-kernel-ext/build.py --arch 90 --out /tmp/lib.so --nvcc /usr/local/cuda/bin/nvcc

nvcc is looked for in this order: --nvcc, $NVCC, $CUDA_HOME/bin/nvcc, PATH, then the
nvidia-cuda-nvcc pip wheel of the running Python. Without one the script prints a
"skipped" line and exits 0: the extension is optional.

The library links the CUDA runtime statically and does not link the driver: it
opens libcuda.so.1 itself at the first green-context call, so it loads anywhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
LIB_NAME = "libdrift_sgl_ext.so"
DEFAULT_OUT = HERE / "build" / LIB_NAME
#: One cubin per major architecture runs on its minor versions (sm_80 on 8.6/8.9, ...);
#: the newest one is also embedded as PTX for GPUs newer than all of them.
DEFAULT_ARCHS = (80, 90, 100, 120)
#: Relative to the ``nvidia`` namespace package of the pip wheels.
WHEEL_NVCC = ("cu13/bin/nvcc", "cuda_nvcc/bin/nvcc")
WHEEL_INCLUDE = ("cu13/include", "cuda_runtime/include", "cuda_nvcc/include")
NVCC_SEARCH = "--nvcc, $NVCC, $CUDA_HOME/bin/nvcc, PATH, nvidia-cuda-nvcc wheel"


def wheel_roots() -> list[Path]:
    """Directories of the ``nvidia`` namespace package (pip CUDA wheels), if installed."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def find_nvcc(explicit: str | None = None) -> tuple[Path, str] | None:
    """The nvcc to use and where it was found, or None."""
    if explicit:
        return Path(explicit), "--nvcc"
    candidates: list[tuple[str | None, str]] = [(os.environ.get("NVCC"), "$NVCC")]
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home:
        candidates.append((str(Path(cuda_home) / "bin" / "nvcc"), "$CUDA_HOME"))
    candidates.append((shutil.which("nvcc"), "PATH"))
    for root in wheel_roots():
        candidates += [(str(root / rel), "nvidia-cuda-nvcc wheel") for rel in WHEEL_NVCC]
    for path, how in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return Path(path), how
    return None


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


def nvcc_version(nvcc: Path) -> str:
    """``13.5`` etc. from ``nvcc --version`` (``?`` if it cannot be read)."""
    match = re.search(r"release (\d+\.\d+)", _run([str(nvcc), "--version"]).stdout)
    return match.group(1) if match else "?"


def nvcc_home(nvcc: Path) -> Path:
    """The toolkit's bin directory as nvcc itself sees it (follows wrapper scripts)."""
    out = _run([str(nvcc), "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull])
    match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return Path(match.group(1).strip()) if match else nvcc.resolve().parent


def find_include(nvcc: Path) -> tuple[Path | None, bool]:
    """Directory holding cuda.h, and whether nvcc needs it passed with -I.

    nvcc already searches its own toolkit's include directory; only a cuda.h
    from elsewhere (a pip wheel beside a bare nvcc) has to be added.
    """
    top = nvcc_home(nvcc).parent
    for own in [top / "include", *sorted(top.glob("targets/*/include"))]:
        if (own / "cuda.h").is_file():
            return own, False
    for root in wheel_roots():
        for rel in WHEEL_INCLUDE:
            if (root / rel / "cuda.h").is_file():
                return root / rel, True
    return None, False


def supported_archs(nvcc: Path) -> set[int] | None:
    """Architectures this nvcc can compile for (None if it cannot list them)."""
    out = _run([str(nvcc), "--list-gpu-arch"])
    archs = {int(m) for m in re.findall(r"compute_(\d+)\b", out.stdout)}
    return archs if out.returncode == 0 and archs else None


def parse_archs(text: str) -> list[int]:
    """``"80,sm_90, 100"`` -> ``[80, 90, 100]``."""
    archs = []
    for item in text.split(","):
        item = item.strip().removeprefix("sm_").removeprefix("compute_")
        if not item.isdigit():
            raise argparse.ArgumentTypeError(f"bad architecture {item!r}: use numbers like 90")
        archs.append(int(item))
    return sorted(set(archs))


def gencode_flags(archs: list[int], ptx: bool) -> list[str]:
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    if ptx:
        flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def common_flags(include: Path | None, add_include: bool) -> list[str]:
    flags = [
        "-std=c++17",
        "-O2",
        "--threads",
        "0",
        "-Xcompiler",
        "-fPIC,-fvisibility=hidden,-Wall,-Wextra",
    ]
    if include is not None and add_include:
        flags.append(f"-I{include}")
    return flags


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cu"))


def object_file(objdir: Path, src: Path) -> Path:
    """Where ``compile_objects`` puts ``src``'s object, and where the link reads it."""
    return objdir / f"{src.stem}.o"


def compile_objects(
    nvcc: Path, cflags: list[str], objdir: Path
) -> list[tuple[Path, subprocess.CompletedProcess[str]]]:
    """Compile every source to its ``object_file`` in ``objdir``, the sources in parallel."""

    def compile_one(src: Path) -> subprocess.CompletedProcess[str]:
        return _run([str(nvcc), *cflags, "-c", str(src), "-o", str(object_file(objdir, src))])

    with ThreadPoolExecutor() as pool:
        return list(zip(sources(), pool.map(compile_one, sources()), strict=True))


def report_failures(results: list[tuple[Path, subprocess.CompletedProcess[str]]]) -> int:
    """Print each source's compiler output; 1 if any failed."""
    failed = 0
    for src, proc in results:
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            print(f"sgl-kernel-ext: compiling {src.name} failed:\n{output}")
            failed = 1
        elif output:
            print(f"sgl-kernel-ext: {src.name}:\n{output}")
    return failed


def check(nvcc: Path, archs: list[int], flags: list[str]) -> int:
    """Compile every source to an object file (in a temporary directory), keep nothing."""
    with tempfile.TemporaryDirectory(prefix="drift-ext-check-") as tmp:
        results = compile_objects(nvcc, [*flags, *gencode_flags(archs, ptx=False)], Path(tmp))
    for src, proc in results:
        if proc.returncode == 0:
            print(f"sgl-kernel-ext: {src.name}: ok")
    return report_failures(results)


def build(nvcc: Path, archs: list[int], flags: list[str], out: Path) -> int:
    """Compile the sources, then link the shared library (written atomically to ``out``).

    Two steps because nvcc's device link runs one nvlink per architecture and, under
    ``--threads``, runs them at once on one shared registration file: one of them
    now and then fails with "Could not read file ..._dlink.reg.c". The compile step
    keeps ``--threads`` (it has no device link); the link step runs without it.
    """
    gencode = gencode_flags(archs, ptx=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="drift-ext-build-") as objdir:
        results = compile_objects(nvcc, [*flags, *gencode], Path(objdir))
        if report_failures(results):
            return 1
        cmd = [
            str(nvcc), *gencode,
            "-shared", "-cudart", "static",
            # Keep the static runtime's symbols private (torch has its own libcudart),
            # and fail at link time on anything unresolved.
            "-Xlinker", "--exclude-libs,ALL", "-Xlinker", "--no-undefined",
            "-Xlinker", f"-soname,{LIB_NAME}",
            *(str(object_file(Path(objdir), src)) for src in sources()), "-ldl", "-o", str(tmp),
        ]  # fmt: skip
        proc = _run(cmd)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        print(f"sgl-kernel-ext: link failed:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        return 1
    # A rename, not an overwrite: a running process may have the old one mapped.
    tmp.replace(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only compile, keep nothing")
    parser.add_argument(
        "--arch",
        type=parse_archs,
        default=list(DEFAULT_ARCHS),
        help="comma-separated SM architectures (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="library to write")
    parser.add_argument("--nvcc", help="nvcc to use")
    args = parser.parse_args(argv)

    found = find_nvcc(args.nvcc)
    if found is None:
        print(f"sgl-kernel-ext: skipped: no nvcc found ({NVCC_SEARCH})")
        return 0
    nvcc, how = found
    if not nvcc.is_file():
        print(f"sgl-kernel-ext: --nvcc {nvcc} does not exist")
        return 2
    print(f"sgl-kernel-ext: nvcc {nvcc} (CUDA {nvcc_version(nvcc)}, from {how})")

    archs = args.arch
    supported = supported_archs(nvcc)
    if supported is not None:
        dropped = [a for a in archs if a not in supported]
        archs = [a for a in archs if a in supported]
        if dropped:
            names = ", ".join(f"sm_{a}" for a in dropped)
            print(f"sgl-kernel-ext: note: dropped {names} (not supported by this nvcc)")
    if not archs:
        print("sgl-kernel-ext: none of the requested architectures is supported by this nvcc")
        return 1

    include, add_include = find_include(nvcc)
    if include is None:
        print("sgl-kernel-ext: note: no cuda.h found beside nvcc or in the pip wheels")
    else:
        print(f"sgl-kernel-ext: cuda.h from {include}")
    flags = common_flags(include, add_include)

    print(f"sgl-kernel-ext: archs {', '.join(f'sm_{a}' for a in archs)}")
    start = time.monotonic()
    if args.check:
        rc = check(nvcc, archs, flags)
        what = f"checked {len(sources())} sources"
    else:
        rc = build(nvcc, archs, flags, args.out)
        what = f"built {args.out}"
    if rc == 0:
        print(f"sgl-kernel-ext: {what} in {time.monotonic() - start:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
