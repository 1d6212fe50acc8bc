"""Build and locate the no-device stand-in for ``libcuda.so.1``.

``python -m drift_sgl.cpu.stub`` builds it (``make setup`` runs this); the
launcher builds it on first use if setup did not. It is never used on a
machine that has a real NVIDIA driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

STUB_SONAME = "libcuda.so.1"
_SOURCE = Path(__file__).with_name("libcuda_stub.c")


class StubBuildError(RuntimeError):
    """The stand-in library could not be compiled."""


def has_nvidia_driver() -> bool:
    """True when a real NVIDIA driver is installed (kernel module or libcuda)."""
    if Path("/proc/driver/nvidia").exists():
        return True
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return any(STUB_SONAME in line and "drift-sgl" not in line for line in out.splitlines())


def default_stub_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the stub lives: ``$DRIFT_SGL_STUB_DIR``, the active environment, or the user cache."""
    override = (os.environ if env is None else env).get("DRIFT_SGL_STUB_DIR")
    if override:
        return Path(override)
    prefix_dir = Path(sys.prefix) / "lib" / "drift-sgl"
    if os.access(sys.prefix, os.W_OK):
        return prefix_dir
    return Path.home() / ".cache" / "drift-sgl"


def stub_path(stub_dir: Path | None = None) -> Path:
    """Path of the stand-in library (it may not exist yet)."""
    return (stub_dir or default_stub_dir()) / STUB_SONAME


def build_stub(stub_dir: Path | None = None, compiler: str | None = None) -> Path:
    """Compile the stand-in and return its path; rebuilds only when stale."""
    target = stub_path(stub_dir)
    if target.exists() and target.stat().st_mtime >= _SOURCE.stat().st_mtime:
        return target
    cc = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise StubBuildError(
            "no C compiler found to build the CPU stand-in for libcuda.so.1: "
            "install gcc (e.g. `apt-get install gcc`) and run `make setup` again"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build to a temporary name and rename, so a concurrent start never loads
    # a half-written library.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [
        cc,
        "-shared",
        "-fPIC",
        "-O2",
        f"-Wl,-soname,{STUB_SONAME}",
        str(_SOURCE),
        "-o",
        str(tmp_path),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise StubBuildError(f"cannot run C compiler {cc!r}: {err}") from err
    if proc.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        raise StubBuildError(f"building {target} failed: {proc.stderr.strip()}")
    tmp_path.replace(target)
    return target


def main() -> None:
    """CLI: build the stub and print its path."""
    if has_nvidia_driver():
        print("NVIDIA driver present: the CPU stand-in for libcuda.so.1 is not needed")
        return
    print(build_stub())


if __name__ == "__main__":
    main()
