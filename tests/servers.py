"""Real `oprm serve` processes for the tests: this checkout's oprm on a free port, started, awaited and stopped."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port

import oprm

START_SECONDS = 120  # start-up allowance (loading a model on a loaded machine), not a timing assert


def subprocess_env() -> dict:
    """The environment of a test's child process: this checkout's oprm first, one thread, offline, no inherited
    API key."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("OPRM_API_KEY", None)
    env["PYTHONPATH"] = str(Path(oprm.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def start_server(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """`oprm serve ARGS` on a free port, once its /health answers: (process, port). The caller stops it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "oprm", "serve", "--port", str(port), *args],
                            env=env or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + START_SECONDS
    while not healthy(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"oprm serve did not start:\n{proc.stdout.read()}")
        time.sleep(0.3)
    return proc, port


def stop_server(proc: subprocess.Popen) -> str:
    """Terminate the server; its whole output."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@contextlib.contextmanager
def running_server(args: list[str], env: dict | None = None):
    """A real server for the block: (port, process); its output must hold no traceback (no request may crash it)."""
    proc, port = start_server(args, env)
    try:
        yield port, proc
    finally:
        out = stop_server(proc)
    assert "Traceback" not in out, out
