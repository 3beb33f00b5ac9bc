"""Measure the shipped AR model: in-distribution accuracy, IDK reliability, and the overflow curve
(vanilla vs OPRM) out to 64x the training length. Greedy decoding, exact match on the value.

    python -m oprm.training.measure --model src/oprm/models/oprm-ar-mamba2 [--write-card]

All episodes come from fixed seeds, disjoint from the training stream (training draws from
``random.Random(seed + 1)``; these use seeds >= 20_000).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .. import OPRM
from ..chunking import make_chunks
from ..config import IDK_WORD, OPRMConfig, add_config_arguments
from ..models import load_model
from ..synthetic import long_episodes
from ..tasks.synthetic import OVERFLOW_MULTIPLES
from .card import chunk_size_table, variant_table, write_card
from .chunk_stats import CHUNKINGS, choose, chunk_records, make_rules
from .heldout import answer_accuracy, heldout_episodes
from .model import SHIPPED_MODEL


def run_engine(engine, ep, mode: str):
    return engine.generate(**ep.prompt_kwargs(), mode=mode, max_new_tokens=8, do_sample=False)


def measure(folder: str, n_indist: int = 256, n_curve: int = 50, mults=OVERFLOW_MULTIPLES, train_len: int = 128,
            chunk_size: int | None = None, filler_ratio: float = 1.0, overlap: int = 0, log=print) -> dict:
    import torch

    torch.set_num_threads(1)
    model, tok = load_model(folder)
    chunk_size = chunk_size or train_len
    # the card's curve is OPRM as the paper configures it; the variants table holds oprm's other options
    engine = OPRM(model, tok, config=OPRMConfig.paper(chunk_size=chunk_size, overlap=overlap))
    idk_id = tok.convert_tokens_to_ids(IDK_WORD)
    res: dict = {"train_len": train_len, "chunk_size": chunk_size, "overlap": overlap, "filler_ratio": filler_ratio}
    t0 = time.time()

    # (a) in-distribution vanilla accuracy (whole documents of <= train_len context tokens)
    pres = heldout_episodes(20_001, n_indist, True, tok=tok, max_ctx_tokens=train_len, slice_edges=True)
    absn = heldout_episodes(20_002, n_indist, False, tok=tok, max_ctx_tokens=train_len, slice_edges=True)
    ok = sum(run_engine(engine, ep, "vanilla").text.strip() == ep.answer for ep in pres)
    res["indist_acc"] = ok / len(pres)
    acc_tf, false_idk = answer_accuracy(model, tok, pres)
    res["indist_acc_teacher_forced"] = acc_tf
    res["indist_false_idk"] = false_idk
    # (b) IDK: documents without the key -> first answer token is "Error"
    _, idk_rate = answer_accuracy(model, tok, absn)
    res["idk_first_token_rate"] = idk_rate
    log(f"[measure] in-dist acc {res['indist_acc']:.3f} (teacher-forced {acc_tf:.3f}), false IDK {false_idk:.3f}, "
        f"IDK on absent-key docs {idk_rate:.3f}  ({time.time() - t0:.0f}s)")

    # (b') IDK on real OPRM chunks: every chunk of 16x documents that does not hold the needle
    eps16, _ = long_episodes(tok, 16 * train_len, 20, 20_016, filler_ratio)
    n_chunks = n_idk = n_gold = n_gold_ok = 0
    for ep in eps16:
        r = run_engine(engine, ep, "oprm")
        s0 = ep.context.index(ep.needle)
        s1 = s0 + len(ep.needle)
        for rec in r.chunks:
            has = rec.char_start is not None and rec.char_start <= s0 and rec.char_end >= s1
            touches = rec.char_start is not None and rec.char_start < s1 and rec.char_end > s0
            if has:
                n_gold += 1
                n_gold_ok += rec.argmax != idk_id
            elif not touches:
                n_chunks += 1
                n_idk += rec.is_idk
    res["idk_rate_on_chunks_without_key_16x"] = n_idk / max(1, n_chunks)
    res["non_idk_rate_on_needle_chunks_16x"] = n_gold_ok / max(1, n_gold)
    log(f"[measure] 16x chunks: IDK on {n_chunks} key-less chunks {res['idk_rate_on_chunks_without_key_16x']:.3f}; "
        f"non-IDK on needle chunks {res['non_idk_rate_on_needle_chunks_16x']:.3f}  ({time.time() - t0:.0f}s)")

    # (c) the overflow curve
    curve = []
    for m in mults:
        eps, nf = long_episodes(tok, m * train_len, n_curve, 21_000 + m, filler_ratio)
        ctx_tokens = sum(len(tok.encode(ep.context, add_special_tokens=False)) for ep in eps) / len(eps)
        van = sum(run_engine(engine, ep, "vanilla").text.strip() == ep.answer for ep in eps) / len(eps)
        opr = sum(run_engine(engine, ep, "oprm").text.strip() == ep.answer for ep in eps) / len(eps)
        curve.append(dict(mult=m, num_facts=nf, ctx_tokens=round(ctx_tokens), vanilla=van, oprm=opr, n=len(eps)))
        log(f"[measure] {m:>3}x  facts {nf:>4}  ctx {ctx_tokens:7.0f} tok  vanilla {van:.3f}  OPRM {opr:.3f}  "
            f"({time.time() - t0:.0f}s)")
    res["curve"] = curve
    res["measure_seconds"] = round(time.time() - t0)
    return res


DEFAULT_VARIANTS = ("tokens/entropy/idk", "tokens/entropy/no-idk", "sent_end/entropy/idk", "sent_end/p_idk/idk",
                    "sent_end/la_digits_mean/idk", "tokens/support_la/idk", "sent_end/support_la/idk",
                    "sent_end/support_la/no-idk")


def variant_curve(folder: str, mults=(1, 4, 16, 64), n: int = 40, seed: int = 21_000, train_len: int = 128,
                  variants=DEFAULT_VARIANTS, k: int = 8, log=print) -> dict:
    """OPRM accuracy for chunking x selection x IDK variants, from one scan of every chunk per episode and chunking
    (:mod:`oprm.training.chunk_stats`: each chunk's prompt run on its own, as the engine does, plus a greedy
    look-ahead of ``k`` tokens that holds the whole answer), and vanilla through the engine. A variant is
    ``chunking/rule/idk``: chunking in tokens, sent_end, sent_start; rule a :data:`chunk_stats.RULE_NAMES` id;
    ``idk`` or ``no-idk``. Same episodes as :func:`measure`'s curve (seeds ``seed + mult``)."""
    import torch

    torch.set_num_threads(1)
    model, tok = load_model(folder)
    engine = OPRM(model, tok, chunk_size=train_len)
    parsed = [tuple(v.split("/")) for v in variants]
    rules = {True: make_rules(True), False: make_rules(False)}
    out = {"chunk_size": train_len, "k": k, "n": n, "seed": seed, "variants": list(variants), "curve": []}
    t0 = time.time()
    for m in mults:
        eps, nf = long_episodes(tok, m * train_len, n, seed + m)
        point = {"mult": m, "num_facts": nf, "n": len(eps), "chunks": {}, "needle_whole": {}, "oracle": {},
                 "keyless_answer_rate": {}}
        point["vanilla"] = sum(run_engine(engine, ep, "vanilla").text.strip() == ep.answer for ep in eps) / len(eps)
        hits = {v: 0 for v in variants}
        for cname in sorted({c for c, _, _ in parsed}):
            n_chunks = n_whole = n_oracle = keyless = keyless_ans = 0
            for ep in eps:
                prompt = engine.build_prompt(**ep.prompt_kwargs())
                chunks = make_chunks(len(prompt.context_ids), train_len, offsets=prompt.context_offsets,
                                     text=prompt.context_text, **CHUNKINGS[cname])
                recs = chunk_records(engine, prompt, chunks, k, 40, ep.answer, ep.needle, ep.context,
                                     query=ep.question)
                n_chunks += len(recs)
                whole = [r for r in recs if r["needle_whole"]]
                n_whole += bool(whole)
                n_oracle += any(r["correct"] for r in whole)
                for r in recs:
                    if not r["needle_touch"]:
                        keyless += 1
                        keyless_ans += not r["is_idk0"]
                for v, (c, rule, idk) in zip(variants, parsed):
                    if c == cname:
                        pick = choose(recs, *rules[idk == "idk"][rule])
                        hits[v] += bool(pick and pick["correct"])
            point["chunks"][cname] = round(n_chunks / len(eps), 1)
            point["needle_whole"][cname] = n_whole / len(eps)
            point["oracle"][cname] = n_oracle / len(eps)
            point["keyless_answer_rate"][cname] = round(keyless_ans / max(1, keyless), 4)
        point["oprm"] = {v: hits[v] / len(eps) for v in variants}
        out["curve"].append(point)
        log(f"[measure] {m:>3}x vanilla {point['vanilla']:.3f}  " + "  ".join(
            f"{v} {a:.3f}" for v, a in point["oprm"].items()) + f"  oracle {point['oracle']}  key-less answering "
            f"{point['keyless_answer_rate']}  ({time.time() - t0:.0f}s)")
    return out


