"""``oprm eval`` / ``oprm score``: run benchmark tasks through an OPRM engine and score them like the official scripts.

Output layout (``output_path/<model>/``)::

    <config>/pred/<dataset>.jsonl      one line per sample: _id, pred, answers, all_classes, length (what LongBench's
    <config>/pred_e/<dataset>.jsonl    eval.py reads) + score and OPRM diagnostics (chosen chunks, entropies, ...)
    results.json                       every score, per config and task (LongBench-E buckets, v2 columns, settings)
    results.md                         markdown tables: tasks as rows, configs (mode/chunk size/selection/IDK) as columns
    plots/*.png                        score by length bucket per config; AR accuracy vs number of facts; NIAH vs length

``<config>`` is e.g. ``oprm_cs2000_entropy_idk``, ``vanilla``, ``truncate_cs2000``, ``bm25_cs2000``, ``oracle_cs2000``.
Runs are resumable: each finished sample is appended (and flushed) at once, and a rerun skips the ``_id``s already
in the file. ``score_dir`` rescores any folder of prediction files, including those of the official OPRM script.

Modes:
* ``oprm``: the engine in OPRM mode, with the task's IDK prompt when the IDK filter is on, ``decode="all"`` for the
  summarisation tasks and the last-``chunk_size``-tokens rule for ``lcc`` (as the official OPRM script does);
* ``vanilla``: the whole prompt in one pass (no truncation, original prompt);
* ``truncate``: LongBench middle truncation of the prompt to ``chunk_size`` tokens;
* ``bm25``: the context is cut into passages of about 200 words, ranked by BM25 (``rank_bm25``) against the question
  and the best passages are kept, in document order, within one chunk's token budget; then a vanilla pass;
* ``oracle``: synthetic tasks only: OPRM decoding from the chunk holding the gold needle (selection="oracle").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from oprm.errors import OPRMUsageError
from oprm.parallel import merge_prediction_files, shard_samples
from oprm.metrics.longbench import BUCKETS, DATASET2METRIC, length_bucket, score_sample
from oprm.metrics.longbench_v2 import V2_COLUMNS, extract_answer, score_v2
from oprm.tasks import Task, expand_tasks, load_task_samples
from oprm.tasks.data import ensure_task_data

__all__ = ["MODES", "RunConfig", "build_configs", "evaluate", "score_dir", "bm25_context", "results_markdown",
           "add_eval_arguments", "add_score_arguments", "add_parser", "run_eval", "run_score"]

MODES = ("oprm", "vanilla", "truncate", "bm25", "oracle")
DEFAULT_CHUNK_SIZE = 2000


# ==================================================================================================== configurations
@dataclass(frozen=True)
class RunConfig:
    mode: str
    chunk_size: int | None = None
    selection: str | None = None
    idk: bool = True

    @property
    def name(self) -> str:
        if self.mode == "vanilla":
            return "vanilla"
        if self.mode == "oprm":
            return f"oprm_cs{self.chunk_size}_{self.selection or 'entropy'}_{'idk' if self.idk else 'noidk'}"
        return f"{self.mode}_cs{self.chunk_size}"

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, int, bool)):
        return [x]
    return list(x)


def build_configs(modes: Sequence[str] | str, chunk_sizes: Sequence[int] | int | None = None,
                  selections: Sequence[str] | str | None = None, idk: bool | Sequence[bool] = True,
                  default_chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[RunConfig]:
    """The ablation grid: OPRM over chunk sizes x selections x IDK on/off; truncate/bm25/oracle per chunk size."""
    modes = [m.strip() for m in (modes.split(",") if isinstance(modes, str) else modes) if m and m.strip()]
    if not modes:
        raise OPRMUsageError("no modes given (e.g. --modes oprm,vanilla)")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise OPRMUsageError(f"unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    sizes = [int(c) for c in _as_list(chunk_sizes)] or [default_chunk_size]
    if any(c <= 0 for c in sizes):
        raise OPRMUsageError(f"chunk sizes must be positive, got {sizes}")
    sels = _as_list(selections) or [None]
    idks = [bool(i) for i in _as_list(idk)] or [True]
    out: list[RunConfig] = []
    for m in dict.fromkeys(modes):
        if m == "vanilla":
            out.append(RunConfig("vanilla"))
        elif m == "oprm":
            out += [RunConfig("oprm", c, s, i) for c in sizes for s in sels for i in idks]
        else:
            out += [RunConfig(m, c, None, True) for c in sizes]
    return list(dict.fromkeys(out))


# ==================================================================================================== BM25 baseline
_SENT_END = re.compile(r"(?<=[。？！；.!?;\n])")


def _bm25_tokens(text: str, language: str) -> list[str]:
    if language == "zh":
        return [ch for ch in text if not ch.isspace() and ch.isalnum()]
    return re.findall(r"\w+", text.lower())


def _split_passages(text: str, max_words: int, language: str) -> list[str]:
    size = (lambda s: len(s)) if language == "zh" else (lambda s: len(s.split()))
    limit = max_words * (2 if language == "zh" else 1)  # ~2 characters per Chinese word
    passages: list[str] = []
    cur: list[str] = []
    n = 0
    for unit in (u for u in _SENT_END.split(text) if u):
        k = size(unit)
        if cur and n + k > limit:
            passages.append("".join(cur))
            cur, n = [], 0
        cur.append(unit)
        n += k
    if cur:
        passages.append("".join(cur))
    return [p for p in passages if p.strip()]


def bm25_context(context: str, query: str, budget_tokens: int, count_tokens: Callable[[str], int] | None = None,
                 chunk_words: int = 200, language: str = "en") -> tuple[str, list[int]]:
    """The passages that best match ``query`` (BM25Okapi) within ``budget_tokens``, joined in document order.

    Passages have at most ``min(chunk_words, budget_tokens // 4)`` words (sentences are not split, so a long
    sentence makes a longer passage). Returns (new context, indices of the kept passages). Unlike LongBench's own BM25 script (which feeds raw strings
    to BM25Okapi and so ranks by characters), passages are tokenized into lower-cased words (characters for Chinese).
    """
    try:
        from rank_bm25 import BM25Okapi  # noqa: PLC0415
    except ImportError:
        raise OPRMUsageError("the bm25 mode needs rank_bm25: pip install rank_bm25") from None
    count_tokens = count_tokens or (lambda s: len(s.split()))
    # passages stay well below the budget so that several of them fit (at most a quarter of it, in words)
    chunk_words = max(1, min(chunk_words, budget_tokens // 4 or 1))
    passages = _split_passages(context, chunk_words, language)
    if not passages:
        return context, []
    corpus = [_bm25_tokens(p, language) or ["_"] for p in passages]
    q = _bm25_tokens(query, language)
    scores = BM25Okapi(corpus).get_scores(q) if q else [0.0] * len(passages)
    order = sorted(range(len(passages)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    used = 0
    for i in order:
        n = count_tokens(passages[i])
        if used + n <= budget_tokens:
            kept.append(i)
            used += n
    if not kept:  # even the best passage is too long: keep its head
        kept = [order[0]]
    kept.sort()
    return "\n".join(passages[i].strip() for i in kept), kept


# ==================================================================================================== one sample
def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _template_query(template: str) -> str:
    """A BM25 query for tasks without a question (summaries): the instruction text of the template."""
    return re.sub(r"\{[a-zA-Z_]+\}", " ", template)


def _count_fn(engine) -> Callable[[str], int]:
    tok = getattr(engine, "tokenizer", None)
    if tok is None:
        return lambda s: len(s.split())

    def count(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    return count


def _run_sample(engine, task: Task, sample: dict, cfg: RunConfig, max_new_tokens: int, chat: str,
                bm25_words: int, count_tokens: Callable[[str], int], prompt_style: str = "longbench") -> dict:
    mode = cfg.mode
    idk_prompt = cfg.idk if mode == "oprm" else (mode == "oracle")
    template = sample.get("template") or task.template_for("oprm" if mode == "oracle" else mode, idk_prompt,
                                                           prompt_style)
    context = sample["context"].strip() if task.suite == "longbench_v2" else sample["context"]
    fields = {k: v for k, v in sample.items()
              if isinstance(v, str) and k not in ("context", "template", "gold", "answer_prefix")}
    chunk_size = cfg.chunk_size or engine.config.chunk_size or DEFAULT_CHUNK_SIZE
    kw: dict[str, Any] = {"template": template, "fields": fields, "max_new_tokens": max_new_tokens}
    if sample.get("answer_prefix"):
        kw["answer_prefix"] = sample["answer_prefix"]
    if chat == "on":
        kw["chat"] = True
    elif chat == "off":
        kw["chat"] = False
    elif chat == "longbench":
        kw["chat"] = task.longbench_chat
    extra: dict[str, Any] = {}
    if mode == "oprm":
        kw.update(mode="oprm", decode=task.decode, chunk_size=chunk_size)
        if cfg.selection:
            kw["selection"] = cfg.selection
        if not cfg.idk:
            kw["idk"] = None
        if task.context_tail:
            kw["context_tail_tokens"] = chunk_size
    elif mode == "vanilla":
        kw["mode"] = "vanilla"
    elif mode == "truncate":
        kw.update(mode="truncate", max_input_tokens=chunk_size)
    elif mode == "bm25":
        query = sample.get("input") or _template_query(task.template)
        context, kept = bm25_context(context, query, chunk_size, count_tokens, bm25_words, task.language)
        extra["bm25_passages"] = kept
        kw["mode"] = "vanilla"
    elif mode == "oracle":
        if not sample.get("gold"):
            raise OPRMUsageError(f"oracle mode needs a gold text; task {task.name} has none")
        kw.update(mode="oprm", selection="oracle", gold_text=sample["gold"], chunk_size=chunk_size, idk=None)
    else:  # pragma: no cover - validated in build_configs
        raise OPRMUsageError(f"unknown mode {mode!r}")

    try:
        res = engine.generate(context=context, **kw)
    except OPRMUsageError:
        if mode != "oracle":
            raise
        # the needle straddles a chunk boundary: fall back to the chunk holding the answer itself
        res = None
        for fallback in sample["answers"]:
            try:
                res = engine.generate(context=context, **{**kw, "gold_text": fallback})
                extra["oracle_gold"] = "answer"
                break
            except OPRMUsageError:
                continue
        if res is None:
            raise OPRMUsageError(f"oracle mode: no chunk of {task.name}/{sample['_id']} holds the gold text or the "
                                 f"answer (chunk size {chunk_size})") from None
    raw = res.text
    pred = task.postprocess(raw, idk_prompt)
    chunks = list(getattr(res, "chunks", None) or [])
    rec: dict[str, Any] = {
        "_id": sample["_id"], "pred": pred, "answers": sample["answers"], "all_classes": sample.get("all_classes"),
        "length": sample.get("length"),
    }
    if raw != pred:
        rec["raw_pred"] = raw
    rec.update({
        "score": task.score(pred, sample), "task": task.name, "config": cfg.name, "mode": mode,
        "chunk_size": None if mode == "vanilla" else chunk_size,
        "selection": getattr(res, "selection", None) or kw.get("selection"),
        "idk": idk_prompt, "max_new_tokens": max_new_tokens,
        "chosen": list(getattr(res, "chosen", []) or []), "num_chunks": len(chunks),
        "entropies": [_finite(float(c.entropy)) for c in chunks if getattr(c, "entropy", None) is not None],
        "idk_chunks": [int(getattr(c, "index", i)) for i, c in enumerate(chunks) if getattr(c, "is_idk", False)],
        "idk_fallback": bool(getattr(res, "idk_fallback_used", False)),
    })
    timings = getattr(res, "timings", None)
    if isinstance(timings, dict) and "total" in timings:
        rec["seconds"] = round(float(timings["total"]), 4)
    if task.suite == "longbench_v2":
        rec.update({"response": raw, "pred": extract_answer(raw), "answer": sample["answers"][0],
                    "judge": extract_answer(raw) == sample["answers"][0], "difficulty": sample.get("difficulty"),
                    "domain": sample.get("domain"), "sub_domain": sample.get("sub_domain")})
    if "setting" in sample:
        rec["setting"] = sample["setting"]
    rec.update(extra)
    return rec


# ==================================================================================================== files
def _read_records(path: Path) -> list[dict]:
    """Lines of a prediction file; a torn last line (crash mid-write) is cut off so appends stay valid JSONL."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    return _parse_jsonl(data.decode("utf-8"))


