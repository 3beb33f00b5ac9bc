"""Measure the shipped AR model: in-distribution accuracy, IDK reliability, and the overflow curve
(vanilla vs OPRM) out to 64x the training length. Greedy decoding, exact match on the value.

    python -m oprm.synthetic.measure --model src/oprm/models/oprm-ar-mamba2 [--write-card]

All episodes come from fixed seeds, disjoint from the training stream (training draws from
``random.Random(seed + 1)``; these use seeds >= 20_000).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

DEFAULT_MULTS = (1, 2, 4, 8, 16, 32, 64)


def load(folder: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tok


def tokens_per_fact(tok, filler_ratio: float, seed: int = 20_000, n: int = 20) -> float:
    from .ar import make_ar_episode

    rng = random.Random(seed)
    tot = facts = 0
    for _ in range(n):
        ep = make_ar_episode(rng, 40, filler_ratio=filler_ratio)
        tot += len(tok.encode(ep.context, add_special_tokens=False))
        facts += 40
    return tot / facts


def long_episodes(tok, target_tokens: int, n: int, seed: int, filler_ratio: float = 1.0, present: bool = True):
    """``n`` episodes whose contexts are about ``target_tokens`` tokens long (needle uniformly placed)."""
    from .ar import make_ar_episode

    per_fact = tokens_per_fact(tok, filler_ratio)
    num_facts = max(1, round(target_tokens / per_fact))
    rng = random.Random(seed)
    return [make_ar_episode(rng, num_facts, filler_ratio=filler_ratio, present=present) for _ in range(n)], num_facts


def run_engine(engine, ep, mode: str):
    return engine.generate(**ep.prompt_kwargs(), mode=mode, max_new_tokens=8, do_sample=False)


def measure(folder: str, n_indist: int = 256, n_curve: int = 50, mults=DEFAULT_MULTS, train_len: int = 128,
            chunk_size: int | None = None, filler_ratio: float = 1.0, overlap: int = 0, log=print) -> dict:
    import torch

    from .. import OPRM
    from ..train_ar import answer_accuracy, heldout_episodes, prompt_parts

    torch.set_num_threads(1)
    model, tok = load(folder)
    chunk_size = chunk_size or train_len
    engine = OPRM(model, tok, chunk_size=chunk_size, overlap=overlap)
    idk_id = tok.convert_tokens_to_ids("Error")
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
    (:mod:`oprm.synthetic.chunk_stats`: each chunk's prompt run on its own, as the engine does, plus a greedy
    look-ahead of ``k`` tokens that holds the whole answer), and vanilla through the engine. A variant is
    ``chunking/rule/idk``: chunking in tokens, sent_end, sent_start; rule a :data:`chunk_stats.RULE_NAMES` id;
    ``idk`` or ``no-idk``. Same episodes as :func:`measure`'s curve (seeds ``seed + mult``)."""
    import torch

    from .. import OPRM
    from ..chunking import make_chunks
    from .chunk_stats import CHUNKINGS, choose, chunk_records, make_rules

    torch.set_num_threads(1)
    model, tok = load(folder)
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


def variant_table(res: dict) -> str:
    from ..report import markdown_table

    rows = []
    chunkings = sorted(res["curve"][0]["oracle"])
    for p in res["curve"]:
        rows.append([f"{p['mult']}x", p["num_facts"], f"{p['vanilla']:.2f}"]
                    + [f"{p['oprm'][v]:.2f}" for v in res["variants"]]
                    + [f"{p['oracle'][c]:.2f}" for c in chunkings]
                    + [f"{p['keyless_answer_rate'][c]:.3f}" for c in chunkings])
    return markdown_table(["length", "facts", "vanilla"] + res["variants"] + [f"oracle {c}" for c in chunkings]
                          + [f"key-less chunks answering ({c})" for c in chunkings], rows)


def variants_section(var: dict) -> list[str]:
    """Model-card lines for a ``--variants`` run: the ablation of chunking x selection x IDK."""
    lines = [
        "## OPRM variants: chunking x selection x IDK",
        "",
        f"Same episodes as the curve above where the seeds match (seeds {var['seed']} + multiple, {var['n']} episodes a "
        "point). Each chunk's prompt is run on its own exactly as the engine does (`oprm.synthetic.chunk_stats`) and "
        f"its greedy answer read from a {var['k']}-token look-ahead. Columns are `chunking/selection/IDK`: `tokens` "
        "= the paper's plain windows, `sent_end` = boundary-safe windows ending on a sentence end; `entropy` = the "
        "paper's first-token entropy, `p_idk` = lowest first-token P(Error), `la_digits_mean` = mean log-prob of "
        "the look-ahead answer, `support_la` = extractive support of the answer in its chunk (query words in the "
        "answer's sentence), then `la_digits_mean`; `idk` = drop chunks answering `Error` (first token, or anywhere "
        "in the look-ahead for look-ahead rules), `no-idk` = no filter. `oracle` = the chunk holding the needle "
        "answers right (the ceiling of any selection).",
        "",
        variant_table(var),
        "",
    ]
    return lines


