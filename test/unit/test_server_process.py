"""ServerProcess: start a server in its own process group, wait for /health, stop it whole."""

import os
import sys
import textwrap
import time
import urllib.request

import psutil
import pytest

from drift_sgl.tools.server_process import (
    ServerProcess,
    ServerStartError,
    free_port,
    python_module_command,
)

# Serves /health with the given status, after starting a long-lived child.
SERVER_SCRIPT = textwrap.dedent(
    """
    import http.server, subprocess, sys
    port, status, refusals = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    child = subprocess.Popen(["sleep", "300"])
    print("child-pid", child.pid, flush=True)
    flushes = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.answer(status if self.path == "/health" else 404)

        def do_POST(self):
            # /flush_cache refuses the first `refusals` calls, as SGLang does
            # while requests are in flight; it wants the bearer key "k".
            flushes.append(self.headers.get("Authorization"))
            ok = self.path == "/flush_cache" and flushes[-1] == "Bearer k"
            self.answer(200 if ok and len(flushes) > refusals else 400)

        def answer(self, code):
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def server_command(port, status=200, refusals=2):
    return [sys.executable, "-c", SERVER_SCRIPT, str(port), str(status), str(refusals)]


def child_pid(server):
    for line in server.log_path.read_text().splitlines():
        if line.startswith("child-pid "):
            return int(line.split()[1])
    raise AssertionError(f"no child pid in log:\n{server.log_tail()}")


def gone(pid, within_s=5.0):
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as exited)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def group_gone(pgid, within_s=5.0):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_a_valid_port():
    ports = {free_port() for _ in range(5)}
    assert all(isinstance(p, int) and 1024 <= p <= 65535 for p in ports)


def test_url():
    assert ServerProcess(["true"], 4321, "unused.log").url == "http://127.0.0.1:4321"


def test_python_module_command():
    assert python_module_command("a.b", "--x", "1") == [sys.executable, "-m", "a.b", "--x", "1"]


def test_start_serves_and_stop_kills_the_whole_group(tmp_path):
    port = free_port()
    server = ServerProcess(server_command(port), port, tmp_path / "logs" / "server.log")
    with server:
        assert server.alive()
        with urllib.request.urlopen(server.url + "/health", timeout=5) as resp:
            assert resp.status == 200
        pgid = server.proc.pid
        assert os.getpgid(pgid) == pgid  # its own process group
        assert os.getpgid(os.getpid()) != pgid
        child = child_pid(server)
        assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        assert os.getpgid(child) == pgid
        leader = server.proc
    assert server.proc is None and not server.alive()
    assert leader.returncode is not None
    assert gone(child), "child of the server survived stop()"
    assert group_gone(pgid)
    server.stop()  # stopping twice is harmless


def test_command_that_exits_raises_with_log_tail(tmp_path):
    script = "import sys; print('fatal: no model here', flush=True); sys.exit(3)"
    server = ServerProcess([sys.executable, "-c", script], free_port(), tmp_path / "exit.log")
    with pytest.raises(ServerStartError) as info:
        server.start(timeout_s=30)
    message = str(info.value)
    assert "code 3" in message
    assert "fatal: no model here" in message


def test_never_healthy_server_times_out_and_is_stopped(tmp_path):
    port = free_port()
    server = ServerProcess(server_command(port, status=503), port, tmp_path / "sick.log")
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready") as info:
        server.start(timeout_s=2)
    assert time.monotonic() - started < 20
    assert "child-pid" in str(info.value)  # the log tail
    assert server.proc is None  # start() stopped it
    assert gone(child_pid(server))


def test_api_key_is_sent(tmp_path):
    script = textwrap.dedent(
        """
        import http.server, sys
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ok = self.headers.get("Authorization") == "Bearer k3y"
                self.send_response(200 if ok else 401)
                self.end_headers()
        http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
        """
    )
    port = free_port()
    command = [sys.executable, "-c", script, str(port)]
    with ServerProcess(command, port, tmp_path / "key.log", api_key="k3y") as server:
        assert server.alive()
    with pytest.raises(ServerStartError):
        ServerProcess(command, port, tmp_path / "nokey.log").start(timeout_s=2)


def test_flush_cache_retries_until_the_server_accepts(tmp_path):
    port = free_port()
    with ServerProcess(server_command(port), port, tmp_path / "s.log", api_key="k") as server:
        started = time.monotonic()
        server.flush_cache(timeout_s=10)  # refused twice, then accepted
        assert time.monotonic() - started >= 0.9  # two 0.5 s waits


def test_flush_cache_gives_up_with_the_last_answer(tmp_path):
    port = free_port()
    command = server_command(port, refusals=10**6)
    server = ServerProcess(command, port, tmp_path / "s.log", api_key="k")
    with server, pytest.raises(RuntimeError, match="flush_cache never succeeded: 400"):
        server.flush_cache(timeout_s=1)