def _parse_jsonl(text: str) -> list:
    """The JSON values of the non-empty lines of ``text``; unreadable lines are skipped."""
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _safe_name(name: str) -> str:
    name = name.rstrip("/\\")
    base = os.path.basename(name) or name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "model"


# ==================================================================================================== aggregation
def _mean100(values: Iterable[float]) -> float:
    values = list(values)
    return round(100 * sum(values) / len(values), 2) if values else math.nan


def aggregate(task: Task, records: list[dict]) -> dict:
    """Scores of one task from its prediction records (official formulas)."""
    out: dict[str, Any] = {"n": len(records)}
    if task.suite == "longbench_v2":
        out["v2"] = score_v2(records)
        out["score"] = out["v2"]["Overall"]
        return out
    out["score"] = _mean100(r["score"] for r in records)
    if task.suite in ("longbench", "longbench_e"):
        buckets: dict[str, list[float]] = {b: [] for b in BUCKETS}
        for r in records:
            if isinstance(r.get("length"), (int, float)):
                buckets[length_bucket(r["length"])].append(r["score"])
        out["buckets"] = {b: _mean100(v) for b, v in buckets.items()}
    else:
        by: dict[str, list[float]] = defaultdict(list)
        for r in records:
            st = r.get("setting") or {}
            key = st.get("num_facts", st.get("target_length"))
            if key is not None:
                by[str(key)].append(r["score"])
        out["by_setting"] = {k: _mean100(v) for k, v in sorted(by.items(), key=lambda kv: float(kv[0]))}
        out["setting_name"] = "num_facts" if task.name == "ar" else "target_length"
    return out


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return round(sum(vals) / len(vals), 2) if vals else math.nan


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def results_markdown(results: dict) -> str:
    """Markdown tables: LongBench (datasets as rows + category and overall means), LongBench-E buckets,
    LongBench v2 columns, synthetic tasks by setting; configs as columns."""
    cfgs = list(results.get("configs", {}))
    if not cfgs:
        return "(no results)\n"
    tasks_meta = results.get("tasks", {})
    lines = [f"# oprm eval: {results.get('model', '?')}", ""]

    def header(first: str, extra: str | None = None) -> None:
        cols = [first] + ([extra] if extra else []) + cfgs
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))

    def cell(cfg: str, task: str, key: str = "score", sub: str | None = None):
        t = results["configs"][cfg]["tasks"].get(task)
        if t is None:
            return None
        v = t.get(key)
        return v.get(sub) if (sub is not None and isinstance(v, dict)) else v

    for suite, title in (("longbench", "LongBench"), ("longbench_e", "LongBench-E (all lengths)")):
        names = [n for n, m in tasks_meta.items() if m["suite"] == suite]
        if not names:
            continue
        lines += [f"## {title}", ""]
        header("dataset", "category")
        cats: dict[str, list[str]] = defaultdict(list)
        for n in names:
            cats[tasks_meta[n]["category"]].append(n)
            lines.append(f"| {n} | {tasks_meta[n]['category']} | " + " | ".join(_fmt(cell(c, n)) for c in cfgs) + " |")
        cat_means = {c: {cat: _nanmean(cell(c, n) for n in ns) for cat, ns in cats.items()} for c in cfgs}
        for cat in cats:
            lines.append(f"| *{cat} (mean)* | | " + " | ".join(_fmt(cat_means[c][cat]) for c in cfgs) + " |")
        lines.append("| **dataset mean** | | " + " | ".join(_fmt(_nanmean(cell(c, n) for n in names)) for c in cfgs) + " |")
        lines.append("| **category mean** | | " + " | ".join(_fmt(_nanmean(cat_means[c].values())) for c in cfgs) + " |")
        lines.append("")
        if suite == "longbench_e":
            lines += ["## LongBench-E by length (mean over datasets)", ""]
            header("length")
            for b in BUCKETS:
                lines.append(f"| {b} | " + " | ".join(_fmt(_nanmean(cell(c, n, "buckets", b) for n in names))
                                                       for c in cfgs) + " |")
            lines.append("")
    if "longbench_v2" in tasks_meta:
        lines += ["## LongBench v2", ""]
        header("split")
        for col in V2_COLUMNS:
            lines.append(f"| {col} | " + " | ".join(_fmt(cell(c, "longbench_v2", "v2", col)) for c in cfgs) + " |")
        lines.append("")
    syn = [n for n, m in tasks_meta.items() if m["suite"] == "synthetic"]
    if syn:
        lines += ["## Synthetic tasks", ""]
        header("task", "setting")
        for n in syn:
            lines.append(f"| {n} | all | " + " | ".join(_fmt(cell(c, n)) for c in cfgs) + " |")
            keys: list[str] = []
            for c in cfgs:
                for k in (cell(c, n, "by_setting") or {}):
                    if k not in keys:
                        keys.append(k)
            sname = "facts" if n == "ar" else "len"
            for k in sorted(keys, key=float):
                lines.append(f"| {n} | {sname}={k} | " + " | ".join(_fmt(cell(c, n, "by_setting", k)) for c in cfgs) + " |")
        lines.append("")
    return "\n".join(lines)