def chunk_size_sweep(folder: str, sizes, mults=(1, 4, 16, 64), n: int = 200, seed: int = 22_000,
                     train_len: int = 128, log=print) -> dict:
    """OPRM with the engine's default options at each chunk size L: which L to use with this model. ``best`` has the
    highest mean accuracy over the multiples (a tie goes to the larger L: fewer chunks). Episodes from seeds
    ``seed + multiple``, disjoint from the curve's, the variants' and ``oprm demo``'s."""
    import torch

    torch.set_num_threads(1)
    model, tok = load_model(folder)
    engine = OPRM(model, tok)
    acc: dict[str, dict[str, float]] = {str(size): {} for size in sizes}
    seconds: dict[str, dict[str, float]] = {str(size): {} for size in sizes}  # per episode, one thread
    t0 = time.time()
    for m in mults:
        eps, _ = long_episodes(tok, m * train_len, n, seed + m)
        for size in sizes:
            start = time.perf_counter()
            hits = sum(engine.generate(**ep.prompt_kwargs(), chunk_size=size, max_new_tokens=8).text.strip()
                       == ep.answer for ep in eps)
            acc[str(size)][str(m)] = hits / len(eps)
            seconds[str(size)][str(m)] = round((time.perf_counter() - start) / len(eps), 4)
        log(f"[measure] {m:>3}x  " + "  ".join(f"L={s} {acc[str(s)][str(m)]:.3f}" for s in sizes)
            + f"  ({time.time() - t0:.0f}s)")
    mean = {s: sum(a.values()) / len(a) for s, a in acc.items()}
    best = max(sizes, key=lambda s: (round(mean[str(s)], 6), s))
    options = {k: v for k, v in engine.config.to_dict().items() if k != "chunk_size"}
    return {"sizes": list(sizes), "mults": list(mults), "n": n, "seed": seed, "train_len": train_len,
            "options": options, "accuracy": acc, "mean": mean, "best": best, "seconds_per_episode": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oprm.training.measure")
    ap.add_argument("--model", default=str(SHIPPED_MODEL))
    ap.add_argument("--n-indist", type=int, default=256)
    ap.add_argument("--n-curve", type=int, default=50)
    ap.add_argument("--mults", default=",".join(map(str, OVERFLOW_MULTIPLES)))
    ap.add_argument("--filler-ratio", type=float, default=1.0)
    ap.add_argument("--write-card", action="store_true")
    ap.add_argument("--card-only", action="store_true", help="rewrite README.md from results.json, no measuring")
    ap.add_argument("--variants", nargs="?", const=",".join(DEFAULT_VARIANTS), default=None,
                    help="measure chunking/selection/IDK variants instead (comma list of chunking/rule/idk; "
                         "no value: the default set) and write variants.json")
    ap.add_argument("--seed", type=int, default=None,
                    help="episode seeds are SEED + multiple (default 21000 for --variants, 22000 for --chunk-sizes)")
    ap.add_argument("--chunk-sizes", default=None,
                    help="measure OPRM (the engine's default options) at these chunk sizes instead (comma list; "
                         "1x,4x,16x,64x or --mults, --n-curve episodes a point) and write chunk_sizes.json, whose best "
                         "size `oprm demo` uses")
    # the curve varies only the chunk size and overlap; every other engine option stays at the engine's default
    add_config_arguments(ap, exclude=tuple(n for n in OPRMConfig.names() if n not in ("chunk_size", "overlap")),
                         later={"chunk_size": "the model's training length"})
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    folder = Path(args.model)
    meta_path = folder / "training_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if args.card_only:
        write_card(str(folder), meta, json.loads((folder / "results.json").read_text()))
        return 0
    # --chunk-sizes and --variants measure four points of the curve unless --mults says otherwise
    points = [int(x) for x in args.mults.split(",")] if args.mults != ",".join(map(str, OVERFLOW_MULTIPLES)) \
        else [1, 4, 16, 64]
    if args.chunk_sizes:
        sizes = [int(x) for x in args.chunk_sizes.split(",")]
        res = chunk_size_sweep(str(folder), sizes, points, args.n_curve, 22_000 if args.seed is None else args.seed,
                               meta.get("max_ctx_tokens", 128))
        (folder / "chunk_sizes.json").write_text(json.dumps(res, indent=1))
        print(chunk_size_table(res))
        return 0
    if args.variants:
        res = variant_curve(str(folder), points, args.n_curve, 21_000 if args.seed is None else args.seed,
                            meta.get("max_ctx_tokens", 128), args.variants.split(","))
        (folder / "variants.json").write_text(json.dumps(res, indent=1))
        print(variant_table(res))
        return 0
    res = measure(str(folder), args.n_indist, args.n_curve, [int(x) for x in args.mults.split(",")],
                  meta.get("max_ctx_tokens", 128), args.chunk_size, args.filler_ratio, args.overlap)
    (folder / "results.json").write_text(json.dumps(res, indent=1))
    if args.write_card and meta:
        write_card(str(folder), meta, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
