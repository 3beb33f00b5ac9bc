"""``oprm serve`` under load, in the manner of vLLM's ``benchmark_serving.py``: a real server process, a client that
replays a mix of requests one after another and then at a given concurrency, with continuous batching on
(``--max-running 8``) and off (``--max-running 1``) side by side.

Scenarios (``--scenario``, repeatable):

* ``chat``: plain chat (no document), ``--requests`` different prompts x ``--max-tokens`` greedy tokens (eos ignored);
* ``documents``: distinct ~20K-character associative-recall documents (the document cache off, so every request
  encodes its document in both phases);
* ``shared``: ``--shared-requests`` questions on 4 shared documents, a fresh server: a miss alone, the other first
  requests per document at once (misses), then hits one by one and the rest at once: the hit rate after the first
  request per document, and the hits' TTFT against the misses' (alone against alone, at once against at once);
* ``soak``: ``--soak-requests`` (1000) from ``--soak-concurrency`` (16) clients, 10 % malformed and 10 % dropped
  mid-stream: 5xx count, incomplete answers, the server's resident memory (batching on only);
* ``append``: a document, then the same with ~1 % more text appended, with token and with sentence chunking: the
  chunks re-encoded and the server's CPU seconds of each (batching on only);
* ``fairness``: one long document (~80K characters) and then short questions 0.2 s later: do the short ones get
  their first token before the long one finishes?
* ``replicas``: ``--replicas`` (2) servers sharing one fresh ``--cache-dir``, the ``shared`` requests (the first per
  document, then the rest shuffled) routed by the client, the load balancer, ``sticky`` (the SHA-256 of the document
  text mod R) and ``round-robin``, fresh servers and folder each: per request where its document came from as the
  answering replica says (its memory, the shared folder, or encoded), the hit rate after the first request per
  document, TTFT p50 per source, and the replicas' CPU seconds (batching on only).

Per phase it prints requests/s, output tokens/s, TTFT and inter-token latency (ITL) p50/p99, and the server's CPU
seconds (user+system of its process: on a shared machine the fairer cost); per scenario whether every concurrent
answer equals its one-after-another answer, and where one does not, the first differing token with the top-2
logprob margin of the answer served alone (float noise is a margin of a rounding step, never silent).

    python benchmarks/serve_load.py --model smollm2 --scenario chat --requests 8 --max-tokens 64
    python benchmarks/serve_load.py --model oprm-ar-mamba2 --scenario documents --scenario shared --scenario fairness
    python benchmarks/serve_load.py --model oprm-ar-mamba2 --scenario replicas --replicas 2

Writes one JSON object with every number to ``--output`` (default: stdout only).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, os.pardir, "src"))
sys.path.insert(0, SRC)

CHAT_PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a rainbow forms.",
                "List some tips for learning a new language.", "Describe the water cycle to a child.",
                "What makes a good cup of tea?", "Write a poem about autumn leaves.",
                "How do airplanes stay in the air?", "Give advice to a new programmer.",
                "Describe a busy market in the morning.", "Why do cats purr?", "Explain what a black hole is.",
                "Write a letter to a friend about a trip to the mountains.", "How does a compass work?",
                "Describe the taste of a ripe mango.", "What are the benefits of walking every day?",
                "Tell me about the history of bicycles."]


# --- the server -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, chunk_size: int, max_running: int, extra: list[str], threads: int):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
                   OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "oprm", "serve", "--model", model, "--port", str(self.port), "--chunk-size",
               str(chunk_size), "--max-running", str(max_running), "--max-queue", "256", "--threads", str(threads),
               "--max-tokens-limit", "100000", *extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                if get(self.port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"oprm serve did not start:\n{self.proc.stderr.read()}")
            time.sleep(0.3)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024, 1)

    def metrics(self) -> dict:
        values = {}
        for line in get(self.port, "/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def get(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    return r.status, body


def post(port: int, body: dict, timeout: float = 3600) -> dict:
    """One request; streamed bodies are timed: TTFT (first content), the gaps between pieces (ITL), latency."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if not body.get("stream"):
        data = json.loads(r.read())
        conn.close()
        return {"status": r.status, "body": data, "latency": time.perf_counter() - t0}
    if r.status != 200:
        data = r.read()
        conn.close()
        return {"status": r.status, "error": data.decode()[:200]}
    pieces, times, usage, document = [], [], None, {}
    for line in iter(r.readline, b""):
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        if event.get("oprm"):  # oprm.explain: the last event says where the document's states came from
            document = event["oprm"].get("document") or {}
        for choice in event.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                pieces.append(text)
                times.append(time.perf_counter())
    end = time.perf_counter()
    conn.close()
    return {"status": 200, "text": "".join(pieces), "ttft": (times[0] - t0) if times else end - t0,
            "itl": [b - a for a, b in zip(times, times[1:])], "latency": end - t0,
            "tokens": usage["completion_tokens"] if usage else len(pieces), "start": t0, "end": end,
            "cache": document.get("cache")}


