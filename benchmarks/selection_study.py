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
import math
import random
import re
import sys
import time
from pathlib import Path

CHUNKINGS = {"tokens": dict(chunking="tokens"), "sent_end": dict(chunking="sentences", snap="end"),
             "sent_start": dict(chunking="sentences", snap="start")}


# ------------------------------------------------------------------------------------------------------ collect
def lookahead(adapter, rows, k: int, eos: int):
    """Greedy k-token continuation of each row [P, C_j, S] (batched); per row the first-token distribution's
    entropy / argmax / P(each id) and, per generated token, its id, log-prob and the entropy of its distribution."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(rows, dtype=torch.long, device=adapter.device)
    logits, state = adapter.prefill(ids, None, start=0, num_logits=1)
    logp = F.log_softmax(logits[:, -1].float(), -1)
    first = logp.clone()
    toks, lps, ents = [], [], []
    for t in range(k):
        tok = logp.argmax(-1)
        toks.append(tok)
        lps.append(logp.gather(-1, tok[:, None])[:, 0])
        ents.append(-(logp.exp() * logp).sum(-1))
        if t == k - 1 or bool((torch.stack(toks).eq(eos).any(0)).all()):
            break
        logits, state = adapter.prefill(tok[:, None], state, start=ids.shape[1] + t, num_logits=1)
        logp = F.log_softmax(logits[:, -1].float(), -1)
    return first, torch.stack(toks, 1), torch.stack(lps, 1), torch.stack(ents, 1)


def chunk_records(engine, prompt, chunks, k: int, rows_per_batch: int, gold: str, needle: str | None,
                  context: str, idk: str = "Error"):
    import torch

    tok = engine.tokenizer
    idk_ids = sorted(engine.idk_ids(idk))
    eos = tok.eos_token_id
    p = prompt
    out = []
    for b0 in range(0, len(chunks), rows_per_batch):
        batch = chunks[b0:b0 + rows_per_batch]
        rows = [p.prefix_ids + p.context_ids[c.token_start:c.token_end] + p.suffix_ids for c in batch]
        with torch.no_grad():
            first, toks, lps, ents = lookahead(engine.adapter, rows, k, eos)
        probs = first.exp()
        ent0 = -(probs * first).sum(-1)
        p_idk = probs[:, idk_ids].sum(-1)
        for r, c in enumerate(batch):
            ids = toks[r].tolist()
            n = ids.index(eos) if eos in ids else len(ids)
            text = tok.decode(ids[:n], skip_special_tokens=True).strip()
            pieces = [tok.decode([i]) for i in ids[:n]]
            ctext = context[c.char_start:c.char_end]
            s0 = context.index(needle) if needle else -1
            out.append(dict(
                index=c.index, token_start=c.token_start, token_end=c.token_end,
                entropy0=float(ent0[r]), p_idk0=float(p_idk[r]), argmax0=pieces[0] if pieces else "",
                is_idk0=int(ids[0]) in set(idk_ids), text=text, pieces=pieces, finished=n < len(ids),
                logprobs=[round(float(x), 5) for x in lps[r][:max(1, n + (n < len(ids)))]],
                entropies=[round(float(x), 5) for x in ents[r][:max(1, n + (n < len(ids)))]],
                needle_whole=bool(needle) and c.char_start <= s0 and s0 + len(needle) <= c.char_end,
                needle_touch=bool(needle) and c.char_start < s0 + len(needle) and c.char_end > s0,
                answer_in_chunk=bool(_answer_value(text)) and _answer_value(text) in ctext,
                correct=_is_correct(text, gold)))
    return out


def _answer_value(text: str) -> str:
    """The answer's value: the first run of digits (AR values, secret numbers), else the stripped text."""
    m = re.search(r"\d+", text)
    return m.group(0) if m else text.strip()


def _is_correct(text: str, gold: str) -> bool:
    return text.strip() == gold or (len(gold) >= 5 and gold in text)


def collect(args) -> int:
    import torch

    from oprm import OPRM
    from oprm.chunking import make_chunks

    torch.set_num_threads(1)
    out = open(args.out, "a")
    if args.task == "ar":
        from oprm.synthetic.measure import long_episodes

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
                recs = chunk_records(engine, prompt, chunks, k, rows_per_batch, ep.answer, ep.needle, ep.context)
                row = dict(task=args.task, setting=name, episode=e, seed=args.seed, chunking=cname, gold=ep.answer,
                           n_context_tokens=len(prompt.context_ids), chunk_size=L, k=k, chunks=recs,
                           seconds=round(time.perf_counter() - t, 2))
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"{args.task} {name} ep {e} {cname}: {len(chunks)} chunks, needle whole "
                      f"{any(c['needle_whole'] for c in recs)}, {row['seconds']}s", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------------ rules