def make_plots(results: dict, out_dir: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg): score by length bucket per config; AR accuracy vs facts; NIAH/passkey vs length."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks_meta = results.get("tasks", {})
    cfgs = results.get("configs", {})
    written: list[Path] = []
    lb = [n for n, m in tasks_meta.items() if m["suite"] in ("longbench", "longbench_e")]
    if lb:
        fig, ax = plt.subplots(figsize=(6, 4))
        for cname, c in cfgs.items():
            ys = [_nanmean((c["tasks"].get(n) or {}).get("buckets", {}).get(b, math.nan) for n in lb) for b in BUCKETS]
            ax.plot(list(BUCKETS), ys, marker="o", label=cname)
        ax.set_xlabel("context length (LongBench 'length' field)")
        ax.set_ylabel("score (mean over datasets)")
        ax.set_title("Score by length bucket")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / "score_by_length.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    for group, fname, xlabel in ((["ar"], "ar_accuracy_vs_facts.png", "number of facts"),
                                 ([n for n in tasks_meta if n.startswith("niah_") or n == "passkey"],
                                  "synthetic_by_length.png", "target context length")):
        group = [n for n in group if n in tasks_meta]
        if not group:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for cname, c in cfgs.items():
            for n in group:
                bs = (c["tasks"].get(n) or {}).get("by_setting") or {}
                if bs:
                    xs = sorted(bs, key=float)
                    label = cname if len(group) == 1 else f"{cname} / {n}"
                    ax.plot([float(x) for x in xs], [bs[x] for x in xs], marker="o", label=label)
        xs_all = [float(x) for c in cfgs.values() for n in group
                  for x in ((c["tasks"].get(n) or {}).get("by_setting") or {})]
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
            ax.set_xscale("log")  # fact counts and lengths sweep by doubling
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title("Associative recall" if group == ["ar"] else "Needle / pass-key retrieval")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / fname
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    return written