OPTIONS: dict = {}  # --selection: per-request engine options of the document scenarios


# --- scenarios ----------------------------------------------------------------------------------------------------
def chat_bodies(model: str, n: int, max_tokens: int) -> list[dict]:
    return [{"model": model, "messages": [{"role": "user", "content": CHAT_PROMPTS[i % len(CHAT_PROMPTS)]
                                           + ("" if i < len(CHAT_PROMPTS) else f" (take {i})")}],
             "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
             "oprm": {"ignore_eos": True}} for i in range(n)]


def ar_body(model: str, episode, question: str | None = None, prefix: str | None = None, **extra) -> dict:
    from oprm.synthetic.ar import AR_TEMPLATE

    return {"model": model, "messages": [{"role": "user", "content": question or episode.question}],
            "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True},
            "oprm": {"context": episode.context, "template": AR_TEMPLATE,
                     "answer_prefix": prefix if prefix is not None else episode.answer_prefix, **OPTIONS, **extra}}


def questions(episode, k: int, rng: random.Random) -> list[tuple[str, str]]:
    """``k`` different questions on one document: its own and others about its recorded facts."""
    out = [(episode.question, episode.answer_prefix)]
    for key, attr, _ in rng.sample(episode.records, min(len(episode.records), 4 * k)):
        the = "" if key[:1].isupper() else "the "
        q = (f"What is the {attr} of {the}{key}?", f"The {attr} of {the}{key} is ")
        if q not in out:
            out.append(q)
        if len(out) == k:
            break
    return out


def document_bodies(model: str, n: int, facts: int = 200, seed: int = 1000) -> list[dict]:
    from oprm.synthetic.ar import make_ar_episode

    return [ar_body(model, make_ar_episode(seed + i, facts)) for i in range(n)]


