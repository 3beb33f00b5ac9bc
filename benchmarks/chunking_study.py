"""Boundary-safe chunking: segmenter speed and agreement, needles kept whole, and the extra tokens it costs.

    python benchmarks/chunking_study.py [--moby PATH] [--pysbd]

* speed of ``oprm.chunking.sentence_starts`` (the rule set) vs pysbd 0.3.4 (optional, ``pip install pysbd==0.3.4``)
  on the Moby-Dick haystack shipped as ``oprm/synthetic/data`` (or any text given with ``--moby``);
* boundary agreement with pysbd on the first 200K characters (hard-wrapped lines joined first, since pysbd splits
  at single line breaks while the rules deliberately do not);
* AR documents (L = 128) at 1x-64x the training length: needles cut by plain token chunks vs sentence chunks, and
  the extra tokens b*L - N of each chunking; prose (L = 2000, SmolLM2 tokenizer when available): extra tokens.
"""
from __future__ import annotations

import argparse
import random
import re
import time


def agreement(text: str, limit: int = 200_000) -> dict:
    import pysbd

    from oprm.chunking import sentence_starts

    text = re.sub(r"(?<!\n)\n(?!\n)", " ", text[:limit])  # unwrap hard-wrapped lines, keep paragraph breaks
    ours = set(sentence_starts(text))
    seg = pysbd.Segmenter(language="en", clean=False, char_span=True)
    theirs = set()
    for s in seg.segment(text):
        i = s.start
        while i < len(text) and text[i].isspace():
            i += 1
        theirs.add(i)
    both = len(ours & theirs)
    return {"chars": len(text), "ours": len(ours), "pysbd": len(theirs), "agree": both,
            "precision_vs_pysbd": round(both / len(ours), 3), "recall_vs_pysbd": round(both / len(theirs), 3),
            "examples_only_ours": [text[max(0, i - 40):i + 20] for i in sorted(ours - theirs)[:6]],
            "examples_only_pysbd": [text[max(0, i - 40):i + 20] for i in sorted(theirs - ours)[:6]]}


def speed(text: str, use_pysbd: bool) -> dict:
    from oprm.chunking import sentence_starts

    t = time.perf_counter()
    n = len(sentence_starts(text))
    out = {"chars": len(text), "rules_s": round(time.perf_counter() - t, 3), "rules_sentences": n}
    if use_pysbd:
        import pysbd

        t = time.perf_counter()
        out["pysbd_sentences"] = len(pysbd.Segmenter(language="en", clean=False, char_span=True).segment(text))
        out["pysbd_s"] = round(time.perf_counter() - t, 2)
    return out


def ar_costs(mults=(1, 4, 16, 64), n: int = 40, L: int = 128) -> list[dict]:
    from transformers import AutoTokenizer

    from oprm.chunking import extra_tokens, make_chunks
    from oprm.synthetic import long_episodes
    from oprm.training.model import SHIPPED_MODEL

    tok = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    rows = []
    for m in mults:
        eps, facts = long_episodes(tok, m * L, n, 30_000 + m)
        row = {"mult": m, "facts": facts}
        for name, kw in (("tokens", {}), ("sentences/end", {"chunking": "sentences", "snap": "end"}),
                         ("sentences/start", {"chunking": "sentences", "snap": "start"})):
            cut = extra = chunks = toks = 0
            for ep in eps:
                enc = tok(ep.context, add_special_tokens=False, return_offsets_mapping=True)
                offs = [tuple(o) for o in enc["offset_mapping"]]
                cs = make_chunks(len(offs), L, offsets=offs, text=ep.context, **kw)
                s0 = ep.context.index(ep.needle)
                cut += not any(c.char_start <= s0 and s0 + len(ep.needle) <= c.char_end for c in cs)
                extra += extra_tokens(cs, len(offs))
                chunks += len(cs)
                toks += len(offs)
            row[name] = {"needles_cut": cut, "chunks": round(chunks / n, 1),
                         "extra_tokens_pct": round(100 * extra / toks, 1)}
        rows.append(row)
    return rows


def prose_costs(text: str, L: int = 2000, lengths=(16384, 32768)) -> list[dict]:
    from oprm.chunking import extra_tokens, make_chunks
    from oprm.prompts import tokenize_with_offsets

    try:
        from transformers import AutoTokenizer

        from oprm.models import resolve_model

        path, gguf = resolve_model("smollm2")
        tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    except Exception:  # noqa: BLE001 - SmolLM2 not installed: skip
        return []
    rows = []
    rng = random.Random(0)
    for n_tok in lengths:
        for _ in range(3):
            start = rng.randrange(len(text) - 5 * n_tok)
            piece = text[start:start + 5 * n_tok]
            ids, offs = tokenize_with_offsets(tok, piece)
            ids, offs = ids[:n_tok], offs[:n_tok]
            piece = piece[:offs[-1][1]]
            row = {"tokens": n_tok}
            for name, kw in (("tokens", {}), ("sentences/end", {"chunking": "sentences", "snap": "end"}),
                             ("sentences/start", {"chunking": "sentences", "snap": "start"})):
                cs = make_chunks(len(ids), L, offsets=offs, text=piece, **kw)
                row[name] = {"chunks": len(cs), "extra_tokens_pct": round(100 * extra_tokens(cs, len(ids)) / len(ids), 1)}
            rows.append(row)
    return rows


def main():
    import json

    from oprm.synthetic.niah import prose_haystack_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--moby", default=None)
    ap.add_argument("--pysbd", action="store_true")
    ap.add_argument("--no-prose", action="store_true")
    args = ap.parse_args()
    text = open(args.moby or prose_haystack_path(), encoding="utf-8").read()
    out = {"speed": speed(text, args.pysbd)}
    if args.pysbd:
        out["agreement"] = agreement(text)
    out["ar_L128"] = ar_costs()
    if not args.no_prose:
        out["prose_L2000"] = prose_costs(text)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