def _span(c, digits_only: bool):
    """Indices of the answer span in the look-ahead: the digit tokens when asked and present, else all tokens."""
    n = len(c["pieces"])
    if digits_only:
        d = [i for i, p in enumerate(c["pieces"]) if any(ch.isdigit() for ch in p)]
        if d:
            return d
    return list(range(max(1, n)))


def _mean(xs):
    return sum(xs) / len(xs) if xs else -1e9


def _divergence(cands):
    """First look-ahead position where the candidates' greedy tokens differ (0 if they differ at once)."""
    if len(cands) < 2:
        return 0
    t = 0
    while True:
        toks = [c["pieces"][t] if t < len(c["pieces"]) else None for c in cands]
        if len(set(toks)) > 1 or all(x is None for x in toks):
            return t
        t += 1


def make_rules():
    """name -> (filter, score): the filter drops chunks taken as IDK; the best score among the rest is chosen."""
    first_ok = lambda c: not c["is_idk0"]  # noqa: E731 - the paper's IDK filter (first token)
    span_ok = lambda c: not c["is_idk0"] and "Error" not in c["text"] and c["text"] != ""  # noqa: E731
    log1m = lambda p: math.log(max(1e-12, 1 - p))  # noqa: E731
    rules = {
        "entropy (paper)": (first_ok, lambda c, d: -c["entropy0"]),
        "max_prob": (first_ok, lambda c, d: math.exp(c["logprobs"][0])),
        "lowest P(IDK)": (first_ok, lambda c, d: -c["p_idk0"]),
        "P(IDK)+entropy": (first_ok, lambda c, d: log1m(c["p_idk0"]) - c["entropy0"]),
        "LA mean logp": (span_ok, lambda c, d: _mean([c["logprobs"][i] for i in _span(c, False)
                                                      if i < len(c["logprobs"])])),
        "LA sum logp": (span_ok, lambda c, d: sum(c["logprobs"])),
        "LA digits mean logp": (span_ok, lambda c, d: _mean([c["logprobs"][i] for i in _span(c, True)
                                                             if i < len(c["logprobs"])])),
        "LA digits min logp": (span_ok, lambda c, d: min([c["logprobs"][i] for i in _span(c, True)
                                                          if i < len(c["logprobs"])] or [-1e9])),
        "LA divergence logp": (span_ok, lambda c, d: c["logprobs"][d] if d < len(c["logprobs"]) else -1e9),
        "LA divergence -entropy": (span_ok, lambda c, d: -c["entropies"][d] if d < len(c["entropies"]) else -1e9),
        "LA digits mean logp + log(1-P(IDK))": (span_ok, lambda c, d: _mean(
            [c["logprobs"][i] for i in _span(c, True) if i < len(c["logprobs"])]) + log1m(c["p_idk0"])),
    }
    for base in ("entropy (paper)", "lowest P(IDK)", "LA digits mean logp", "LA digits mean logp + log(1-P(IDK))"):
        f, s = rules[base]
        rules[f"{base} + grounded"] = (f, (lambda s: lambda c, d: (c["answer_in_chunk"], s(c, d)))(s))
    return rules


def choose(chunks, filt, score):
    cands = [c for c in chunks if filt(c)]
    if not cands:
        return None
    d = _divergence(cands)
    return max(cands, key=lambda c: (score(c, d), -c["index"]))


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
    rows = [json.loads(line) for p in paths for line in open(p)]
    table = score_rules(rows)
    names = list(make_rules())
    print("| task | setting | chunking | n | needle whole | oracle | key-less chunks answering (1st tok / look-ahead) | "
          + " | ".join(names) + " |")
    print("|" + "---|" * (7 + len(names)))
    for (task, setting, chunking), t in sorted(table.items(), key=lambda kv: (kv[0][0], _num(kv[0][1]), kv[0][2])):
        n = t["n"]
        fr = f"{t['keyless_answer0'] / max(1, t['keyless']):.3f} / {t['keyless_answer_la'] / max(1, t['keyless']):.3f}"
        print(f"| {task} | {setting} | {chunking} | {n} | {t['needle_whole'] / n:.3f} | {t['oracle'] / n:.3f} | {fr} | "
              + " | ".join(f"{t[r] / n:.3f}" for r in names) + " |")
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
    args = ap.parse_args(argv)
    return collect(args) if args.cmd == "collect" else rules_main(args.paths)


if __name__ == "__main__":
    sys.exit(main())