def shared_bodies(model: str, n: int, documents: int = 4, seed: int = 2000) -> tuple[list[dict], list[int]]:
    from oprm.synthetic.ar import make_ar_episode

    rng = random.Random(seed)
    episodes = [make_ar_episode(seed + d, 200) for d in range(documents)]
    asks = [questions(ep, (n + documents - 1) // documents, rng) for ep in episodes]
    bodies, docs = [], []
    for i in range(n):  # round robin over the documents: the first `documents` requests are the misses
        d = i % documents
        q, prefix = asks[d][i // documents]
        bodies.append(ar_body(model, episodes[d], q, prefix, explain=False))
        docs.append(d)
    return bodies, docs


def soak_request(port: int, kind: str, body: dict) -> dict:
    """One soak request: ``good`` (must be answered whole), ``bad`` (malformed: must be a 4xx) or ``drop`` (a stream
    whose client leaves after its first event)."""
    if kind == "bad":
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/chat/completions", body=body["raw"], headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        conn.close()
        return {"kind": kind, "status": r.status, "complete": 400 <= r.status < 500}
    if kind == "drop":
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        status = r.status
        if status == 200:
            r.readline()
        conn.close()
        return {"kind": kind, "status": status, "complete": status == 200}
    r = post(port, body)
    complete = r["status"] == 200 and bool(r.get("text") is not None) and r.get("tokens", 0) > 0
    return {"kind": kind, "status": r["status"], "complete": complete}


BAD_BODIES = ['{"model": "m", "messages": [', '{"model": "%s", "messages": "hi"}',
              '{"model": "%s", "messages": [{"role": "user", "content": "q"}], "max_tokens": -1}',
              '{"model": "%s", "messages": [{"role": "user", "content": "q"}], "oprm": {"nope": 1}}',
              '{"model": "%s", "messages": [{"role": "user", "content": "q"}], "oprm": {"context": "", "chunk_size": 0}}']


def soak(server: Server, model: str, n: int, concurrency: int) -> dict:
    """``n`` requests from ``concurrency`` clients: 80 % good (documents from a pool of 30, so hits and misses, and
    plain chat), 10 % malformed, 10 % dropped mid-stream; the server's resident memory every 10 % of the way."""
    from oprm.synthetic.ar import make_ar_episode

    rng = random.Random(5)
    pool = [make_ar_episode(5000 + i, 21) for i in range(30)]
    jobs = []
    for i in range(n):
        u = rng.random()
        if u < 0.1:
            jobs.append(("bad", {"raw": rng.choice(BAD_BODIES).replace("%s", model)}))
        elif u < 0.2:
            body = ar_body(model, rng.choice(pool))
            body["max_tokens"], body["oprm"]["ignore_eos"] = 2000, True
            jobs.append(("drop", body))
        elif u < 0.3:
            jobs.append(("good", chat_bodies(model, len(CHAT_PROMPTS), 8)[i % len(CHAT_PROMPTS)]))
        else:
            jobs.append(("good", ar_body(model, rng.choice(pool))))
    rss, done = [], [0]
    lock = threading.Lock()

    def one(job):
        result = soak_request(server.port, *job)
        with lock:
            done[0] += 1
            if done[0] % max(1, n // 10) == 0:
                rss.append(server.rss_mb())
        return result

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool_:
        results = list(pool_.map(one, jobs))
    health = json.loads(get(server.port, "/health")[1])
    fives = sum(r["status"] >= 500 for r in results)
    incomplete = [r for r in results if not r["complete"]]
    after_warmup = rss[1:] or rss
    return {"requests": n, "concurrency": concurrency, "wall_s": round(time.perf_counter() - t0, 1),
            "by_kind": {k: sum(r["kind"] == k for r in results) for k in ("good", "bad", "drop")},
            "5xx": fives, "incomplete": len(incomplete), "statuses": sorted({r["status"] for r in results}),
            "rss_mb": rss, "rss_spread_after_warmup": round(max(after_warmup) / min(after_warmup) - 1, 3)
            if after_warmup else None, "health": health}


def replica_routes(bodies: list[dict], n: int) -> dict[str, list[int]]:
    """The load balancer's two policies: the replica of each request."""
    def digest(body):
        return int(hashlib.sha256(body["oprm"]["context"].encode()).hexdigest(), 16)

    return {"sticky": [digest(b) % n for b in bodies], "round-robin": [i % n for i in range(len(bodies))]}


def replicas(args) -> dict:
    """The ``shared`` requests on ``args.replicas`` servers sharing a cache folder, per routing policy (fresh servers
    and folder each). The first request per document comes first, then the rest shuffled: in ``shared``'s order
    (round robin over the documents) a round-robin balancer with as many replicas as documents, or a divisor of
    them, would send every document to one replica, as sticky does."""
    bodies, docs = shared_bodies(args.model, args.shared_requests, args.replica_documents)
    for body in bodies:
        body["oprm"]["explain"] = True  # the answer's oprm details say where its document's states came from
    k = len(set(docs))
    rest = list(range(k, len(bodies)))
    random.Random(7).shuffle(rest)
    order = list(range(k)) + rest
    bodies, docs = [bodies[i] for i in order], [docs[i] for i in order]
    warm_ups = document_bodies(args.model, args.replicas, seed=99)  # one each: a miss, so each warms its encoding
    out = {}
    for policy, route in replica_routes(bodies, args.replicas).items():
        with tempfile.TemporaryDirectory(prefix="oprm-replicas-") as folder:
            servers = start_replicas(args, [*args.server_arg, "--cache-dir", folder])
            try:
                for server, warm_up in zip(servers, warm_ups):
                    post(server.port, warm_up)
                p = phase(servers, bodies, args.replica_concurrency, route=route)
            finally:
                for server in servers:
                    server.stop()
        out[policy] = {**p, **replica_outcomes(p["results"], docs, route, args.replicas)}
    texts = [[r.get("text") for r in out[policy]["results"]] for policy in out]
    out["answers"] = {"identical": sum(a == b for a, b in zip(*texts)), "of": len(bodies)}  # whatever the source
    return out


def start_replicas(args, extra: list[str]) -> list[Server]:
    """``args.replicas`` servers, started side by side (each loads the model); if one fails, the others stop."""
    with ThreadPoolExecutor(args.replicas) as pool:
        futures = [pool.submit(Server, args.model, args.chunk_size, args.max_running, extra, args.threads)
                   for _ in range(args.replicas)]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        for f in futures:
            if f.exception() is None:
                f.result().stop()
        raise failed[0]
    return [f.result() for f in futures]


def replica_outcomes(results: list[dict], docs: list[int], route: list[int], n: int) -> dict:
    """Where each answer's document came from (``hit``: the replica's memory, ``disk``: the shared folder, ``miss``:
    encoded), after the first request per document, and the TTFT p50 of each."""
    seen, later = set(), []
    for r, d in zip(results, docs):
        if d in seen:
            later.append(r["cache"])
        seen.add(d)
    counts = Counter(later)
    return {"requests_per_replica": [route.count(i) for i in range(n)],
            "after_first": {c: counts.get(c, 0) for c in ("hit", "disk", "miss")},
            "hit_rate_after_first": round((counts["hit"] + counts["disk"]) / len(later), 3) if later else None,
            "ttft_p50_by_source": {c: _r(pct([r["ttft"] for r in results if r["cache"] == c], 0.5))
                                   for c in ("hit", "disk", "miss")}}


# --- measuring ----------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def phase(server: Server | list[Server], bodies: list[dict], concurrency: int, stagger: list[float] | None = None,
          route: list[int] | None = None) -> dict:
    """``bodies`` at ``concurrency``; with several servers (replicas) request i goes to ``server[route[i]]`` and the
    CPU seconds and cache counters are their sums."""
    servers = server if isinstance(server, list) else [server]
    route = route or [0] * len(bodies)
    cpu0, m0 = [s.cpu_seconds() for s in servers], [s.metrics() for s in servers]
    t0 = time.perf_counter()

    def one(i):
        if stagger:
            time.sleep(max(0.0, t0 + stagger[i] - time.perf_counter()))
        return post(servers[route[i]].port, bodies[i])

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(len(bodies))))
    wall = time.perf_counter() - t0
    cpus = [s.cpu_seconds() - c for s, c in zip(servers, cpu0)]
    m1 = [s.metrics() for s in servers]
    cpu = sum(cpus)
    ok = [r for r in results if r["status"] == 200]
    tokens = sum(r["tokens"] for r in ok)
    itl = [x for r in ok for x in r["itl"]]

    def counted(name):
        return sum(b.get(name, 0) - a.get(name, 0) for a, b in zip(m0, m1))

    hits, misses = counted("oprm_document_cache_hits_total"), counted("oprm_document_cache_misses_total")
    return {"concurrency": concurrency, "requests": len(bodies), "ok": len(ok), "wall_s": round(wall, 3),
            "server_cpu_s": round(cpu, 2), "requests_per_s": round(len(ok) / wall, 3),
            **({"replica_cpu_s": [round(c, 2) for c in cpus]} if len(servers) > 1 else {}),
            "output_tokens": tokens, "output_tok_per_s": round(tokens / wall, 2),
            "output_tok_per_cpu_s": round(tokens / cpu, 2) if cpu else None,
            "ttft_p50": _r(pct([r["ttft"] for r in ok], 0.5)), "ttft_p99": _r(pct([r["ttft"] for r in ok], 0.99)),
            "itl_p50": _r(pct(itl, 0.5)), "itl_p99": _r(pct(itl, 0.99)),
            "cache_hits": hits, "cache_misses": misses, "batched_steps": counted("oprm_batched_steps_total"),
            "packed_prefills": counted("oprm_packed_prefills_total"),
            "cache_hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
            "results": results}


def _r(x):
    return None if x is None else round(x, 4)


def divergence(server: Server, body: dict, text: str, reference: str) -> dict:
    """Where ``text`` leaves ``reference`` (both answers to ``body``): the token and the top-2 logprob margin of the
    answer served alone at that token."""
    alone = dict(body, stream=False, logprobs=True, top_logprobs=2)
    alone.pop("stream_options", None)
    r = post(server.port, alone)["body"]
    entries = r["choices"][0]["logprobs"]["content"]
    so_far = ""
    for i, e in enumerate(entries):
        if not text.startswith((so_far + e["token"]).lstrip()):
            top = e["top_logprobs"]
            return {"token_index": i, "token": e["token"], "margin": round(top[0]["logprob"] - top[1]["logprob"], 5)
                    if len(top) > 1 else None}
        so_far += e["token"]
    return {"token_index": len(entries), "margin": None, "note": "differs only after the reference's tokens"}


def compare(server: Server, bodies, first: list[dict], second: list[dict]) -> dict:
    same, diverged = 0, []
    for i, (a, b) in enumerate(zip(first, second)):
        if a.get("text") == b.get("text"):
            same += 1
        else:
            diverged.append({"request": i, **divergence(server, bodies[i], b.get("text", ""), a.get("text", ""))})
    return {"identical": same, "of": len(first), "divergences": diverged}


def run_scenario(name: str, args) -> dict:
    if name == "replicas":  # servers of its own, per policy
        return {"on": replicas(args)}
    model = args.model
    modes = {"on": args.max_running, "off": 1}
    out = {}
    for mode, running in modes.items():
        extra = list(args.server_arg)
        if name == "documents":
            extra += ["--document-cache-bytes", "0"]
        server = Server(model, args.chunk_size, running, extra, args.threads)
        try:
            if name in ("chat", "documents"):  # the same requests one after another, then concurrently
                if name == "chat":
                    bodies, warm_up = chat_bodies(model, args.requests, args.max_tokens), chat_bodies(model, 1, 4)[0]
                else:
                    bodies = document_bodies(model, args.requests, args.document_facts)
                    warm_up = document_bodies(model, 1, args.document_facts, seed=99)[0]
                post(server.port, warm_up)
                seq = phase(server, bodies, 1)
                conc = phase(server, bodies, args.concurrency)
                out[mode] = {"sequential": seq, "concurrent": conc,
                             "answers": compare(server, bodies, seq["results"], conc["results"])}
            elif name == "shared":
                bodies, docs = shared_bodies(model, args.shared_requests)
                post(server.port, document_bodies(model, 1, seed=99)[0])
                k = len(set(docs))  # the first request per document are the misses, the others hits
                alone_miss = phase(server, bodies[:1], 1)
                misses = phase(server, bodies[1:k], k - 1)
                alone_hits = phase(server, bodies[k:2 * k], 1)
                hits = phase(server, bodies[2 * k:], len(bodies) - 2 * k)
                alone_hits["ttft_p50_over_a_miss_alone"] = round(alone_hits["ttft_p50"] / alone_miss["ttft_p50"], 3)
                hits["ttft_p50_over_concurrent_misses_p50"] = round(hits["ttft_p50"] / misses["ttft_p50"], 3)
                out[mode] = {"a miss alone": alone_miss, "misses at once": misses, "hits one by one": alone_hits,
                             "hits at once": hits}
            elif name == "soak":
                if mode == "off":
                    continue
                out[mode] = {"soak": soak(server, model, args.soak_requests, args.soak_concurrency)}
            elif name == "append":
                if mode == "off":
                    continue
                from oprm.synthetic.ar import make_ar_episode

                for chunking in ("tokens", "sentences"):
                    ep = make_ar_episode(4000, args.append_facts)
                    body = ar_body(model, ep, chunking=chunking, explain=True)
                    body.pop("stream_options")
                    body["stream"] = False
                    grown = dict(body, oprm=dict(body["oprm"]))
                    extra_facts = max(1, args.append_facts // 100)
                    grown["oprm"]["context"] = ep.context + " " + " ".join(
                        make_ar_episode(4001, extra_facts + 5).facts[:extra_facts])
                    runs = {}
                    for label, b in (("encode", body), ("append 1 %", grown)):
                        cpu0 = server.cpu_seconds()
                        r = post(server.port, b)
                        details = r["body"]["oprm"]
                        runs[label] = {"latency_s": round(r["latency"], 3),
                                       "server_cpu_s": round(server.cpu_seconds() - cpu0, 2),
                                       "chunks": len(details["chunks"]), "document": details.get("document"),
                                       "characters": len(b["oprm"]["context"]),
                                       "tokens_processed": details["tokens_processed"]}
                    doc = runs["append 1 %"]["document"] or {}
                    runs["re-encoded fraction"] = round(doc.get("encoded_chunks", runs["append 1 %"]["chunks"])
                                                        / runs["append 1 %"]["chunks"], 4)
                    out[f"{mode} / {chunking} chunking"] = runs
            elif name == "fairness":
                from oprm.synthetic.ar import make_ar_episode

                long_body = ar_body(model, make_ar_episode(3000, 800))
                shorts = document_bodies(model, 4, facts=21, seed=3100)
                bodies = [long_body] + shorts
                post(server.port, document_bodies(model, 1, seed=99)[0])
                conc = phase(server, bodies, len(bodies), stagger=[0.0] + [0.2] * len(shorts))
                long_end = conc["results"][0]["end"]
                conc["short_first_token_before_long_ends"] = sum(
                    r["start"] + r["ttft"] < long_end for r in conc["results"][1:])
                conc["long_latency_s"] = _r(conc["results"][0]["latency"])
                conc["short_ttft_max_s"] = _r(max(r["ttft"] for r in conc["results"][1:]))
                out[mode] = {"concurrent": conc}
        finally:
            server.stop()
    return out


def table(report: dict) -> str:
    lines = ["| scenario | batching | phase | req/s | out tok/s | out tok/CPU-s | TTFT p50 | TTFT p99 | ITL p50 | "
             "ITL p99 | cache hits | answers equal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, modes in report["scenarios"].items():
        for mode, phases in modes.items():
            answers = phases.get("answers")
            for label, p in phases.items():
                if label == "answers" or not isinstance(p, dict) or "requests_per_s" not in p:
                    continue
                eq = f"{answers['identical']}/{answers['of']}" if answers and label == "concurrent" else ""
                hits = f"{p['cache_hit_rate']:.0%}" if p["cache_hit_rate"] is not None else ""
                lines.append(f"| {name} | {mode} | {label} x{p['concurrency']} | {p['requests_per_s']} | "
                             f"{p['output_tok_per_s']} | {p['output_tok_per_cpu_s']} | {p['ttft_p50']} | "
                             f"{p['ttft_p99']} | {p['itl_p50']} | {p['itl_p99']} | {hits} | {eq} |")
    policies = report["scenarios"].get("replicas", {}).get("on", {})
    if policies:
        lines += ["", "| replicas: routing | requests per replica | after the first per document: memory hits / "
                  "folder hits / misses | hit rate | TTFT p50 memory hit / folder hit / miss | replicas' CPU s |",
                  "|---|---|---|---|---|---|"]
        for policy, p in policies.items():
            if policy == "answers":
                continue
            n, ttft = p["after_first"], p["ttft_p50_by_source"]
            lines.append(f"| {policy} | {' / '.join(map(str, p['requests_per_replica']))} | {n['hit']} / "
                         f"{n['disk']} / {n['miss']} | {p['hit_rate_after_first']:.0%} | {ttft['hit']} / "
                         f"{ttft['disk']} / {ttft['miss']} | {' + '.join(map(str, p['replica_cpu_s']))} |")
        lines.append(f"\nanswers identical under both policies: {policies['answers']['identical']}/"
                     f"{policies['answers']['of']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--scenario", action="append",
                    choices=("chat", "documents", "shared", "fairness", "append", "soak", "replicas"))
    ap.add_argument("--replicas", type=int, default=2, help="servers of the replicas scenario")
    ap.add_argument("--replica-documents", type=int, default=4, help="documents of the replicas scenario's "
                    "--shared-requests")
    ap.add_argument("--replica-concurrency", type=int, default=1, help="clients of the replicas scenario (1: one "
                    "request after another, so each TTFT is its own work)")
    ap.add_argument("--soak-requests", type=int, default=1000)
    ap.add_argument("--soak-concurrency", type=int, default=16)
    ap.add_argument("--append-facts", type=int, default=2000, help="facts of the append scenario's document "
                    "(2000: ~200K characters)")
    ap.add_argument("--document-facts", type=int, default=200, help="facts of each documents-scenario document (200: "
                    "~20K characters; small ones leave room to pack several requests' prefills in one forward)")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--shared-requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-running", type=int, default=8, help="the batching server's --max-running")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    ap.add_argument("--server-arg", action="append", default=[], help="more `oprm serve` arguments")
    ap.add_argument("--selection", default=None, help="the document requests' oprm.selection (default: the server's)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    if args.selection:
        OPTIONS["selection"] = args.selection
    report = {"model": args.model, "args": vars(args), "scenarios": {}}
    for name in args.scenario or ["chat"]:
        report["scenarios"][name] = run_scenario(name, args)
        print(f"[{name} done]", file=sys.stderr, flush=True)
    for modes in report["scenarios"].values():  # the per-request records stay out of the printed summary
        for phases in modes.values():
            for p in phases.values():
                if isinstance(p, dict) and "results" in p:
                    p["per_request"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                         if k in ("status", "ttft", "latency", "tokens", "cache")}
                                        for r in p.pop("results")]
    print(table(report))
    for name, modes in report["scenarios"].items():
        for mode, phases in modes.items():
            if name in ("append", "soak"):
                print(f"{name} / {mode}: {json.dumps(phases)}")
                continue
            extra = {k: v for label in ("concurrent", "hits one by one", "hits at once")
                     for k, v in phases.get(label, {}).items()
                     if k in ("ttft_p50_over_a_miss_alone", "ttft_p50_over_concurrent_misses_p50",
                              "short_first_token_before_long_ends",
                              "long_latency_s", "short_ttft_max_s")}
            if extra or phases.get("answers", {}).get("divergences"):
                print(f"{name} / batching {mode}: {json.dumps(extra)} "
                      f"divergences: {json.dumps(phases.get('answers', {}).get('divergences', []))}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
