"""One run, every speed figure of issue 23 side by side: start-up, a real-model question end to end against the
floor, plain forward vs OPRM prefill, fp32 vs bf16, and decode vs transformers' ``generate``.

    python -m oprm.bench.speed --output-path docs/bench/speed            # SmolLM2 (GGUF) + the shipped Mamba2
    python -m oprm.bench.speed --quick                                   # smaller inputs, fewer repeats

Prints one JSON object (also written to ``speed.json``) and a Markdown table (``speed.md``). Every figure is taken in
process CPU time (``time.process_time``; a subprocess's from ``RUSAGE_CHILDREN``) and wall time; on a shared
machine quote the CPU figures and the ratios, which pair runs made in the same process, interleaved.

* **end to end**: ``oprm ask --model smollm2`` on a secret number planted in real prose (Moby-Dick, ``--tokens``
  tokens), start-up included, in a fresh process; the **floor** is a plain forward of the same context tokens in
  bf16, in rows of ``--chunk-size`` tokens (micro-batches of 8192 tokens), in this process. Target: <= 1.5x.
* **start-up**: a fresh process importing oprm, loading SmolLM2 (GGUF: converted once, then read from the cache) and
  rendering the chat prompt, phase by phase.
* **prefill**: OPRM's prefill (entropy selection, one new token, no document cache) against a plain batched forward
  of the same context tokens in rows of the chunk size; tokens of context per second. Target: >= 0.9x.
* **fp32 vs bf16**: SmolLM2's plain forward in both.
* **decode**: one sequence, greedy, eos off: tokens/s of ``model.generate`` and of the engine's decode loop
  (``mode="vanilla"``), each as (time of 1 + n tokens - time of 1 token) / n. Target: >= 1x.
* **ttft**: time to the first answer token of OPRM from scratch (the defaults, no document cache, as one ``oprm
  ask`` question) against vanilla on text: the shipped model on an associative-recall document of ``--ttft-tokens``
  tokens, one question about one of its facts. Target: <= 0.6x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from .timing import median, timed
from .ttft import ttft_line, ttft_on_text

SMOLLM2 = "smollm2"
SHIPPED = "oprm-ar-mamba2"
MICRO_BATCH_TOKENS = 8192  # the engine's CPU default (engine.default_max_batch_tokens)


def plain_forward(model, ids: list[int], row_tokens: int, batch_tokens: int = MICRO_BATCH_TOKENS) -> int:
    """A plain forward of ``ids`` in rows of ``row_tokens`` (the last row may be shorter), ``batch_tokens`` per
    micro-batch, keeping one logit per row; returns the tokens run."""
    import torch

    rows = [ids[i:i + row_tokens] for i in range(0, len(ids), row_tokens)]
    per_batch = max(1, batch_tokens // row_tokens)
    with torch.no_grad():
        for b in range(0, len(rows), per_batch):
            batch = rows[b:b + per_batch]
            for same in {len(r) for r in batch}:  # a shorter last row runs alone
                model(torch.tensor([r for r in batch if len(r) == same]), logits_to_keep=1)
    return len(ids)


def oprm_prefill(engine, prefix, context, suffix, chunk_size: int):
    """OPRM's speculative prefill of every [P, C_i, S] with the cheapest selection and one new token."""
    return engine.generate(prefix_ids=prefix, context_ids=context, suffix_ids=suffix, chunking="tokens",
                           chunk_size=chunk_size, selection="entropy", idk=None, max_new_tokens=1,
                           document_cache_bytes=0)


