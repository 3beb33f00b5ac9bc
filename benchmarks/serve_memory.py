"""Resident memory of a real `oprm serve` process over many requests on distinct long documents.

Starts `oprm serve` (the shipped model by default) with a document-cache budget, sends one warm-up request of the
same size, then ``--requests`` chat requests, each on a distinct synthetic document of ``--kb`` KB (``<document>``
block + question), one at a time. Reads the server's resident memory (VmRSS), high-water mark (VmHWM) and CPU time from
/proc/PID after the warm-up and after every ``--every`` requests, and the bytes and number of documents its cache
holds from /metrics (when prometheus-client is installed). Prints one JSON object, then a markdown table.

Target (issue 22): RSS after the last request - RSS after the warm-up <= the cache budget + 10 %. Also reported,
stricter: the warm-up's own document sits in the cache, so counting it as cache rather than baseline, RSS after the
last request - (RSS after the warm-up - the states cached then) against the same 1.1 x budget.

    .venv/bin/python benchmarks/serve_memory.py [--requests 100] [--kb 100] [--budget-mib 256] [--chunk-size 128]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, os.pardir, "src"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(line.split()[1]) / 1024, 1)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_seconds"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)  # utime + stime
    return out


def cache_mib(port: int) -> dict:
    """The bytes and number of documents the engine's cache holds, from /metrics (empty without prometheus-client)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    found = {name: float(m.group(1)) for name in ("oprm_document_cache_bytes", "oprm_document_cache_documents")
             if (m := re.search(rf"^{name} (\S+)$", text, re.M))} if response.status == 200 else {}
    out = {}
    if "oprm_document_cache_bytes" in found:
        out["cache_mib"] = round(found["oprm_document_cache_bytes"] / 2**20, 1)
    if "oprm_document_cache_documents" in found:
        out["cached_documents"] = int(found["oprm_document_cache_documents"])
    return out


def post(port: int, body: dict, timeout: float = 600) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read().decode())
    conn.close()
    return response.status, data


def documents(n: int, kb: int, seed: int):
    """``n`` distinct (text, question) pairs of about ``kb`` KB each (synthetic AR texts)."""
    sys.path.insert(0, SRC)
    from oprm.synthetic.ar import make_ar_episode

    rng = random.Random(seed)
    for _ in range(n):
        parts, size = [], 0
        while size < kb * 1000:
            ep = make_ar_episode(rng, 40)
            parts.append(ep.context)
            size += len(ep.context) + 2
        yield "\n\n".join(parts), ep.question


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--kb", type=int, default=100)
    parser.add_argument("--budget-mib", type=int, default=256, help="--document-cache-bytes in MiB (default 256)")
    parser.add_argument("--model", default="oprm-ar-mamba2")
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--selection", default="support", help="the server's --selection (default: the server's "
                                                               "default, support)")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    budget = args.budget_mib * 2**20
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SRC, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("OPRM_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "oprm", "serve", "--model", args.model, "--port", str(port), "--chunk-size",
           str(args.chunk_size), "--selection", args.selection, "--document-cache-bytes", str(budget),
           "--max-new-tokens", "8", "--max-document-bytes", str(2 * args.kb * 1000), "--threads", "1"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its server
    try:
        for _ in range(600):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
        # warm-up: one request of the same size (its prefill's working memory is the baseline; its document is
        # in the cache from then on, within the budget like the others)
        warm_text, warm_question = next(documents(1, args.kb, args.seed + 1))
        status, _ = post(port, {"model": args.model, "messages": [
            {"role": "user", "content": f"<document>{warm_text}</document>\n{warm_question}"}]})
        assert status == 200, status
        rows = [{"requests": 0, **memory_mib(server.pid), **cache_mib(port)}]
        statuses = []
        for i, (text, question) in enumerate(documents(args.requests, args.kb, args.seed), 1):
            status, body = post(port, {"model": args.model, "messages": [
                {"role": "user", "content": f"<document>{text}</document>\n{question}"}]})
            statuses.append(status)
            if status != 200:
                raise SystemExit(f"request {i}: {status} {body}")
            if i % args.every == 0 or i == args.requests:
                rows.append({"requests": i, **memory_mib(server.pid), **cache_mib(port)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    growth = rows[-1]["VmRSS"] - rows[0]["VmRSS"]
    base = rows[0]["VmRSS"] - rows[0].get("cache_mib", 0.0)  # stricter: the warm-up's document counted as cache
    above = rows[-1]["VmRSS"] - base
    report = {"model": args.model, "chunk_size": args.chunk_size, "selection": args.selection, "kb": args.kb,
              "requests": args.requests, "budget_mib": args.budget_mib,
              "rss_growth_since_warmup_mib": round(growth, 1), "growth_vs_budget": round(growth / args.budget_mib, 3),
              "target_met": growth <= 1.1 * args.budget_mib, "strict_baseline_mib": round(base, 1),
              "strict_rss_above_baseline_mib": round(above, 1), "strict_vs_budget": round(above / args.budget_mib, 3),
              "strict_max_above_baseline_mib": round(max(r["VmRSS"] for r in rows) - base, 1),
              "strict_target_met": above <= 1.1 * args.budget_mib, "rows": rows}
    print(json.dumps(report, indent=2))
    print()
    print("| requests | RSS (MiB) | RSS - after warm-up | RSS - strict baseline | cache (MiB, documents) | high-water "
          "(MiB) | server CPU s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cached = f"{row['cache_mib']:.0f}, {row.get('cached_documents', '?')}" if "cache_mib" in row else "?"
        print(f"| {row['requests']} | {row['VmRSS']:.0f} | {row['VmRSS'] - rows[0]['VmRSS']:.0f} | "
              f"{row['VmRSS'] - base:.0f} | {cached} | {row['VmHWM']:.0f} | {row['cpu_seconds']:.0f} |")


if __name__ == "__main__":
    main()