# ==================================================================================================== runner
def evaluate(engine, tasks, modes: Sequence[str] | str = ("oprm", "vanilla"), chunk_sizes=None, selections=None,
             idk: bool | Sequence[bool] = True, limit: int | None = None, data_dir: str | Path | None = None,
             output_path: str | Path = "results", seed: int = 42, *, model_name: str | None = None,
             max_new_tokens_budget: str = "official", download: bool = False,
             synthetic_options: dict | None = None, chat: str = "auto", progress: bool = True, plots: bool = True,
             bm25_chunk_words: int = 200, max_new_tokens: int | None = None, prompt_style: str = "longbench",
             log: Callable[[str], None] | None = None, data_parallel=None) -> dict:
    """Run ``tasks`` x configs through ``engine`` and write predictions, results.json, results.md and plots.

    ``tasks``: names/groups (``"longbench_e,ar"``) or Task objects. ``idk``: True, False, or [True, False] for the
    IDK ablation. ``chat``: ``auto`` (engine default), ``on``, ``off`` or ``longbench`` (no chat template for
    trec/triviaqa/samsum/lsht/lcc/repobench-p, as LongBench's pred.py). ``max_new_tokens`` overrides every task's
    budget (smoke tests). ``prompt_style``: ``longbench`` (official LongBench strings) or ``oprm`` (the OPRM script's
    wording: trailing spaces etc.). Returns the results dict.
    """
    if chat not in ("auto", "on", "off", "longbench"):
        raise OPRMUsageError(f"chat must be auto, on, off or longbench, got {chat!r}")
    if prompt_style not in ("longbench", "oprm"):
        raise OPRMUsageError(f"prompt_style must be 'longbench' or 'oprm', got {prompt_style!r}")
    if max_new_tokens_budget not in ("official", "oprm"):
        raise OPRMUsageError(f"max_new_tokens_budget must be 'official' or 'oprm', got {max_new_tokens_budget!r}")
    if limit is not None and int(limit) <= 0:
        raise OPRMUsageError(f"--limit must be positive, got {limit}")
    if max_new_tokens is not None and int(max_new_tokens) <= 0:
        raise OPRMUsageError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    task_list: list[Task] = []
    for t in tasks:
        for tt in ([t] if isinstance(t, Task) else expand_tasks(t)):
            if tt.name not in {x.name for x in task_list}:
                task_list.append(tt)
    if not task_list:
        raise OPRMUsageError("no tasks given (e.g. --tasks longbench_e,ar)")
    configs = build_configs(modes, chunk_sizes, selections, idk,
                            default_chunk_size=engine.config.chunk_size or DEFAULT_CHUNK_SIZE)
    model_name = model_name or getattr(getattr(getattr(engine, "model", None), "config", None), "_name_or_path", None) \
        or "model"
    root = Path(output_path) / _safe_name(str(model_name))
    root.mkdir(parents=True, exist_ok=True)
    count_tokens = _count_fn(engine)
    tokenizer = getattr(engine, "tokenizer", None)
    if getattr(tokenizer, "eval_prompt_format", None):  # hook: RWKV runtime models take the OPRM script's format
        tokenizer.prompt_format = tokenizer.eval_prompt_format  # (adapters/rwkv_world.py)
    syn_opts = dict(synthetic_options or {})
    if syn_opts.get("tokenizer") is None and getattr(engine, "tokenizer", None) is not None:
        syn_opts["tokenizer"] = engine.tokenizer
    log = log or (lambda msg: None)
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        tqdm = None

    results: dict[str, Any] = {"model": str(model_name), "seed": seed, "limit": limit,
                               "max_new_tokens_budget": max_new_tokens_budget, "chat": chat,
                               "prompt_style": prompt_style, "tasks": {}, "configs": {}}
    for cfg in configs:
        results["configs"][cfg.name] = {"config": cfg.to_dict(), "tasks": {}}
    for task in task_list:  # fail fast: every data file is there (or downloaded) before any model work
        ensure_task_data(task, data_dir, download)

    for task in task_list:  # samples are loaded one task at a time (LongBench contexts are large)
        samples = load_task_samples(task, data_dir, limit, seed, download, syn_opts)
        results["tasks"][task.name] = {"suite": task.suite, "category": task.category, "metric": task.metric,
                                       "dataset": task.dataset, "n": len(samples)}
        for cfg in configs:
            if cfg.mode == "oracle" and task.suite != "synthetic":
                log(f"skipping oracle mode for {task.name}: it needs a gold needle (synthetic tasks only)")
                continue
            fname = "longbench_v2.jsonl" if task.suite == "longbench_v2" else f"{task.dataset}.jsonl"
            path = root / cfg.name / task.pred_subdir / fname
            path.parent.mkdir(parents=True, exist_ok=True)
            done = {r.get("_id"): r for r in _read_records(path)}
            mine, write_path = samples, path
            if data_parallel is not None:  # torchrun: this rank's shard, into its own part file
                mine = shard_samples(samples, data_parallel.rank, data_parallel.world_size)
                write_path = _part_path(path, data_parallel.rank, data_parallel.world_size)
                done.update({r.get("_id"): r for r in _read_records(write_path)})
            todo = [smp for smp in mine if smp["_id"] not in done]
            budget = int(max_new_tokens) if max_new_tokens else task.budget(max_new_tokens_budget)
            bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{cfg.name}/{task.name}",
                       disable=not progress, leave=False) if tqdm else None
            with open(write_path, "a", encoding="utf-8") as f:
                for sample in todo:
                    rec = _run_sample(engine, task, sample, cfg, budget, chat, bm25_chunk_words, count_tokens,
                                      prompt_style)
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    f.flush()
                    done[rec["_id"]] = rec
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.close()
            if data_parallel is not None:
                done = _merge_parts(data_parallel, path, samples)
            records = [done[smp["_id"]] for smp in samples if smp["_id"] in done]
            results["configs"][cfg.name]["tasks"][task.name] = agg = aggregate(task, records)
            log(f"{cfg.name}/{task.name}: {_fmt(agg['score'])} (n={len(records)})")
        del samples
        if data_parallel is None or data_parallel.rank == 0:
            results = _write_summary(results, root)  # partial summaries are readable while a long run goes on

    results["paths"] = {"root": str(root), "results_json": str(root / "results.json"),
                        "results_md": str(root / "results.md")}
    if plots and (data_parallel is None or data_parallel.rank == 0):
        results["paths"]["plots"] = [str(p) for p in make_plots(results, root / "plots")]
    return results


