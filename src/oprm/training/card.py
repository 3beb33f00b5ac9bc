"""The shipped model's card (``README.md`` of its folder), written from ``training_meta.json``, the measurement's
``results.json`` and, when present, the variants ablation's ``variants.json`` and the chunk-size sweep's
``chunk_sizes.json``."""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..report import markdown_table

MEASURE_COMMAND = "python -m oprm.training.measure"  # how the card tells readers to re-measure


def variant_table(res: dict) -> str:
    rows = []
    chunkings = sorted(res["curve"][0]["oracle"])
    for p in res["curve"]:
        rows.append([f"{p['mult']}x", p["num_facts"], f"{p['vanilla']:.2f}"]
                    + [f"{p['oprm'][v]:.2f}" for v in res["variants"]]
                    + [f"{p['oracle'][c]:.2f}" for c in chunkings]
                    + [f"{p['keyless_answer_rate'][c]:.3f}" for c in chunkings])
    return markdown_table(["length", "facts", "vanilla"] + res["variants"] + [f"oracle {c}" for c in chunkings]
                          + [f"key-less chunks answering ({c})" for c in chunkings], rows)


def chunk_size_table(res: dict) -> str:
    last = str(res["mults"][-1])
    rows = [[f"L = {s}"] + [f"{res['accuracy'][str(s)][str(m)]:.3f}" for m in res["mults"]]
            + [f"{res['mean'][str(s)]:.3f}", f"{res['seconds_per_episode'][str(s)][last]:.2f}"] for s in res["sizes"]]
    return markdown_table(["chunk size"] + [f"{m}x" for m in res["mults"]] + ["mean", f"s / episode at {last}x"],
                          rows)


def chunk_size_section(res: dict) -> list[str]:
    """Model-card lines for a ``--chunk-sizes`` run: OPRM's accuracy against the chunk size L."""
    return [
        "## Chunk size",
        "",
        f"OPRM with the engine's default options (`{res['options']['chunking']}` chunking, "
        f"`{res['options']['selection']}` selection, IDK `{res['options']['idk']}`) at each chunk size L; {res['n']} episodes a point (seeds "
        f"{res['seed']} + multiple), lengths in multiples of the {res['train_len']}-token training length. Shorter "
        "chunks hold fewer facts, so the model confuses fewer keys; the look-ahead selection keeps the many key-less "
        f"chunks out. `oprm demo` uses the best (L = {res['best']}); its paper line keeps L = the training length.",
        "",
        chunk_size_table(res),
        "",
    ]


def variants_section(var: dict) -> list[str]:
    """Model-card lines for a ``--variants`` run: the ablation of chunking x selection x IDK."""
    lines = [
        "## OPRM variants: chunking x selection x IDK",
        "",
        f"Same episodes as the curve above where the seeds match (seeds {var['seed']} + multiple, {var['n']} episodes a "
        "point). Each chunk's prompt is run on its own exactly as the engine does (`oprm.training.chunk_stats`, a "
        "replay of the rules that `tests/test_curve.py` checks against the engine) and "
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
        "and how OPRM (arXiv 2505.07793) prevents it: split the long document into chunks no longer than the "
        "training length, prefill every chunk, drop the chunks that answer `Error`, decode from the most confident "
        "one.",
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
        "The folder's `prompt_format.json` holds this template and the question -> answer-prefix rule, so a bare "
        "question (`oprm ask --model oprm-ar-mamba2 --context doc.txt --question \"What is the code of the amber "
        "falcon?\"`, or the same through `oprm serve`) is asked exactly this way.",
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
    sizes_path = folder / "chunk_sizes.json"
    sweep = json.loads(sizes_path.read_text()) if sizes_path.exists() else None
    if sweep:
        lines += chunk_size_section(sweep)
    lines += [
        "## Reproduce",
        "",
        "From the repository root with the package installed (`pip install -e .`), one CPU thread:",
        "",
        "```bash",
        "export OMP_NUM_THREADS=1",
        *meta.get("reproduce", [meta["command"]]),
        f"{MEASURE_COMMAND} --model src/oprm/models/oprm-ar-mamba2 --write-card",
        *([f"{MEASURE_COMMAND} --model src/oprm/models/oprm-ar-mamba2 --chunk-sizes "
           f"{','.join(map(str, sweep['sizes']))} --n-curve {sweep['n']}"] if sweep else []),
        "```",
        "",
        f"Trained and measured with oprm {__version__}, transformers, torch on CPU (1 thread). "
        + ("Every stage's learning-rate schedule and curriculum run over a fixed number of steps "
           "(`--schedule-steps`), so a re-run takes the same steps on any machine"
           if all("--schedule-steps" in c for c in meta.get("stages", [meta["command"]])) else
           "The learning-rate schedule and the curriculum follow the wall-clock budget (`--minutes`) unless "
           "`--schedule-steps N` is given, so a re-run on a faster or slower machine takes a different number of "
           "steps") + "; data and initialisation are fixed by the seed.",
        "",
    ]
    if meta.get("notes"):
        lines += ["## What was tried", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    (folder / "README.md").write_text("\n".join(lines))
