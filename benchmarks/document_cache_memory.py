"""Peak memory of `oprm ask` on one long document: the document cache on (memory), on with a fresh --cache-dir, off.

Each cell runs in a fresh process (``oprm.cli.main`` in a child Python), whose high-water mark of resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own peak, and whose CPU time (user + system) is reported (wall
time means little on a shared machine). The document is a synthetic associative-recall text (``oprm.synthetic.ar``,
seeded) of ``--kb`` kilobytes, asked one question about a fact in it, on the shipped model by default. Prints one JSON
object, then a markdown table. Target (issue 22): the default-cache and --cache-dir cells <= 1.25x the cache-off
peak. A last cell gives the memory cache a budget the document's states fit (``--fit-budget-mib``, 0: no such cell):
it keeps them all, so its peak is the cache-off peak plus the document's states, within that budget.

    .venv/bin/python benchmarks/document_cache_memory.py [--kb 400] [--model oprm-ar-mamba2] [--chunk-size N]
                                                         [--fit-budget-mib 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, os.pardir, "src")

CHILD = """
import json, resource, sys, time
sys.argv = ["oprm"] + json.loads(sys.argv[1])
from oprm.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
peak = usage.ru_maxrss / 1024  # KiB on Linux
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"code": code, "peak_rss_mib": round(peak, 1), "cpu_seconds": round(cpu, 1),
                  "seconds": round(seconds, 2)}), file=sys.stderr)
"""


def make_document(kb: int, seed: int) -> tuple[str, str, str]:
    """(text of about ``kb`` KB, a question on one fact in it, that fact's value): AR episodes' contexts joined."""
    sys.path.insert(0, SRC)
    from oprm.synthetic.ar import make_ar_episode

    rng = random.Random(seed)
    parts, size, asked = [], 0, None
    while size < kb * 1000:
        ep = make_ar_episode(rng, 40)
        parts.append(ep.context)
        size += len(ep.context) + 2
        if asked is None and len(parts) == max(1, kb // 10):  # a fact about a tenth of the way in
            asked = ep
    asked = asked or ep
    return "\n\n".join(parts), asked.question, asked.answer


def run_cell(argv: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"cell failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1])
    result["answer"] = proc.stdout.strip()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=int, default=400, help="document size in KB (default 400)")
    parser.add_argument("--model", default="oprm-ar-mamba2")
    parser.add_argument("--chunk-size", default=None, help="default: the model's measured best")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-budget-mib", type=int, default=2048,
                        help="a last cell with --document-cache-bytes of this many MiB (0: none)")
    args = parser.parse_args()

    text, question, answer = make_document(args.kb, args.seed)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=args.threads)
    env.pop("OPRM_CACHE_DIR", None)
    with tempfile.TemporaryDirectory() as tmp:
        context = os.path.join(tmp, "context.txt")
        with open(context, "w", encoding="utf-8") as f:
            f.write(text)
        base = ["ask", "--model", args.model, "--context", context, "--question", question, "--threads", args.threads]
        if args.chunk_size:
            base += ["--chunk-size", str(args.chunk_size)]
        # the engine's default budget, given: `oprm ask` with one question and no cache folder keeps no memory cache
        cells = {"memory cache (default)": ["--document-cache-bytes", str(2**30)],
                 "fresh --cache-dir": ["--cache-dir", os.path.join(tmp, "cache")],
                 "cache off": ["--document-cache-bytes", "0"]}
        if args.fit_budget_mib:
            cells[f"memory cache, {args.fit_budget_mib} MiB budget"] = ["--document-cache-bytes",
                                                                         str(args.fit_budget_mib * 2**20)]
        rows = {name: run_cell(base + extra, env) for name, extra in cells.items()}
        cache_mib = sum(os.path.getsize(os.path.join(tmp, "cache", n)) for n in os.listdir(os.path.join(tmp, "cache"))
                        ) / 2**20 if os.path.isdir(os.path.join(tmp, "cache")) else 0.0
    off = rows["cache off"]["peak_rss_mib"]
    for row in rows.values():
        row["vs_cache_off"] = round(row["peak_rss_mib"] / off, 3)
    report = {"document_kb": round(len(text.encode()) / 1000, 1), "model": args.model, "chunk_size": args.chunk_size,
              "threads": args.threads, "question": question, "expected": answer,
              "cache_dir_file_mib": round(cache_mib, 1), "cells": rows,
              "target_met": all(rows[name]["vs_cache_off"] <= 1.25 for name in list(rows)[:2])}
    print(json.dumps(report, indent=2))
    print()
    print("| cell | peak RSS (MiB) | x cache off | CPU s | answer |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['peak_rss_mib']:.0f} | {row['vs_cache_off']:.2f} | {row['cpu_seconds']:.0f} | "
              f"{row['answer']} |")


if __name__ == "__main__":
    main()