def compare_prefill(model, engine, prefix, context, suffix, chunk_size: int, repeats: int,
                    kinds=("context", "prompts", "oprm")) -> dict:
    """Tokens of context per second, interleaved (the order turns each repeat): ``context``, a plain forward of the
    context in rows of the chunk size (the end-to-end floor's kind); ``prompts``, a plain forward of the rows
    [P, C_i, S] OPRM has to evaluate; ``oprm``, OPRM's prefill of those rows (its selection and one token included)."""
    chunks = [context[i:i + chunk_size] for i in range(0, len(context), chunk_size)]
    prompts = [prefix + c + suffix for c in chunks]
    calls = {"context": lambda n: plain_forward(model, context[:n * chunk_size], chunk_size),
             "prompts": lambda n: plain_forward(model, [t for p in prompts[:n] for t in p], len(prompts[0])),
             "oprm": lambda n: oprm_prefill(engine, prefix, context[:n * chunk_size], suffix, chunk_size)}
    runs = {k: [] for k in kinds}
    for kind in kinds:  # warm-up
        calls[kind](min(2, len(chunks)))
    for r in range(repeats):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            cpu, wall, _ = timed(calls[kind], len(chunks))
            runs[kind].append((cpu, wall))
    n = len(context)
    out = {"context_tokens": n, "chunk_size": chunk_size, "prefix_tokens": len(prefix), "suffix_tokens": len(suffix),
           "repeats": repeats}
    for kind, values in runs.items():
        out[f"{kind}_cpu_tok_s"] = round(n / median([c for c, _ in values]), 1)
        out[f"{kind}_wall_tok_s"] = round(n / median([w for _, w in values]), 1)
    for base in ("context", "prompts"):
        if "oprm" in runs and base in runs:
            for clock in ("cpu", "wall"):
                out[f"oprm_over_{base}_{clock}"] = round(out[f"oprm_{clock}_tok_s"] / out[f"{base}_{clock}_tok_s"], 3)
    return out


def compare_decode(model, engine, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    """Single-sequence greedy decode: ``model.generate`` vs the engine (eos off, so both make every token)."""
    import torch

    ids = torch.tensor([prompt])
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None

    def generate(k):
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=k, do_sample=False)[0, len(prompt):].tolist()

    def oprm(k):
        return engine.generate(prefix_ids=[], context_ids=prompt, suffix_ids=[], mode="vanilla", max_new_tokens=k,
                               eos_token_id=[]).token_ids

    try:
        runs = {"generate": [], "oprm": []}
        generate(2), oprm(2)  # warm-up
        same = generate(new_tokens + 1) == oprm(new_tokens + 1)
        for r in range(repeats):
            for name, fn in ((("generate", generate), ("oprm", oprm)) if r % 2 == 0
                             else (("oprm", oprm), ("generate", generate))):
                c1, w1, _ = timed(fn, 1)
                cn, wn, _ = timed(fn, new_tokens + 1)
                runs[name].append(((cn - c1) / new_tokens, (wn - w1) / new_tokens))
    finally:
        model.generation_config.eos_token_id = eos
    out = {"prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": repeats, "same_tokens": same}
    for name, values in runs.items():
        out[f"{name}_cpu_tok_s"] = round(1 / median([c for c, _ in values]), 1)
        out[f"{name}_wall_tok_s"] = round(1 / median([w for _, w in values]), 1)
    out["oprm_over_generate_cpu"] = round(out["oprm_cpu_tok_s"] / out["generate_cpu_tok_s"], 3)
    out["oprm_over_generate_wall"] = round(out["oprm_wall_tok_s"] / out["generate_wall_tok_s"], 3)
    return out


# --- start-up and end to end, in fresh processes ----------------------------------------------------------------------
STARTUP_SCRIPT = r"""
import json, sys, time
marks = [("start", time.process_time(), time.perf_counter())]
def mark(name):
    marks.append((name, time.process_time(), time.perf_counter()))
import torch, transformers
mark("import torch + transformers")
import oprm
from oprm.engine import OPRM
mark("import oprm")
import transformers.modeling_utils, transformers.generation.utils
mark("transformers' modeling imports (lazy)")
engine = OPRM.from_pretrained(sys.argv[1])
mark("load model + tokenizer")
engine.build_prompt("A short text.", "What is it?")
mark("first prompt (chat template)")
phases = {b[0]: {"cpu": round(b[1] - a[1], 3), "wall": round(b[2] - a[2], 3)} for a, b in zip(marks, marks[1:])}
print("OPRM_STARTUP " + json.dumps(phases))
"""


