"""Sum up ``oprm bench --threads 1,2`` runs: one row per model and mode, 1 vs 2 threads. Writes JSON, prints a table.

    python benchmarks/threads_summary.py docs/bench/threads [--machine "2 vCPUs, idle"]

Reads ``<folder>/<model>/bench.json`` (one per model, as the commands in ``docs/bench/threads/README.md`` write
them) and writes ``<folder>/threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, os.pardir, "src")))

from oprm.report import markdown_table  # noqa: E402

FIELDS = ("ttft_s", "prefill_tok_s", "decode_tok_s")


def summarize(bench: dict) -> list[dict]:
    by_key = {(c["mode"], c["threads"]): c for c in bench["summary"]}
    rows = []
    for mode in dict.fromkeys(m for m, _ in by_key):
        one, two = by_key.get((mode, 1)), by_key.get((mode, 2))
        if one is None or two is None:
            continue
        row = {"model": bench["meta"]["model"], "family": one.get("family"), "mode": mode, "N": one["length"],
               "chunk_size": one["chunk_size"], "runs_per_thread_count": one["repeats"],
               "load_average_at_start": bench["meta"].get("load_average")}
        for field in FIELDS:
            row[f"{field}_1t"], row[f"{field}_2t"] = round(one[field], 3), round(two[field], 3)
        row["prefill_speedup_2t"] = round(two["prefill_tok_s"] / one["prefill_tok_s"], 2)
        row["decode_speedup_2t"] = round(two["decode_tok_s"] / one["decode_tok_s"], 2)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--machine", default=None, help="what the machine was doing during the runs (written to the JSON)")
    args = ap.parse_args()
    if not os.path.isdir(args.folder):
        ap.error(f"not a folder: {args.folder}")
    rows = []
    for name in sorted(os.listdir(args.folder)):
        path = os.path.join(args.folder, name, "bench.json")
        if os.path.isfile(path):
            with open(path) as f:
                bench = json.load(f)
            rows += summarize(bench)
    with open(os.path.join(args.folder, "threads.json"), "w") as f:
        json.dump({"machine": args.machine, "rows": rows}, f, indent=1)
        f.write("\n")
    print(markdown_table(
        ["model", "family", "mode", "TTFT s 1 / 2 threads", "prefill tok/s 1 / 2 threads",
         "decode tok/s 1 / 2 threads", "2 threads: prefill, decode speed"],
        [[r["model"], r["family"], r["mode"], f"{r['ttft_s_1t']:.2f} / {r['ttft_s_2t']:.2f}",
          f"{r['prefill_tok_s_1t']:,.0f} / {r['prefill_tok_s_2t']:,.0f}",
          f"{r['decode_tok_s_1t']:.1f} / {r['decode_tok_s_2t']:.1f}",
          f"{r['prefill_speedup_2t']:.2f}×, {r['decode_speedup_2t']:.2f}×"] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
