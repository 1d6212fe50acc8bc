"""Start a server command in its own process group, wait for it, stop it whole.

Used by the test suite and the benchmarks: SGLang servers spawn several
processes, so they are always stopped through their process group, also when
the caller fails half-way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One HTTP server process (and its children) on 127.0.0.1."""

    def __init__(
        self,
        args: Sequence[str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        api_key: str | None = None,
        health_path: str = "/health",
    ) -> None:
        self.args = list(args)
        self.port = port
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.api_key = api_key
        #: The route that answers 200 once the server serves (a gateway: /readiness).
        self.health_path = health_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> ServerProcess:
        """Start the command and block until its health route answers 200."""
        self.spawn()
        return self.wait_ready(timeout_s)

    def spawn(self) -> ServerProcess:
        """Start the command in its own process group; do not wait."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    self.args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    start_new_session=True,
                )
            except OSError as err:
                raise ServerStartError(f"cannot start {self.args[0]!r}: {err}") from err
        return self

    def wait_ready(self, timeout_s: float = 300.0) -> ServerProcess:
        """Block until the health route answers 200; stop the server if it never does."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}"
                )
            if self._healthy():
                return self
            time.sleep(1.0)
        self.stop()
        raise ServerStartError(
            f"server not ready after {timeout_s:.0f}s; log tail:\n{self.log_tail()}"
        )

    def _healthy(self) -> bool:
        request = urllib.request.Request(self.url + self.health_path)
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def flush_cache(self, timeout_s: float = 120.0) -> None:
        """Empty the server's prefix cache, retrying while it refuses (requests in flight).

        Raises ``RuntimeError`` with the last answer if it never succeeds.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            request = urllib.request.Request(self.url + "/flush_cache", data=b"", method="POST")
            if self.api_key:
                request.add_header("Authorization", f"Bearer {self.api_key}")
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:
                    if resp.status == 200:
                        return
                    last = f"{resp.status} {resp.read()[:300]!r}"
            except urllib.error.HTTPError as err:
                last = f"{err.code} {err.read()[:300]!r}"
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.url}/flush_cache never succeeded: {last}")
            time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; children may linger in the group.
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
        self.proc = None

    def log_tail(self, num_chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text[-num_chars:]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python_module_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def local_server_process(
    module: str,
    model: Path,
    log: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> ServerProcess:
    """``python -m module`` serving ``model`` on a free port of 127.0.0.1 (not started)."""
    port = free_port()
    command = python_module_command(
        module,
        "--model-path", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--skip-server-warmup",
        *args,
    )  # fmt: skip
    return ServerProcess(command, port, log, env=env, api_key=api_key)


def start_local_server(
    module: str,
    model: Path,
    log: Path,
    args: Sequence[str] = (),
    cpu_args: Sequence[str] = (),
    timeout_s: float = 600.0,
) -> ServerProcess:
    """A ``local_server_process`` for a benchmark, started: ``cpu_args`` are added
    when there is no NVIDIA driver, and the environment is ``server_process_env()``."""
    from drift_sgl.cpu.environment import server_process_env
    from drift_sgl.cpu.stub import has_nvidia_driver

    args = (*args, *(() if has_nvidia_driver() else cpu_args))
    server = local_server_process(module, model, log, args, env=server_process_env())
    return server.start(timeout_s=timeout_s)


def drift_kv_pool_drained(server: ServerProcess) -> bool:
    """After a cache flush, whether every KV slot of a drift server is free
    (drift's report in ``/server_info``, first DP rank)."""
    import json

    server.flush_cache()
    request = urllib.request.Request(server.url + "/server_info")
    if server.api_key:
        request.add_header("Authorization", f"Bearer {server.api_key}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        drift = json.loads(resp.read())["internal_states"][0]["drift"]
    return drift["kv_available_tokens"] == drift["kv_total_tokens"]
