"""Time to the first answer token on text: OPRM from scratch (the defaults, no document cache: one ``oprm ask``
question) against vanilla, on an associative-recall document and one question about one of its facts. With the
default ``support`` selection only the chunks whose support bound can beat the support found are run."""

from __future__ import annotations

from .timing import median, timed


def ttft_on_text(model: str, tokens: int, seed: int, repeats: int) -> dict:
    """OPRM from scratch against vanilla, the shipped model on an AR document of about ``tokens`` tokens: one new
    token each (OPRM's look-ahead, which is its answer's start, runs first), interleaved, CPU and wall seconds."""
    import random

    from oprm.engine import OPRM
    from oprm.synthetic.ar import make_ar_episode

    engine = OPRM.from_pretrained(model, document_cache_bytes=0)
    rng, parts, n = random.Random(seed), [], 0
    while n < tokens:
        parts.append(make_ar_episode(rng, 40))
        n += len(engine.tokenizer(parts[-1].context + "\n\n")["input_ids"])
    asked = parts[len(parts) // 2]
    kwargs = dict(context="\n\n".join(p.context for p in parts), query=asked.question, max_new_tokens=1)
    runs, chunks = {"vanilla": [], "oprm": []}, None
    for r in range(repeats):
        for mode in (("vanilla", "oprm") if r % 2 == 0 else ("oprm", "vanilla")):
            cpu, wall, out = timed(engine.generate, mode=mode, **kwargs)
            runs[mode].append({"cpu": round(cpu, 3), "wall": round(wall, 3), "tokens_processed": out.tokens_processed})
            if mode == "oprm":
                chunks, runs[mode][-1]["chunks_run"] = len(out.chunks), sum(c.entropy is not None for c in out.chunks)
    return {"model": model, "context_tokens": len(engine.tokenizer(kwargs["context"])["input_ids"]), "chunks": chunks,
            "answer": asked.answer, "oprm_answer": engine.generate(**dict(kwargs, max_new_tokens=8)).text, "runs": runs,
            "cpu_ratio": round(median([r["cpu"] for r in runs["oprm"]]) / median([r["cpu"] for r in runs["vanilla"]]),
                               3)}


def ttft_line(t: dict) -> str:
    """The Markdown table row of ``python -m oprm.bench.speed``."""
    cpu = {m: median([r["cpu"] for r in runs]) for m, runs in t["runs"].items()}
    return (f"| time to first token on text, {t['model']}, {t['context_tokens']:,} tokens ({t['chunks']:,} chunks, "
            f"OPRM ran {t['runs']['oprm'][0]['chunks_run']}): vanilla / OPRM from scratch (CPU s) | "
            f"{cpu['vanilla']:.3f} / {cpu['oprm']:.3f} = **{t['cpu_ratio']}x** (answer {t['answer']}, OPRM "
            f"{t['oprm_answer']!r}) | <= 0.6x |")
