"""Which chunk to decode from? Per-chunk statistics of OPRM prompts, and selection rules scored offline on them.

    # AR on the shipped model (L = 128), 16x and 64x the training length, 40 episodes a cell
    python benchmarks/selection_study.py collect --task ar --mults 16,64 --n 40 --out /tmp/sel_ar.jsonl
    # SmolLM2 on the shipped Moby-Dick haystack with a secret-number needle, oprm ask's default prompt
    python benchmarks/selection_study.py collect --task prose --lengths 16384,32768 --n 5 --out /tmp/sel_prose.jsonl
    python benchmarks/selection_study.py rules /tmp/sel_ar.jsonl [/tmp/sel_prose.jsonl ...]

``collect`` runs every chunk's prompt [P, C_j, S] on its own (batched for the small model), exactly as the engine
prefills it, records the first answer token's entropy, P(IDK) and argmax, then greedily decodes ``k`` tokens from
every chunk (the look-ahead) with each token's log-probability and entropy. ``rules`` replays selection rules on
those numbers: the accuracy of a rule is the share of episodes whose chosen chunk's own greedy answer is right (for
the tiny model the k-token look-ahead is the whole answer; for SmolLM2 the answer is scored by whether the gold
number occurs in the look-ahead text, as NIAH scoring does).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from oprm.training.chunk_stats import CHUNKINGS, RULE_NAMES, choose, chunk_records, make_rules


def collect(args) -> int:
    import torch

    from oprm import OPRM
    from oprm.chunking import make_chunks

    torch.set_num_threads(1)
    out = open(args.out, "a")
    if args.task == "ar":
        from oprm.synthetic import long_episodes

        model = args.model or str(Path(__file__).resolve().parents[1] / "src/oprm/models/oprm-ar-mamba2")
        engine = OPRM.from_pretrained(model, chunk_size=args.chunk_size or 128)
        L = engine.chunk_size
        settings = []
        for m in [int(x) for x in args.mults.split(",")]:
            eps, facts = long_episodes(engine.tokenizer, m * L, args.n, args.seed + m)
            settings.append((f"{m}x", eps, lambda ep: engine.build_prompt(**ep.prompt_kwargs())))
        k, rows_per_batch = args.k or 8, 40
    else:
        from oprm.synthetic.niah import make_secret_number_episode

        engine = OPRM.from_pretrained(args.model or "smollm2", chunk_size=args.chunk_size or 2000)
        L = engine.chunk_size
        count = lambda s: len(engine.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        settings = []
        for n_tok in [int(x) for x in args.lengths.split(",")]:
            rng = random.Random(args.seed + n_tok)
            eps = [make_secret_number_episode(rng, n_tok, count=count) for _ in range(args.n)]
            settings.append((f"{n_tok}", eps, lambda ep: engine.build_prompt(context=ep.context, query=ep.question)))
        k, rows_per_batch = args.k or 24, 1
    for name, eps, build in settings:
        for e, ep in enumerate(eps):
            prompt = build(ep)
            for cname in args.chunkings.split(","):
                t = time.perf_counter()
                chunks = make_chunks(len(prompt.context_ids), L, offsets=prompt.context_offsets,
                                     text=prompt.context_text, **CHUNKINGS[cname])
                recs = chunk_records(engine, prompt, chunks, k, rows_per_batch, ep.answer, ep.needle, ep.context,
                                     query=ep.question)
                row = dict(task=args.task, setting=name, episode=e, seed=args.seed, chunking=cname, gold=ep.answer,
                           n_context_tokens=len(prompt.context_ids), chunk_size=L, k=k, chunks=recs,
                           seconds=round(time.perf_counter() - t, 2))
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"{args.task} {name} ep {e} {cname}: {len(chunks)} chunks, needle whole "
                      f"{any(c['needle_whole'] for c in recs)}, {row['seconds']}s", flush=True)
    return 0


def score_rules(rows):
    rules = make_rules()
    table = {}
    for row in rows:
        key = (row["task"], row["setting"], row["chunking"])
        t = table.setdefault(key, {"n": 0, "oracle": 0, "needle_whole": 0, "keyless": 0, "keyless_answer0": 0,
                                   "keyless_answer_la": 0, **{r: 0 for r in rules}})
        t["n"] += 1
        chunks = row["chunks"]
        whole = [c for c in chunks if c["needle_whole"]]
        t["needle_whole"] += bool(whole)
        t["oracle"] += any(c["correct"] for c in whole)
        for c in chunks:
            if not c["needle_touch"]:
                t["keyless"] += 1
                t["keyless_answer0"] += not c["is_idk0"]
                t["keyless_answer_la"] += not c["is_idk0"] and "Error" not in c["text"] and c["text"] != ""
        for name, (filt, score) in rules.items():
            pick = choose(chunks, filt, score)
            t[name] += bool(pick and pick["correct"])
    return table


def rules_main(paths) -> int:
    """One table row per (file, setting, chunking): pass one file per model (its name labels the rows)."""
    rows = []
    for p in paths:
        for line in open(p):
            row = json.loads(line)
            row["task"] = f"{row['task']} ({Path(p).stem})"
            rows.append(row)
    table = score_rules(rows)
    names = list(make_rules())
    print("rules: " + "; ".join(f"`{k}` = {v}" for k, v in RULE_NAMES.items()) + "\n")
    print("| task | setting | chunking | n | needle whole | oracle | key-less chunks answering (1st tok / look-ahead) | "
          + " | ".join(names) + " |")
    print("|" + "---|" * (7 + len(names)))
    for (task, setting, chunking), t in sorted(table.items(), key=lambda kv: (kv[0][0], _num(kv[0][1]), kv[0][2])):
        n = t["n"]
        fr = f"{t['keyless_answer0'] / max(1, t['keyless']):.3f} / {t['keyless_answer_la'] / max(1, t['keyless']):.3f}"
        print(f"| {task} | {setting} | {chunking} | {n} | {t['needle_whole'] / n:.3f} | {t['oracle'] / n:.3f} | {fr} | "
              + " | ".join(f"{t[r] / n:.3f}" for r in names) + " |")
    return 0


def augment(paths, model: str | None = None) -> int:
    """Add the extractive ``support`` field to records collected before it existed, by regenerating the same
    episodes and chunks (tokenizer only)."""
    from transformers import AutoTokenizer

    from oprm.chunking import make_chunks
    from oprm.models import resolve_model
    from oprm.prompts import tokenize_with_offsets
    from oprm.training.chunk_stats import support

    for path in paths:
        rows = [json.loads(line) for line in open(path)]
        task = rows[0]["task"]
        if task == "ar":
            from oprm.synthetic import long_episodes

            tok = AutoTokenizer.from_pretrained(model or str(Path(__file__).resolve().parents[1]
                                                             / "src/oprm/models/oprm-ar-mamba2"))
        else:
            from oprm.synthetic.niah import make_secret_number_episode

            folder, gguf = resolve_model(model or "smollm2")
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        cache = {}
        for row in rows:
            key = (row["setting"], row["seed"])
            if key not in cache:
                n = 1 + max(r["episode"] for r in rows if (r["setting"], r["seed"]) == key)
                if task == "ar":
                    m = _num(row["setting"])
                    cache[key] = long_episodes(tok, m * row["chunk_size"], n, row["seed"] + m)[0]
                else:
                    n_tok = int(row["setting"])
                    rng = random.Random(row["seed"] + n_tok)
                    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
                    cache[key] = [make_secret_number_episode(rng, n_tok, count=count) for _ in range(n)]
            ep = cache[key][row["episode"]]
            assert ep.answer == row["gold"]
            ids, offs = tokenize_with_offsets(tok, ep.context)
            chunks = make_chunks(len(ids), row["chunk_size"], offsets=offs, text=ep.context,
                                 **CHUNKINGS[row["chunking"]])
            for c, rec in zip(chunks, row["chunks"]):
                assert c.token_start == rec["token_start"]
                rec["support"] = round(support(ep.context[c.char_start:c.char_end], rec["text"], ep.question), 4)
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"augmented {path}: {len(rows)} rows")
    return 0


def _num(s):
    return int(re.sub(r"\D", "", s) or 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--task", choices=("ar", "prose"), default="ar")
    c.add_argument("--model", default=None)
    c.add_argument("--mults", default="16,64")
    c.add_argument("--lengths", default="16384,32768")
    c.add_argument("--n", type=int, default=40)
    c.add_argument("--seed", type=int, default=30_000)
    c.add_argument("--chunk-size", type=int, default=None)
    c.add_argument("--chunkings", default="tokens,sent_end,sent_start")
    c.add_argument("--k", type=int, default=None, help="look-ahead tokens (default 8 for AR, 24 for prose)")
    c.add_argument("--out", required=True)
    r = sub.add_parser("rules")
    r.add_argument("paths", nargs="+")
    a = sub.add_parser("augment", help="add the support field to older records")
    a.add_argument("paths", nargs="+")
    a.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "augment":
        return augment(args.paths, args.model)
    return collect(args) if args.cmd == "collect" else rules_main(args.paths)


if __name__ == "__main__":
    sys.exit(main())
