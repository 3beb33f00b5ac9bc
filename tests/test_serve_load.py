"""`oprm serve` under load, as a real process: graceful shutdown on SIGTERM, and refusal while draining."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from oprm.synthetic.ar import make_ar_episode  # noqa: E402
from servers import start_server  # noqa: E402
from test_serve import MODEL, health  # noqa: E402


def start_model_server(*extra: str):
    return start_server(["--model", MODEL, "--chunk-size", "128", "--max-tokens-limit", "100000", *extra])


def open_stream(port: int, max_tokens: int):
    ep = make_ar_episode(3, 5)
    body = {"model": MODEL, "messages": [{"role": "user", "content": ep.question}], "stream": True,
            "max_tokens": max_tokens, "oprm": {"context": ep.context, "ignore_eos": True}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # the answer has begun
    return conn, response


def read_events(response) -> list[str]:
    events = []
    for line in iter(response.readline, b""):
        if line.startswith(b"data: "):
            events.append(line[6:].decode().strip())
    return events


def test_sigterm_finishes_running_requests_then_exits_0():
    """SIGTERM while two answers stream: both finish whole (every token, then [DONE]), the listening socket closes
    (a new client is refused), and the process exits 0."""
    proc, port = start_model_server("--max-running", "2")
    try:
        streams = [open_stream(port, 300) for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        for conn, response in streams:
            events = read_events(response)
            assert events[-1] == "[DONE]"
            last = json.loads(events[-2])
            assert last["choices"][0]["finish_reason"] == "length"
            conn.close()
        assert proc.wait(60) == 0
        out = proc.stdout.read()
        assert "shutting down: finishing 2 running" in out and "Traceback" not in out
        with pytest.raises(OSError):
            health(port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_is_bounded_by_the_shutdown_timeout():
    """An answer that would stream 100000 tokens does not hold a stopping server past --shutdown-timeout: the
    process exits 0 soon after, the stream cut."""
    proc, port = start_model_server("--shutdown-timeout", "1")
    try:
        conn, response = open_stream(port, 100_000)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        events = read_events(response)
        assert "[DONE]" not in events
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()


class _FakeEngine:
    class model:
        generation_config = None


def test_a_draining_worker_answers_503_with_retry_after():
    from oprm.serve.plan import APIError, Plan
    from oprm.serve.worker import EngineWorker, Job

    async def submit():
        worker = EngineWorker(_FakeEngine(), max_queue=4)
        worker.drain()
        with pytest.raises(APIError) as refused:
            worker.submit(Job(Plan("chat", MODEL, {}), asyncio.get_running_loop()))
        return worker, refused.value

    worker, error = asyncio.run(submit())
    assert error.status == 503 and error.code == "shutting_down" and error.headers["Retry-After"]
    assert worker.status()["rejected"] == 1 and worker.status()["draining"]


def test_soak_malformed_and_dropped_clients():
    """A bounded soak through benchmarks/serve_load.py's client: 150 requests from 12 clients, 10 % malformed and
    10 % dropped mid-stream, the rest answered (documents from a pool, so hits and misses, and plain chat): no 5xx,
    every good request answered whole, every malformed one a 4xx, the dropped ones cancelled, nothing left running."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import serve_load

    server = serve_load.Server(MODEL, 128, 8, ["--max-new-tokens", "16"], 1)
    try:
        report = serve_load.soak(server, MODEL, 150, 12)
        deadline = time.monotonic() + 60
        while (h := health(server.port))["running"] or h["queued"]:
            assert time.monotonic() < deadline, h
            time.sleep(0.1)
    finally:
        server.stop()
    assert report["5xx"] == 0 and report["incomplete"] == 0, report
    kinds = report["by_kind"]
    assert kinds["bad"] > 0 and kinds["drop"] > 0
    assert h["failed"] == 0 and h["refused"] == 0 and h["cancelled"] >= 1
    # a dropped request was cancelled, or had already finished (an all-IDK answer needs no decoding)
    assert h["cancelled"] + h["completed"] == kinds["drop"] + kinds["good"], (json.dumps(h), kinds)
    assert server.proc.returncode == 0


def test_replicas_share_a_cache_folder():
    """benchmarks/serve_load.py's replicas scenario, tiny: 2 servers sharing a --cache-dir, 2 documents x 3
    questions, one request after another. Sticky routing (by the document's hash) answers every request after a
    document's first from the replica's memory; round robin sends some to the replica that did not encode the
    document, which finds it in the shared folder instead of encoding it again; each answer is the same either way."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import serve_load

    args = argparse.Namespace(model=MODEL, shared_requests=6, replica_documents=2, replicas=2, server_arg=[],
                              chunk_size=128, max_running=8, threads=1, replica_concurrency=1)
    report = serve_load.replicas(args)
    sticky, robin = report["sticky"], report["round-robin"]
    for policy in (sticky, robin):
        assert [r["cache"] for r in policy["results"][:2]] == ["miss", "miss"], policy["results"]
        assert policy["hit_rate_after_first"] == 1.0
    assert sticky["after_first"] == {"hit": 4, "disk": 0, "miss": 0}
    assert robin["after_first"]["disk"] >= 1 and robin["requests_per_replica"] == [3, 3]
    assert report["answers"] == {"identical": 6, "of": 6}
