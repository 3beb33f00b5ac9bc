"""Look-ahead only where it can change the choice (issue 23, item 3): the demo's AR episodes answered with the
default selection, per episode the chosen chunk, the answer, its correctness, the look-ahead tokens decoded and the
CPU time; ``compare`` prints where two runs differ (e.g. before / after a change, or the pruned search against a
look-ahead on every chunk).

    export PYTHONPATH=src OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
    python benchmarks/selection_study_pruning.py run --out after.jsonl                 # the pruned search
    python benchmarks/selection_study_pruning.py run --full --out full.jsonl           # a look-ahead on every chunk
    PYTHONPATH=/path/to/old/src python benchmarks/selection_study_pruning.py run --out before.jsonl
    python benchmarks/selection_study_pruning.py compare before.jsonl after.jsonl full.jsonl
    python benchmarks/selection_study_pruning.py prose --n 2          # SmolLM2, 16K tokens of prose, encoded once

Episodes: ``oprm demo``'s (``oprm eval``'s synthetic AR task, seed 0, the shipped model with oprm's defaults:
sentence chunks of the measured size, support selection, the IDK filter on ``Error``).
"""

from __future__ import annotations

import argparse
import json
import time


def run(args) -> None:
    import torch

    from oprm import OPRM
    from oprm.models import measured_chunk_size
    from oprm.synthetic.ar import AR_TEMPLATE
    from oprm.tasks.synthetic import synthetic_samples, synthetic_task

    torch.set_num_threads(1)
    if args.full:  # a look-ahead on every chunk that passes the first-token IDK filter, as before pruning
        from oprm import lookahead

        lookahead.PRUNE = False
    chunk_size = args.chunk_size or measured_chunk_size(args.model)
    engine = OPRM.from_pretrained(args.model, dtype="float32", chunk_size=chunk_size, idk="Error",
                                  selection=args.selection, document_cache_bytes=0)
    facts = [int(f) for f in args.facts.split(",")]
    samples = synthetic_samples(synthetic_task("ar"), seed=args.seed,
                                options={"ar_num_facts": facts, "samples_per_setting": args.n})
    with open(args.out, "w") as out:
        for s in samples:
            cpu = time.process_time()
            result = engine.generate(context=s["context"], query=s["input"], template=AR_TEMPLATE,
                                     answer_prefix=s["answer_prefix"], max_new_tokens=16)
            row = {"id": s["_id"], "facts": s["setting"]["num_facts"], "chosen": result.chosen,
                   "text": result.text, "correct": s["answers"][0] in result.text, "chunks": len(result.chunks),
                   "looked": sum(c.lookahead_ids is not None for c in result.chunks),
                   "lookahead_tokens": result.lookahead_tokens, "cpu_s": time.process_time() - cpu}
            out.write(json.dumps(row) + "\n")
            out.flush()


def prose(args) -> None:
    """SmolLM2 (--dtype auto) on a secret number in ~16K tokens of Moby-Dick, encoded once; each question asked with a
    look-ahead on every chunk and with the pruned search, twice, interleaved: chosen chunk, answer, CPU seconds."""
    import random

    import torch

    from oprm import OPRM, lookahead
    from oprm.synthetic.niah import make_secret_number_episode

    torch.set_num_threads(1)
    engine = OPRM.from_pretrained("smollm2", chunk_size=2000, document_cache_bytes=0)
    count = lambda s: len(engine.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for n in range(args.n):
        episode = make_secret_number_episode(random.Random(30_000 + args.length + n), args.length, count=count)
        document = engine.encode(episode.context)
        for prune in (False, True, False, True):
            lookahead.PRUNE = prune
            cpu = time.process_time()
            r = engine.generate(document=document, query=episode.question, max_new_tokens=24)
            print(json.dumps({"episode": n, "pruned": prune, "correct": episode.answer in r.text, "chosen": r.chosen,
                              "chunks": len(r.chunks), "looked": sum(c.lookahead_ids is not None for c in r.chunks),
                              "lookahead_tokens": r.lookahead_tokens, "cpu_s": round(time.process_time() - cpu, 2)}),
                  flush=True)


def compare(paths: list[str]) -> None:
    runs = [{r["id"]: r for r in map(json.loads, open(p))} for p in paths]
    base = runs[0]
    print("| run | episodes | correct | chosen differs from the first run | answer differs | chunks looked at "
          "(mean) | look-ahead tokens (mean) | CPU s / episode |")
    print("|---|---|---|---|---|---|---|---|")
    for path, rows in zip(paths, runs):
        ids = [i for i in rows if i in base]
        n = len(ids)
        mean = lambda key: sum(rows[i][key] for i in ids) / max(1, n)  # noqa: E731
        print(f"| {path} | {n} | {sum(rows[i]['correct'] for i in ids)} | "
              f"{sum(rows[i]['chosen'] != base[i]['chosen'] for i in ids)} | "
              f"{sum(rows[i]['text'] != base[i]['text'] for i in ids)} | {mean('looked'):.1f} / {mean('chunks'):.1f} | "
              f"{mean('lookahead_tokens'):.0f} | {mean('cpu_s'):.3f} |")
    for path, rows in zip(paths[1:], runs[1:]):
        for i, r in rows.items():
            if i in base and (r["chosen"] != base[i]["chosen"] or r["text"] != base[i]["text"]):
                b = base[i]
                print(f"{path} {i}: chosen {b['chosen']} -> {r['chosen']}, answer {b['text']!r} -> {r['text']!r}, "
                      f"correct {b['correct']} -> {r['correct']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--model", default="oprm-ar-mamba2")
    p.add_argument("--facts", default="21,84,338", help="AR facts per document (the demo's 4x, 16x, 64x)")
    p.add_argument("--n", type=int, default=30, help="episodes per point (the demo's 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=None, help="default: the model's measured best")
    p.add_argument("--selection", default="support")
    p.add_argument("--full", action="store_true", help="look ahead on every chunk (no pruning)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("compare")
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("prose")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--length", type=int, default=16384, help="context tokens")
    args = parser.parse_args()
    {"run": run, "prose": prose}[args.command](args) if args.command != "compare" else compare(args.paths)


if __name__ == "__main__":
    main()