def write_card(folder: str, meta: dict, res: dict | None):
    from .. import __version__

    folder = Path(folder)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [mamba2, oprm, associative-recall, synthetic, tiny]",
        "license: apache-2.0",
        "---",
        "",
        "# oprm-ar-mamba2",
        "",
        "A tiny recurrent language model (stock `transformers` `Mamba2ForCausalLM`) trained from scratch by "
        "`oprm` on a synthetic **natural-language associative-recall task with an IDK answer**. It exists to "
        "show *overflow* — a recurrent state that fits the facts of a short document but not of a long one — "
        "and how OPRM (arXiv 2505.07793) prevents it: split the long document into chunks of about the training "
        "length, prefill every chunk, drop the chunks that answer `Error`, decode from the most confident one.",
        "",
        *([f"**Status:** {meta['status']}", ""] if meta.get("status") else []),
        "## Task",
        "",
        "A document mixes fact sentences (`The code of the amber falcon is 4821.`: 10 numeric attributes, keys = "
        "colour/adjective + animal/object or first name + surname, 3–4 digit values) with filler sentences from a "
        "small English grammar that reuses the key words. The question asks for one key's value; if the key is not "
        "in the document the answer is `Error` (some absent keys share a word with a present one). The prompt is "
        "`oprm.synthetic.AR_TEMPLATE` inside the chat template, and the reply opens with the episode's answer "
        "prefix (as in RULER), so the first generated token is the value's first digit or `Error`:",
        "",
        "```",
        "<|im_start|>user",
        "Answer the question using the text below. If the answer does not exist in the text, return \"Error\".",
        "",
        "Text:",
        "{context}",
        "",
        "Answer with the value only, or \"Error\" if the text does not say. "
        "Question: What is the code of the amber falcon?<|im_end|>",
        "<|im_start|>assistant",
        "The code of the amber falcon is ",
        "```",
        "",
        "## Model",
        "",
        f"- `Mamba2ForCausalLM`: hidden {meta['hidden']}, {meta['layers']} layers, state size {meta['state']}, "
        f"head dim {meta['head_dim']} ({2 * meta['hidden'] // meta['head_dim']} heads, {meta.get('groups', 1)} B/C "
        f"group{'s' if meta.get('groups', 1) > 1 else ''}), expand 2, "
        f"conv width {meta.get('conv_kernel', 4)}, chunk_size 64, untied embeddings."
        + (" A conv width above 4 runs on the pure-PyTorch path (CPU, or GPU without `causal_conv1d`); the "
           "`causal_conv1d` CUDA kernel only supports widths 2-4." if meta.get("conv_kernel", 4) > 4 else ""),
        f"- Parameters: {meta['params']:,}. Byte-level BPE tokenizer with single digits "
        f"(vocab {meta.get('vocab', '?')}), trained here; `Error` and ` Error` are single tokens; "
        "eos = `<|im_end|>`, pad = `<|pad|>`.",
        "",
        "## Training",
        "",
        f"- Training length: contexts of **at most {meta['max_ctx_tokens']} tokens** (plus ~45 prompt tokens).",
        (f"- Mix: {json.dumps(meta['mix'])}. `num_facts` uniform in the range; `present_prob` = share of episodes "
         "whose key is present (the rest answer `Error`; a share `hard_negative_prob` of those asks for a key sharing "
         "one word with a present key); `slice_edges_prob` = share of contexts that are a random token window of a "
         "longer document (like an OPRM chunk), the rest are whole documents; extra question turns on the same "
         "document densify the supervision. Loss on the answer tokens and `<|im_end|>` only."
         if meta.get("data", "docs") == "docs" else
         f"- Mix (`--data oprm`, last stage): {json.dumps(meta['mix'])}. Each example is one of the engine's chunks "
         "(`oprm.chunking.make_chunks`, exactly L tokens, `chunkings`/`snaps` drawn per example) of a document of "
         "`doc_facts` facts, or with probability `whole_doc_prob` a whole document of <= L tokens; P, C, S tokenized "
         "as the engine does. Questions: a key whose fact is whole in the window (probability `needle_prob`) or a "
         "key the window lacks (`Error`): with probability `hard_negative_prob` sharing the attribute and one word "
         "with a fact of the window (the noun/surname with probability `hard_negative_noun_prob`), else a key of "
         "another window or a random key; keys of facts the window cuts are never asked. Loss on the answers and "
         f"`<|im_end|>`, each answer's first token weighted {meta.get('first_token_weight', 1.0)}."),
        f"- AdamW lr {meta['lr']} (warm-up, cosine), batch {meta['batch_size']}, {meta['steps']} steps, "
        f"{meta['tokens']:,} tokens, {meta['train_minutes']} min on one CPU thread, seed {meta['seed']}"
        + (" (last stage; see *Reproduce* for the earlier stages)." if meta.get("reproduce") else "."),
        *([f"- Total training time over all stages: about {meta['total_minutes']} min on one CPU thread."]
          if meta.get("total_minutes") else []),
        f"- Held-out during training (teacher-forced, 256 episodes each): accuracy "
        f"{meta['final_heldout']['present_acc']:.3f}, IDK on absent keys {meta['final_heldout']['absent_idk']:.3f}.",
        "",
    ]
    if res:
        lines += [
            "## Results",
            "",
            f"Greedy decoding, exact match on the value; OPRM = `oprm.OPRM(model, tok, chunk_size={res['chunk_size']}"
            + (f", overlap={res['overlap']}" if res.get("overlap") else "") + ")` "
            "(entropy selection, IDK filter on). Documents in the curve use filler ratio "
            f"{res['filler_ratio']} and a uniformly placed needle; {res['curve'][0]['n']} episodes per point.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| in-distribution accuracy (vanilla, {res['train_len']}-token docs, n=256) | {res['indist_acc']:.3f} |",
            f"| IDK: first answer token is `Error` on docs without the key (n=256) | {res['idk_first_token_rate']:.3f} |",
            f"| IDK: first answer token is `Error` on 16x-document chunks without the needle | "
            f"{res['idk_rate_on_chunks_without_key_16x']:.3f} |",
            f"| first answer token is not `Error` on the needle chunk (16x) | "
            f"{res['non_idk_rate_on_needle_chunks_16x']:.3f} |",
            f"| false IDK on in-distribution docs with the key | {res['indist_false_idk']:.3f} |",
            "",
            "| length (x training) | facts | context tokens | vanilla | OPRM |",
            "|---|---|---|---|---|",
        ]
        for c in res["curve"]:
            lines.append(f"| {c['mult']}x | {c['num_facts']} | {c['ctx_tokens']} | {c['vanilla']:.2f} | {c['oprm']:.2f} |")
        lines.append("")
    var_path = folder / "variants.json"
    if var_path.exists():
        lines += variants_section(json.loads(var_path.read_text()))
    lines += [
        "## Reproduce",
        "",
        "From the repository root with the package installed (`pip install -e .`), one CPU thread:",
        "",
        "```bash",
        "export OMP_NUM_THREADS=1",
        *meta.get("reproduce", [meta["command"]]),
        "python -m oprm.synthetic.measure --model src/oprm/models/oprm-ar-mamba2 --write-card",
        "```",
        "",
        f"Trained and measured with oprm {__version__}, transformers, torch on CPU (1 thread). "
        "The learning-rate schedule and the curriculum follow the wall-clock budget (`--minutes`), so a re-run on "
        "a faster or slower machine takes a different number of steps; pass `--schedule-steps N` for a step-exact "
        "schedule. Data and initialisation are fixed by the seed.",
        "",
    ]
    if meta.get("notes"):
        lines += ["## What was tried", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    (folder / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oprm.synthetic.measure")
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "models" / "oprm-ar-mamba2"))
    ap.add_argument("--n-indist", type=int, default=256)
    ap.add_argument("--n-curve", type=int, default=50)
    ap.add_argument("--mults", default=",".join(map(str, DEFAULT_MULTS)))
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--filler-ratio", type=float, default=1.0)
    ap.add_argument("--overlap", type=int, default=0, help="OPRM chunk overlap in tokens")
    ap.add_argument("--write-card", action="store_true")
    ap.add_argument("--card-only", action="store_true", help="rewrite README.md from results.json, no measuring")
    ap.add_argument("--variants", nargs="?", const=",".join(DEFAULT_VARIANTS), default=None,
                    help="measure chunking/selection/IDK variants instead (comma list of chunking/rule/idk; "
                         "no value: the default set) and write variants.json")
    ap.add_argument("--seed", type=int, default=21_000, help="--variants: episode seeds are SEED + multiple")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    folder = Path(args.model)
    meta_path = folder / "training_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if args.card_only:
        write_card(str(folder), meta, json.loads((folder / "results.json").read_text()))
        return 0
    if args.variants:
        mults = [int(x) for x in args.mults.split(",")] if args.mults != ",".join(map(str, DEFAULT_MULTS)) \
            else [1, 4, 16, 64]
        res = variant_curve(str(folder), mults, args.n_curve, args.seed, meta.get("max_ctx_tokens", 128),
                            args.variants.split(","))
        (folder / "variants.json").write_text(json.dumps(res, indent=1))
        print(variant_table(res))
        return 0
    res = measure(str(folder), args.n_indist, args.n_curve, [int(x) for x in args.mults.split(",")],
                  meta.get("max_ctx_tokens", 128), args.chunk_size, args.filler_ratio,
                  args.overlap)
    (folder / "results.json").write_text(json.dumps(res, indent=1))
    if args.write_card and meta:
        write_card(str(folder), meta, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
