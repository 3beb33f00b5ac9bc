"""What ``oprm serve`` adds to the engine's own time per request, and the ASGI stack's floor. Prints one JSON object.

1. engine: ``OPRM.generate`` in this process on N associative-recall episodes (shipped model, L = 128);
2. server: the same episodes through ``oprm serve`` (a subprocess on a free port), by the official openai client
   and by raw HTTP (http.client, keep-alive), interleaved with 1. per episode; the server runs with --api-key.
   Each response carries the server-side engine time (``oprm.timings.total``, ``"explain": true``), so
   the overhead per request is paired: round trip minus that (the unpaired difference to 1. is reported too,
   and is noisier);
3. request models: CPU time of checking one body (pydantic from the bytes, then the plan), in process;
4. stacks: an empty JSON endpoint on Starlette and on FastAPI, each under uvicorn in its own process, by raw HTTP
   (the floor a framework adds; why oprm serve uses Starlette).

    python benchmarks/serve_overhead.py [--requests 40] [--output docs/bench/serve/serve_overhead.json]

Medians in milliseconds. One torch thread. Other jobs on a shared machine add noise to every number alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, os.pardir, "src"))
MODEL = "oprm-ar-mamba2"
KEY = "bench-key"  # served as it should be: with an API key (the Host and media-type checks run too)

EMPTY_APPS = {
    "starlette": (
        "from starlette.applications import Starlette\n"
        "from starlette.responses import JSONResponse\n"
        "from starlette.routing import Route\n"
        "async def ping(request):\n"
        "    await request.body()\n"
        "    return JSONResponse({'ok': True})\n"
        "app = Starlette(routes=[Route('/ping', ping, methods=['POST'])])\n"),
    "fastapi": (
        "from fastapi import FastAPI, Request\n"
        "app = FastAPI()\n"
        "@app.post('/ping')\n"
        "async def ping(request: Request):\n"
        "    await request.body()\n"
        "    return {'ok': True}\n"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(src: str = SRC) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))


def wait_ready(port: int, path: str, proc, method: str = "GET") -> None:
    deadline = time.time() + 180
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path, body=b"{}" if method == "POST" else None)
            conn.getresponse().read()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start: {proc.args}")
            time.sleep(0.2)


def ms(values) -> float:
    return round(1000 * statistics.median(values), 3)


def episodes(n: int, facts: int):
    from oprm.synthetic.ar import AR_TEMPLATE, make_ar_episode

    out = []
    for seed in range(1000, 1000 + n):
        ep = make_ar_episode(seed, facts)
        out.append(dict(context=ep.context, query=ep.question, template=AR_TEMPLATE, answer_prefix=ep.answer_prefix))
    return out


def body(kw: dict, max_new: int) -> dict:
    return {"model": MODEL, "max_tokens": max_new, "messages": [{"role": "user", "content": kw["query"]}],
            "oprm": {"context": kw["context"], "template": kw["template"], "answer_prefix": kw["answer_prefix"],
                     "explain": True}}


def measure(eps, chunk: int, max_new: int, baseline_src: str | None = None) -> dict:
    """Per episode, interleaved (so load changes hit all three alike): the engine in this process, the server by
    the openai client, the server by raw HTTP (and a baseline server from another source tree, by raw HTTP)."""
    import openai

    from oprm import OPRM

    engine = OPRM.from_pretrained(MODEL, chunk_size=chunk)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "oprm", "serve", "--model", MODEL, "--port", str(port),
                             "--chunk-size", str(chunk), "--api-key", KEY], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    baseline = None
    if baseline_src:  # another checkout's src/ (e.g. before a change), served without a key, same model and options
        base_port = free_port()
        baseline = subprocess.Popen([sys.executable, "-m", "oprm", "serve", "--model", MODEL, "--port",
                                     str(base_port), "--chunk-size", str(chunk)], env=env(baseline_src),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, "/health", proc)
        if baseline is not None:
            wait_ready(base_port, "/health", baseline)
            base_conn = http.client.HTTPConnection("127.0.0.1", base_port, timeout=120)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        out = {"engine": {"time": [], "texts": []}, "openai": {"rtt": [], "engine": [], "texts": []},
               "http": {"rtt": [], "engine": [], "texts": []}}
        if baseline is not None:
            out["baseline_http"] = {"rtt": [], "engine": [], "texts": []}

        def one(kw, record: bool):
            b = body(kw, max_new)
            t = time.perf_counter()
            text = engine.generate(**kw, max_new_tokens=max_new).text
            if record:
                out["engine"]["time"].append(time.perf_counter() - t)
                out["engine"]["texts"].append(text)
            t = time.perf_counter()
            r = client.chat.completions.create(model=MODEL, messages=b["messages"], max_tokens=max_new,
                                               extra_body={"oprm": b["oprm"]})
            if record:
                out["openai"]["rtt"].append(time.perf_counter() - t)
                out["openai"]["engine"].append(r.model_extra["oprm"]["timings"]["total"])
                out["openai"]["texts"].append(r.choices[0].message.content)
            data = json.dumps(b).encode()
            t = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json",
                                                                            "Authorization": f"Bearer {KEY}"})
            answer = json.loads(conn.getresponse().read())
            if record:
                out["http"]["rtt"].append(time.perf_counter() - t)
                out["http"]["engine"].append(answer["oprm"]["timings"]["total"])
                out["http"]["texts"].append(answer["choices"][0]["message"]["content"])
            if baseline is not None:  # asked twice, so it is a document-cache hit as the raw-HTTP request above
                for _ in range(2):
                    t = time.perf_counter()
                    base_conn.request("POST", "/v1/chat/completions", body=data,
                                      headers={"Content-Type": "application/json"})
                    answer = json.loads(base_conn.getresponse().read())
                if record:
                    out["baseline_http"]["rtt"].append(time.perf_counter() - t)
                    out["baseline_http"]["engine"].append(answer["oprm"]["timings"]["total"])
                    out["baseline_http"]["texts"].append(answer["choices"][0]["message"]["content"])

        for kw in eps[:3]:  # warm-up
            one(kw, False)
        for kw in eps:
            one(kw, True)
        return out
    finally:
        for p in (proc, baseline):
            if p is not None:
                p.terminate()
                p.wait(15)


def request_models_us(eps, chunk: int, max_new: int, repeats: int = 2000) -> dict:
    """Process CPU time of checking one request body (pydantic models from the bytes, then the plan), in us: a
    typical body, and one with a 2 MB document (against json.loads alone of the same bytes)."""
    from oprm import OPRMConfig
    from oprm.serve.parser import Parser

    parser = Parser([MODEL], OPRMConfig(chunk_size=chunk), {"max_new_tokens": max_new})
    typical = json.dumps(body(eps[0], max_new)).encode()
    big = json.dumps({**body(eps[0], max_new), "oprm": {"context": "word " * 400_000}}).encode()

    def per_call(fn, data, n):
        t = time.process_time()
        for _ in range(n):
            fn(data)
        return round((time.process_time() - t) / n * 1e6, 1)

    return {"typical_body_bytes": len(typical), "typical_us": per_call(parser.chat, typical, repeats),
            "big_body_bytes": len(big), "big_us": per_call(parser.chat, big, 20),
            "big_json_loads_only_us": per_call(json.loads, big, 20)}


def stack_floor(name: str, requests: int) -> float | None:
    try:
        __import__(name)
    except ImportError:
        return None
    port = free_port()
    code = EMPTY_APPS[name] + f"import uvicorn\nuvicorn.run(app, host='127.0.0.1', port={port}, log_level='error')\n"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env())
    try:
        wait_ready(port, "/ping", proc, method="POST")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times = []
        for i in range(requests + 20):
            t = time.perf_counter()
            conn.request("POST", "/ping", body=b'{"model": "x"}', headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            if i >= 20:  # warm-up
                times.append(time.perf_counter() - t)
        return ms(times)
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--facts", type=int, default=21, help="AR facts per document (21: ~4x the training length)")
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--stack-requests", type=int, default=300)
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.add_argument("--baseline-src", default=None,
                   help="another checkout's src/ folder, served alongside by raw HTTP (interleaved per request)")
    args = p.parse_args()
    sys.path.insert(0, SRC)
    import torch

    torch.set_num_threads(1)
    eps = episodes(args.requests, args.facts)
    served = measure(eps, args.chunk_size, args.max_new_tokens, args.baseline_src)
    engine, engine_texts = served.pop("engine").values()
    report = {
        "what": "median ms per request: oprm serve round trip vs the engine's own time (AR episodes, shipped model)",
        "model": MODEL, "requests": args.requests, "facts": args.facts, "chunk_size": args.chunk_size,
        "max_new_tokens": args.max_new_tokens, "torch_threads": 1, "cpus": os.cpu_count(),
        "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "engine_in_process_ms": ms(engine),
        "answers_equal_engine": all(s["texts"] == engine_texts for s in served.values()),
        "baseline_src": args.baseline_src,
    }
    for client_name, s in served.items():
        paired = [r - e for r, e in zip(s["rtt"], s["engine"])]
        report[client_name] = {"round_trip_ms": ms(s["rtt"]), "server_engine_ms": ms(s["engine"]),
                               "overhead_ms_median": ms(paired),
                               "overhead_ms_p90": round(1000 * sorted(paired)[int(0.9 * (len(paired) - 1))], 3),
                               "round_trip_minus_in_process_engine_ms": round(ms(s["rtt"]) - ms(engine), 3)}
    report["request_models_us"] = request_models_us(eps, args.chunk_size, args.max_new_tokens)
    report["empty_endpoint_ms"] = {name: stack_floor(name, args.stack_requests) for name in EMPTY_APPS}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