def _part_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


def _merge_parts(parallel, path: Path, samples: list[dict]) -> dict:
    """Data-parallel: once every rank has finished its shard, rank 0 merges the part files into ``path`` (nothing
    lost, nothing duplicated) and removes them; every rank then reads the merged predictions."""
    world = parallel.world_size
    parallel.gather(None)  # barrier: every shard is written
    if parallel.rank == 0:
        parts = [path] + [_part_path(path, r, world) for r in range(world)]
        merge_prediction_files(parts, path, order=[smp["_id"] for smp in samples])
        for part in parts[1:]:
            part.unlink(missing_ok=True)
    parallel.gather(None)  # barrier: the merged file is there
    return {r.get("_id"): r for r in _read_records(path)}


def _write_summary(results: dict, root: Path) -> dict:
    """Write results.json / results.md, keeping configs and tasks of earlier runs into the same folder."""
    path = root / "results.json"
    if path.exists():
        try:
            prev = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            prev = {}
        if isinstance(prev, dict) and isinstance(prev.get("configs"), dict):
            tasks_meta = dict(prev.get("tasks") or {})
            tasks_meta.update(results["tasks"])
            merged = {k: _unnull(v) for k, v in prev["configs"].items() if isinstance(v, dict) and "tasks" in v}
            for cname, c in results["configs"].items():
                if cname in merged:
                    merged[cname]["config"] = c["config"]
                    merged[cname]["tasks"].update(c["tasks"])
                else:
                    merged[cname] = c
            results = {**results, "tasks": tasks_meta, "configs": merged}
    path.write_text(json.dumps(_jsonable(results), ensure_ascii=False, indent=2), encoding="utf-8")
    (root / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


def _unnull(obj):
    """Inverse of _jsonable for scores read back from results.json (null -> NaN)."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: (_unnull(v) if k not in ("config", "setting_name") else v) for k, v in obj.items()}
    return obj


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ==================================================================================================== rescoring
def score_dir(path: str | Path, map_idk: bool = True) -> dict[str, dict]:
    """Rescore every ``*.jsonl`` prediction file under ``path`` with the official scorers.

    The dataset is ``filename.split('.')[0]`` (as LongBench's eval.py), so the official OPRM script's files
    (``{dataset}.{timestamp}_{mode}_{ntoks}_toks[_cs_L][_type_e].jsonl``) and ours (``pred[_e]/{dataset}.jsonl``)
    both work. ``all_classes`` comes from the file's last line, as upstream. LongBench-E buckets are added for files in
    a ``pred_e`` folder or whose name contains ``_type_e``. With ``map_idk`` a Qasper prediction's "Error" is mapped to
    "unanswerable" first (the official OPRM script leaves it unmapped although its comment says it must be mapped).
    LongBench v2 files (``judge``/``response`` fields) get the Overall/Easy/Hard/Short/Medium/Long report; synthetic
    task files of ``oprm eval`` are rescored with their task's metric.
    """
    from oprm.tasks import get_task  # noqa: PLC0415

    root = Path(path)
    if not root.exists():
        raise OPRMUsageError(f"no such file or folder: {root}")
    files = [root] if root.is_file() else sorted(root.rglob("*.jsonl"))
    out: dict[str, dict] = {}
    for f in files:
        rows = [r for r in _read_jsonl_lenient(f) if isinstance(r, dict)]
        if not rows:
            continue
        rel = f.name if root.is_file() else f.relative_to(root).as_posix()
        dataset = f.name.split(".")[0]
        if "judge" in rows[0] or "response" in rows[0] or dataset == "longbench_v2":
            out[rel] = {"dataset": "longbench_v2", "n": len(rows), **{"v2": score_v2(rows)}}
            out[rel]["score"] = out[rel]["v2"]["Overall"]
            continue
        if dataset in DATASET2METRIC:
            task = get_task(dataset)
            all_classes = rows[-1].get("all_classes")
            scores, lengths = [], []
            for r in rows:
                pred = r.get("pred") or ""
                if map_idk:
                    pred = task.postprocess(pred, True)
                scores.append(score_sample(DATASET2METRIC[dataset], pred, r.get("answers") or [], all_classes,
                                           task.first_line))
                lengths.append(r.get("length"))
            res: dict[str, Any] = {"dataset": dataset, "n": len(rows), "score": _mean100(scores)}
            if "pred_e" in f.parts or "_type_e" in f.name:
                buckets: dict[str, list[float]] = {b: [] for b in BUCKETS}
                for s, n in zip(scores, lengths):
                    if isinstance(n, (int, float)):
                        buckets[length_bucket(n)].append(s)
                res["buckets"] = {b: _mean100(v) for b, v in buckets.items()}
            out[rel] = res
            continue
        task_name = rows[0].get("task") or dataset
        try:
            task = get_task(task_name)
        except OPRMUsageError:
            continue
        if task.suite != "synthetic":
            continue
        recs = [{**r, "score": task.score(r.get("pred") or "", r)} for r in rows]
        out[rel] = {"dataset": task.name, **aggregate(task, recs)}
    return out


def _read_jsonl_lenient(path: Path) -> list:
    return _parse_jsonl(path.read_text(encoding="utf-8"))


def score_table(scores: dict[str, dict]) -> str:
    lines = ["| file | dataset | n | score | 0-4k | 4-8k | 8k+ |", "|---|---|---|---|---|---|---|"]
    for rel, r in scores.items():
        b = r.get("buckets") or {}
        lines.append(f"| {rel} | {r.get('dataset')} | {r.get('n')} | {_fmt(r.get('score'))} | "
                     + " | ".join(_fmt(b.get(k)) for k in BUCKETS) + " |")
    return "\n".join(lines)


# ==================================================================================================== CLI glue
def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _int_csv(value: str | None, flag: str) -> list[int]:
    out = []
    for v in _csv(value):
        try:
            out.append(int(v))
        except ValueError:
            raise OPRMUsageError(f"{flag} takes comma-separated integers, got {v!r}") from None
    return out


def add_eval_arguments(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        try:
            from oprm.cli import add_model_arguments  # noqa: PLC0415

            add_model_arguments(p)
        except ImportError:  # pragma: no cover
            p.add_argument("--model", required=True)
            p.add_argument("--dtype", default="float32")
            p.add_argument("--device", default=None)
            p.add_argument("--threads", type=int, default=None)
            p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--tasks", default="longbench_e",
                   help="comma list of tasks or groups: longbench, longbench_en, longbench_e, longbench_v2, ar, niah, "
                        "passkey, synthetic, or single datasets (hotpotqa, hotpotqa_e, niah_single, ...)")
    p.add_argument("--modes", default="oprm,vanilla", help=f"comma list of {', '.join(MODES)} (default oprm,vanilla)")
    p.add_argument("--chunk-size", default=None, help="comma list of chunk sizes in tokens, e.g. 1000,2000,3000 "
                                                     "(default 2000); also the budget of truncate/bm25")
    p.add_argument("--selection", default=None, help="comma list of chunk selections (default: entropy)")
    idk = p.add_mutually_exclusive_group()
    idk.add_argument("--no-idk", action="store_true", help="OPRM without the IDK prompt and filter")
    idk.add_argument("--idk-ablation", action="store_true", help="run OPRM both with and without IDK")
    p.add_argument("--limit", type=int, default=None, help="first N samples per dataset (per setting for synthetic)")
    p.add_argument("--data-dir", default=None, help="folder with LongBench *.jsonl / LongBench-v2 data.json "
                                                   "(default $OPRM_DATA_DIR or ~/.cache/oprm/longbench)")
    p.add_argument("--download", action="store_true", help="fetch missing LongBench data from the HF Hub")
    p.add_argument("--output-path", default="results", help="output folder (default ./results)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-new-tokens-budget", choices=("official", "oprm"), default="official",
                   help="official = LongBench dataset2maxlen; oprm = the OPRM script's shorter budgets")
    p.add_argument("--prompt-style", choices=("longbench", "oprm"), default="longbench",
                   help="LongBench's prompt strings (default) or the official OPRM script's wording")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="override every task's generation budget (quick smoke runs)")
    p.add_argument("--chat", choices=("auto", "on", "off", "longbench"), default="auto",
                   help="chat template: engine default, always, never, or LongBench's per-dataset rule")
    p.add_argument("--samples", type=int, default=None, help="synthetic tasks: samples per setting (default 20)")
    p.add_argument("--ar-num-facts", default=None, help="AR: comma list of fact counts (default 15,30,60,120,160)")
    p.add_argument("--lengths", default=None, help="NIAH/passkey: comma list of context lengths in tokens "
                                                  "(default 1000,2000,4000,8000)")
    p.add_argument("--haystack", default=None, help="NIAH haystack: noise (default), filler, or a text file")
    p.add_argument("--depths", default=None, help="NIAH/passkey: comma list of needle depths in percent, cycled over "
                                                 "the samples (default: random)")
    p.add_argument("--niah-values", choices=("numbers", "uuids"), default=None, help="NIAH value type")
    p.add_argument("--ar-absent-fraction", type=float, default=None,
                   help="AR: share of episodes whose key is absent (gold answer: the IDK word)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _synthetic_options(args) -> dict:
    opts: dict[str, Any] = {}
    if getattr(args, "samples", None) is not None:
        opts["samples_per_setting"] = args.samples
    if getattr(args, "ar_num_facts", None):
        opts["ar_num_facts"] = _int_csv(args.ar_num_facts, "--ar-num-facts")
    if getattr(args, "lengths", None):
        opts["lengths"] = _int_csv(args.lengths, "--lengths")
    if getattr(args, "haystack", None):
        opts["haystack"] = args.haystack
    if getattr(args, "depths", None):
        try:
            opts["depths"] = [float(d) for d in _csv(args.depths)]
        except ValueError:
            raise OPRMUsageError(f"--depths takes comma-separated numbers, got {args.depths!r}") from None
        if any(not 0 <= d <= 100 for d in opts["depths"]):
            raise OPRMUsageError(f"--depths must be within 0..100, got {args.depths!r}")
    if getattr(args, "niah_values", None):
        opts["value_type"] = args.niah_values
    if getattr(args, "ar_absent_fraction", None) is not None:
        if not 0 <= args.ar_absent_fraction <= 1:
            raise OPRMUsageError(f"--ar-absent-fraction must be within 0..1, got {args.ar_absent_fraction}")
        opts["ar_absent_fraction"] = args.ar_absent_fraction
    sizes = opts.get("lengths", []) + opts.get("ar_num_facts", []) + [opts.get("samples_per_setting", 1)]
    if any(n <= 0 for n in sizes):
        raise OPRMUsageError("--lengths, --ar-num-facts and --samples take positive numbers")
    return opts


def run_eval(args, engine=None) -> int:
    """``oprm eval``: validate flags, load the model, run, print the summary table."""
    import sys  # noqa: PLC0415

    tasks = expand_tasks(args.tasks)
    chunk_sizes = _int_csv(args.chunk_size, "--chunk-size")
    selections = _csv(args.selection)
    if selections:
        from oprm.selection import SELECTIONS  # noqa: PLC0415

        bad = [s for s in selections if s not in SELECTIONS]
        if bad:
            raise OPRMUsageError(f"unknown selection {bad[0]!r}; choose from {', '.join(SELECTIONS)}")
    idk: bool | list[bool] = [True, False] if args.idk_ablation else (not args.no_idk)
    build_configs(args.modes, chunk_sizes, selections, idk)  # validate before loading a model
    synthetic_options = _synthetic_options(args)
    if args.limit is not None and args.limit <= 0:
        raise OPRMUsageError(f"--limit must be positive, got {args.limit}")
    data_parallel = None
    from oprm.parallel import ChunkParallel, init_from_env  # noqa: PLC0415

    if init_from_env():  # torchrun: samples are sharded across ranks (before loading: each rank picks its GPU)
        data_parallel = ChunkParallel()
    if engine is None:
        from oprm.engine import OPRM, set_threads  # noqa: PLC0415

        set_threads(getattr(args, "threads", None))
        engine = OPRM.from_pretrained(args.model, dtype=getattr(args, "dtype", "float32"),
                                      device=getattr(args, "device", None),
                                      trust_remote_code=getattr(args, "trust_remote_code", False),
                                      chunk_size=chunk_sizes[0] if chunk_sizes else DEFAULT_CHUNK_SIZE)
    results = evaluate(engine, tasks, args.modes, chunk_sizes or None, selections or None, idk, args.limit,
                       args.data_dir, args.output_path, args.seed, model_name=args.model,
                       max_new_tokens_budget=args.max_new_tokens_budget, download=args.download,
                       synthetic_options=synthetic_options, chat=args.chat, progress=not args.quiet,
                       plots=not args.no_plots, max_new_tokens=args.max_new_tokens,
                       prompt_style=args.prompt_style, log=lambda m: print(m, file=sys.stderr) if not args.quiet else None,
                       data_parallel=data_parallel)
    if data_parallel is not None and data_parallel.rank != 0:
        return 0
    print(results_markdown(results))
    print(f"results: {results['paths']['results_json']}")
    return 0


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a prediction file or a folder of them (searched recursively)")
    p.add_argument("--no-idk-map", action="store_true", help="do not map Qasper 'Error' to 'unanswerable'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--output", default=None, help="also write the scores to this JSON file")


def run_score(args) -> int:
    scores = score_dir(args.path, map_idk=not args.no_idk_map)
    if not scores:
        raise OPRMUsageError(f"no scorable prediction files (*.jsonl) under {args.path}")
    if args.output:
        Path(args.output).write_text(json.dumps(_jsonable(scores), ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps(_jsonable(scores), ensure_ascii=False, indent=2) if args.json else score_table(scores))
    return 0


def add_parser(sub) -> None:
    """Register ``oprm eval`` and ``oprm score`` on the CLI's subparsers."""
    pe = sub.add_parser("eval", help="run LongBench / LongBench-E / LongBench v2 / synthetic tasks",
                        description="Evaluate a model with OPRM and baselines; writes predictions, results.json, "
                                    "results.md and plots.")
    add_eval_arguments(pe)
    pe.set_defaults(func=run_eval)
    ps = sub.add_parser("score", help="rescore prediction files with the official LongBench scorers")
    add_score_arguments(ps)
    ps.set_defaults(func=run_score)