def _child(cmd: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(CPU seconds, wall seconds, completed process) of a child process (its user + system time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - w
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {proc.stderr.strip().splitlines()[-1:]}")
    return cpu, wall, proc


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}


def startup(model: str, threads: int) -> dict:
    """Phases of a fresh process's start-up (imports, model + tokenizer, first prompt), CPU and wall seconds."""
    cpu, wall, proc = _child([sys.executable, "-c", STARTUP_SCRIPT, model], _env(threads))
    line = next(x for x in proc.stdout.splitlines() if x.startswith("OPRM_STARTUP "))
    return {"phases": json.loads(line.split(" ", 1)[1]), "process_cpu": round(cpu, 2), "process_wall": round(wall, 2)}


def make_document(tokenizer, tokens: int, seed: int, folder: str) -> dict:
    """A secret number planted in the shipped Moby-Dick prose, about ``tokens`` tokens of the model's tokenizer."""
    from oprm.synthetic.niah import make_secret_number_episode

    def count(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    episode = make_secret_number_episode(seed, tokens, count=count)
    path = os.path.join(folder, f"secret-{tokens}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(episode.context)
    return {"path": path, "question": episode.question, "answer": episode.answer, "tokens": episode.length,
            "depth_percent": round(episode.depth, 1)}


def end_to_end(model: str, document: dict, threads: int, extra: list[str]) -> dict:
    """``oprm ask`` on the document in a fresh process: CPU and wall seconds, the answer, the engine's timings."""
    cmd = [sys.executable, "-m", "oprm", "ask", "--model", model, "--context", document["path"], "--question",
           document["question"], "--threads", str(threads), "--json", *extra]
    cpu, wall, proc = _child(cmd, _env(threads))
    result = json.loads(proc.stdout)
    return {"command": "oprm " + " ".join(cmd[3:]), "cpu": round(cpu, 2), "wall": round(wall, 2),
            "answer": result["text"], "correct": document["answer"] in result["text"], "chosen": result["chosen"],
            "selection": result["selection"], "tokens_processed": result["tokens_processed"],
            "engine_wall": {k: round(v, 2) for k, v in result["timings"].items()}}


# --- the run ------------------------------------------------------------------------------------------------------------
def run(args) -> dict:
    import tempfile

    import torch

    from oprm.engine import OPRM
    from oprm.models import load_model
    from oprm.prompts import default_qa_template

    torch.set_num_threads(args.threads)
    report = {"threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    log = (lambda *a: print(*a, file=sys.stderr, flush=True))

    parts = set(args.parts.split(","))
    if "startup" in parts:
        log("start-up ...")
        startup(SMOLLM2, args.threads)  # the first one may convert the GGUF file: not counted
        report["startup"] = startup(SMOLLM2, args.threads)

    if "ttft" in parts:
        log("time to first token on text ...")
        report["ttft"] = ttft_on_text(SHIPPED, args.ttft_tokens, args.seed, args.repeats)
    if not parts & {"e2e", "prefill", "decode"}:
        return report
    bf16, tokenizer = load_model(SMOLLM2, dtype="bfloat16")
    fp32, _ = load_model(SMOLLM2, dtype="float32") if parts & {"prefill", "decode"} else (None, None)
    document = make_document(tokenizer, args.tokens, args.seed, tempfile.mkdtemp(prefix="oprm-speed-"))
    report["document"] = document

    with open(document["path"], encoding="utf-8") as f:
        context_ids = tokenizer(f.read(), add_special_tokens=False)["input_ids"]
    if "e2e" in parts:
        log("end to end vs the floor ...")
        report["end_to_end"] = end_to_end_vs_floor(bf16, context_ids, document, args)
    engine16, engine32 = OPRM(bf16, tokenizer), OPRM(fp32, tokenizer) if fp32 is not None else None
    if "prefill" in parts:
        log("prefill, fp32 vs bf16 ...")
        frame = engine16.build_prompt("{context}", document["question"], template=default_qa_template())
        n = args.prefill_tokens // args.chunk_size * args.chunk_size
        report["prefill"] = {
            "smollm2_bf16": compare_prefill(bf16, engine16, frame.prefix_ids, context_ids[:n], frame.suffix_ids,
                                            args.chunk_size, args.repeats),
            "smollm2_fp32": compare_prefill(fp32, engine32, frame.prefix_ids, context_ids[:n], frame.suffix_ids,
                                            args.chunk_size, args.repeats, kinds=("context",))}
    if parts & {"prefill", "decode"}:
        mamba, _ = load_model(SHIPPED, dtype="float32")
        engine_m = OPRM(mamba, None)
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(4, mamba.config.vocab_size, (32 + args.mamba_tokens + 32,), generator=g).tolist()
    if "prefill" in parts:
        from oprm.models import default_chunk_size

        report["prefill"]["mamba2_fp32"] = compare_prefill(mamba, engine_m, ids[:32], ids[32:-32], ids[-32:],
                                                           default_chunk_size(SHIPPED), args.repeats)
    if "decode" in parts:
        log("decode ...")
        prompt, reps = context_ids[:args.decode_prompt], args.decode_repeats
        report["decode"] = {"smollm2_bf16": compare_decode(bf16, engine16, prompt, args.new_tokens, reps),
                            "smollm2_fp32": compare_decode(fp32, engine32, prompt, args.new_tokens, reps),
                            "mamba2_fp32": compare_decode(mamba, engine_m, ids[:args.decode_prompt],
                                                          args.new_tokens * 2, reps)}
    return report


def end_to_end_vs_floor(bf16, context_ids, document, args) -> dict:
    """``oprm ask`` runs in fresh processes, interleaved with the floor in this one: floor, ask, ask, floor, ..."""
    e2e, floor = [], []
    for r in range(args.e2e_repeats):  # interleaved: floor, oprm ask, oprm ask, floor, ...
        for name in (("floor", "ask") if r % 2 == 0 else ("ask", "floor")):
            if name == "floor":
                cpu, wall, _ = timed(plain_forward, bf16, context_ids, args.chunk_size)
                floor.append({"cpu": round(cpu, 2), "wall": round(wall, 2)})
            else:
                e2e.append(end_to_end(SMOLLM2, document, args.threads, ["--chunk-size", str(args.chunk_size)]))
    return {
        "runs": e2e, "floor_runs": floor, "floor": f"plain bf16 forward of the {len(context_ids)} context tokens in "
                                                  f"{args.chunk_size}-token rows",
        "cpu_ratio": round(median([e["cpu"] for e in e2e]) / median([f["cpu"] for f in floor]), 2),
        "wall_ratio": round(median([e["wall"] for e in e2e]) / median([f["wall"] for f in floor]), 2)}


def markdown(report: dict) -> str:
    lines = ["| figure | measured | target |", "|---|---|---|"]
    if "end_to_end" in report:
        lines += _e2e_lines(report)
    if "startup" in report:
        lines += _startup_lines(report)
    if "prefill" in report:
        lines += _prefill_lines(report)
    if "ttft" in report:
        lines.append(ttft_line(report["ttft"]))
    for name, d in report.get("decode", {}).items():
        lines.append(f"| decode {name}: generate / OPRM tok/s (CPU) | {d['generate_cpu_tok_s']} / "
                     f"{d['oprm_cpu_tok_s']} = {d['oprm_over_generate_cpu']}x (wall {d['oprm_over_generate_wall']}x)"
                     f"{'' if d['same_tokens'] else ', tokens differ'} | >= 1x |")
    return "\n".join(lines)


def _e2e_lines(report: dict) -> list[str]:
    e = report["end_to_end"]
    lines, runs = [], e["runs"]
    lines.append(f"| `oprm ask --model smollm2`, {report['document']['tokens']:,}-token document, end to end "
                 f"(CPU s / wall s) | {median([r['cpu'] for r in runs]):.1f} / {median([r['wall'] for r in runs]):.1f}"
                 f" ({sum(r['correct'] for r in runs)}/{len(runs)} correct) | |")
    lines.append(f"| floor: {e['floor']} (CPU s / wall s) | {median([f['cpu'] for f in e['floor_runs']]):.1f} / "
                 f"{median([f['wall'] for f in e['floor_runs']]):.1f} | |")
    lines.append(f"| end to end / floor (CPU, wall) | {e['cpu_ratio']}x, {e['wall_ratio']}x | <= 1.5x |")
    return lines


def _startup_lines(report: dict) -> list[str]:
    s = report["startup"]
    phases = ", ".join(f"{k} {v['cpu']:.2f}" for k, v in s["phases"].items())
    return [f"| start-up, CPU s by phase | {phases} (process {s['process_cpu']:.2f}) | |"]


def _prefill_lines(report: dict) -> list[str]:
    lines = []
    for name, p in report["prefill"].items():
        if "oprm_cpu_tok_s" not in p:
            continue
        lines.append(f"| prefill {name} (L={p['chunk_size']}), context tok/s (CPU): plain [C_i] / plain [P, C_i, S] "
                     f"/ OPRM | {p['context_cpu_tok_s']:,.0f} / {p['prompts_cpu_tok_s']:,.0f} / "
                     f"{p['oprm_cpu_tok_s']:,.0f}: OPRM = {p['oprm_over_prompts_cpu']}x the same prompts' forward, "
                     f"{p['oprm_over_context_cpu']}x the context's (wall {p['oprm_over_prompts_wall']}x, "
                     f"{p['oprm_over_context_wall']}x) | >= 0.9x |")
    p16, p32 = report["prefill"]["smollm2_bf16"], report["prefill"]["smollm2_fp32"]
    lines.append(f"| SmolLM2 plain forward bf16 / fp32 (CPU tok/s) | {p16['context_cpu_tok_s']:,.0f} / "
                 f"{p32['context_cpu_tok_s']:,.0f} = {p16['context_cpu_tok_s'] / p32['context_cpu_tok_s']:.2f}x | |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m oprm.bench.speed", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16384, help="document tokens, end to end (default 16384)")
    p.add_argument("--prefill-tokens", type=int, default=4000, help="context tokens of the SmolLM2 prefill pairs")
    p.add_argument("--mamba-tokens", type=int, default=16384, help="context tokens of the Mamba2 prefill pair")
    p.add_argument("--chunk-size", type=int, default=2000, help="SmolLM2's chunk size and the floor's row (2000)")
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per decode timing (Mamba2: 2x)")
    p.add_argument("--decode-repeats", type=int, default=4, help="interleaved repeats of each decode pair (4)")
    p.add_argument("--decode-prompt", type=int, default=200, help="prompt tokens before decoding")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each in-process pair")
    p.add_argument("--e2e-repeats", type=int, default=2, help="end-to-end runs (each paired with a floor run)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, here and in the child processes (1)")
    p.add_argument("--ttft-tokens", type=int, default=32768, help="document tokens of the TTFT pair (32768)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="startup,e2e,prefill,decode,ttft", help="what to measure (default: all of "
                                                                               "startup,e2e,prefill,decode,ttft)")
    p.add_argument("--quick", action="store_true", help="4K-token document, 4K prefill tokens, one repeat")
    p.add_argument("--output-path", default=None, help="folder for speed.json, speed.md and the document")
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.prefill_tokens, args.mamba_tokens, args.ttft_tokens = 4096, 4000, 4096, 4096
        args.repeats, args.e2e_repeats, args.decode_repeats, args.new_tokens = 1, 1, 1, 16
    report = run(args)
    table = markdown(report)
    print(json.dumps(report, indent=2))
    print(table)
    if args.output_path:
        os.makedirs(args.output_path, exist_ok=True)
        with open(os.path.join(args.output_path, "speed.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.output_path, "speed.md"), "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
