"""The eval runner: every task x config through an engine, one sample at a time, into resumable prediction files.

Modes:
* ``oprm``: the engine in OPRM mode, with the task's IDK prompt when the IDK filter is on, ``decode="all"`` for the
  summarisation tasks and the last-``chunk_size``-tokens rule for ``lcc`` (as the official OPRM script does);
* ``vanilla``: the whole prompt in one pass (no truncation, original prompt);
* ``truncate``: LongBench middle truncation of the prompt to ``chunk_size`` tokens;
* ``bm25``: the context is cut into passages of about 200 words, ranked by BM25 (``rank_bm25``) against the question
  and the best passages are kept, in document order, within one chunk's token budget; then a vanilla pass;
* ``oracle``: synthetic tasks only: OPRM decoding from the chunk holding the gold needle (selection="oracle").

The engine is anything that satisfies :class:`~oprm.eval.protocol.EvalEngine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from oprm.errors import OPRMUsageError
from oprm.metrics.longbench_v2 import extract_answer
from oprm.parallel import shard_samples
from oprm.tasks import Task, expand_tasks, load_task_samples
from oprm.tasks.data import ensure_task_data

from .baselines import bm25_context, template_query
from .configs import CHAT_CHOICES, RunConfig, build_configs, options_tag
from .protocol import EvalEngine, EvalResult
from .report import fmt, make_plots
from .ruler_report import write_ruler_summaries
from .scoring import aggregate
from .storage import PredictionFile, merge_parts, part_path, safe_name, write_summary

__all__ = ["evaluate", "run_sample", "RunSettings", "check_run_options"]


@dataclass(frozen=True)
class RunSettings:
    """Per-run choices that shape every request (not engine options)."""

    chat: str = "auto"  # auto (the engine's config), on, off, or longbench (LongBench pred.py's per-dataset rule)
    prompt_style: str = "longbench"  # LongBench's prompt strings or the official OPRM script's ("oprm")
    bm25_words: int = 200
    count_tokens: Callable[[str], int] = lambda s: len(s.split())
    generation: dict = field(default_factory=dict)  # GenerationConfig options of every call (sampling, stops, ...)


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _token_counter(engine: EvalEngine) -> Callable[[str], int]:
    tok = engine.tokenizer
    if tok is None:
        return lambda s: len(s.split())
    return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])


def _request(engine: EvalEngine, task: Task, sample: dict, cfg: RunConfig, budget: int,
             settings: RunSettings) -> tuple[str, dict, dict]:
    """(context, keyword arguments of ``generate``, extra record fields) of one sample under ``cfg``."""
    mode = cfg.mode
    idk_prompt = cfg.idk if mode == "oprm" else (mode == "oracle")
    template = sample.get("template") or task.template_for("oprm" if mode == "oracle" else mode, idk_prompt,
                                                           settings.prompt_style)
    context = sample["context"].strip() if task.suite == "longbench_v2" else sample["context"]
    fields = {k: v for k, v in sample.items()
              if isinstance(v, str) and k not in ("context", "template", "gold", "answer_prefix")}
    chunk_size = cfg.chunk_size or engine.config.chunk_size
    kw: dict[str, Any] = {"template": template, "fields": fields, **settings.generation, "max_new_tokens": budget}
    if sample.get("answer_prefix"):
        kw["answer_prefix"] = sample["answer_prefix"]
    if settings.chat != "auto":
        kw["chat"] = task.longbench_chat if settings.chat == "longbench" else settings.chat == "on"
    extra: dict[str, Any] = {}
    if mode == "oprm":
        # summaries decode every chunk (the task's rule); other tasks follow the engine's --decode
        kw.update(mode="oprm", decode="all" if task.decode == "all" else engine.config.decode, chunk_size=chunk_size)
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
        query = sample.get("input") or template_query(task.template)
        context, extra["bm25_passages"] = bm25_context(context, query, chunk_size, settings.count_tokens,
                                                       settings.bm25_words, task.language)
        kw["mode"] = "vanilla"
    elif mode == "oracle":
        if not sample.get("gold"):
            raise OPRMUsageError(f"oracle mode needs a gold text; task {task.name} has none")
        kw.update(mode="oprm", selection="oracle", gold_text=sample["gold"], chunk_size=chunk_size, idk=None)
    else:  # pragma: no cover - validated in build_configs
        raise OPRMUsageError(f"unknown mode {mode!r}")
    return context, kw, extra


def _generate_oracle(engine: EvalEngine, task: Task, sample: dict, context: str, kw: dict, extra: dict) -> EvalResult:
    """Oracle mode when no chunk holds the whole needle (it straddles a boundary): the chunk holding an answer."""
    for fallback in sample["answers"]:
        try:
            res = engine.generate(context=context, **{**kw, "gold_text": fallback})
        except OPRMUsageError:
            continue
        extra["oracle_gold"] = "answer"
        return res
    raise OPRMUsageError(f"oracle mode: no chunk of {task.name}/{sample['_id']} holds the gold text or the "
                         f"answer (chunk size {kw['chunk_size']})") from None


def run_sample(engine: EvalEngine, task: Task, sample: dict, cfg: RunConfig, budget: int,
               settings: RunSettings = RunSettings()) -> dict:
    """One sample under one config: the prediction record (LongBench's fields + score + OPRM diagnostics)."""
    context, kw, extra = _request(engine, task, sample, cfg, budget, settings)
    try:
        res = engine.generate(context=context, **kw)
    except OPRMUsageError:
        if cfg.mode != "oracle":
            raise
        res = _generate_oracle(engine, task, sample, context, kw, extra)
    idk_prompt = cfg.idk if cfg.mode == "oprm" else (cfg.mode == "oracle")
    raw = res.text
    pred = task.postprocess(raw, idk_prompt)
    rec: dict[str, Any] = {"_id": sample["_id"], "pred": pred, "answers": sample["answers"],
                           "all_classes": sample.get("all_classes"), "length": sample.get("length")}
    if raw != pred:
        rec["raw_pred"] = raw
    rec.update({
        "score": task.score(pred, sample), "task": task.name, "config": cfg.name, "mode": cfg.mode,
        "chunk_size": None if cfg.mode == "vanilla" else cfg.chunk_size or engine.config.chunk_size,
        "selection": res.selection or kw.get("selection"), "idk": idk_prompt, "max_new_tokens": budget,
        "chosen": list(res.chosen), "num_chunks": len(res.chunks),
        "entropies": [None if c.entropy is None else _finite(float(c.entropy)) for c in res.chunks],
        "idk_chunks": [int(c.index) for c in res.chunks if c.is_idk],
        "idk_fallback": bool(res.idk_fallback_used),
    })
    if "total" in res.timings:
        rec["seconds"] = round(float(res.timings["total"]), 4)
    if task.suite == "longbench_v2":
        rec.update({"response": raw, "pred": extract_answer(raw), "answer": sample["answers"][0],
                    "judge": extract_answer(raw) == sample["answers"][0], "difficulty": sample.get("difficulty"),
                    "domain": sample.get("domain"), "sub_domain": sample.get("sub_domain")})
    if "setting" in sample:
        rec["setting"] = sample["setting"]
    rec.update(extra)
    return rec


def check_run_options(chat: str = "auto", prompt_style: str = "longbench", max_new_tokens_budget: str = "official",
                      limit: int | None = None, max_new_tokens: int | None = None) -> None:
    """The run options' checks (``oprm eval`` calls them before loading a model; ``evaluate`` for library users)."""
    if chat not in CHAT_CHOICES:
        raise OPRMUsageError(f"chat must be auto, on, off or longbench, got {chat!r}")
    if prompt_style not in ("longbench", "oprm"):
        raise OPRMUsageError(f"prompt_style must be 'longbench' or 'oprm', got {prompt_style!r}")
    if max_new_tokens_budget not in ("official", "oprm"):
        raise OPRMUsageError(f"max_new_tokens_budget must be 'official' or 'oprm', got {max_new_tokens_budget!r}")
    if limit is not None and int(limit) <= 0:
        raise OPRMUsageError(f"--limit must be positive, got {limit}")
    if max_new_tokens is not None and int(max_new_tokens) <= 0:
        raise OPRMUsageError(f"--max-new-tokens must be positive, got {max_new_tokens}")


def _task_list(tasks) -> list[Task]:
    out: list[Task] = []
    for t in ([tasks] if isinstance(tasks, (str, Task)) else tasks):
        for tt in ([t] if isinstance(t, Task) else expand_tasks(t)):
            if tt.name not in {x.name for x in out}:
                out.append(tt)
    if not out:
        raise OPRMUsageError("no tasks given (e.g. --tasks longbench_e,ar)")
    return out


def evaluate(engine: EvalEngine, tasks, modes: Sequence[str] | str = ("oprm", "vanilla"), chunk_sizes=None,
             selections=None, idk: bool | Sequence[bool] = True, limit: int | None = None,
             data_dir: str | Path | None = None, output_path: str | Path = "results", seed: int = 42, *,
             model_name: str | None = None, max_new_tokens_budget: str = "official", download: bool = False,
             synthetic_options: dict | None = None, chat: str = "auto", progress: bool = True, plots: bool = True,
             bm25_chunk_words: int = 200, max_new_tokens: int | None = None, prompt_style: str = "longbench",
             generation: dict | None = None, log: Callable[[str], None] | None = None, data_parallel=None) -> dict:
    """Run ``tasks`` x configs through ``engine`` and write predictions, results.json, results.md and plots.

    ``tasks``: names/groups (``"longbench_e,ar"``) or Task objects. ``idk``: True, False, or [True, False] for the
    IDK ablation. ``chat``: ``auto`` (engine default), ``on``, ``off`` or ``longbench`` (no chat template for
    trec/triviaqa/samsum/lsht/lcc/repobench-p, as LongBench's pred.py). ``max_new_tokens`` overrides every task's
    budget (smoke tests); ``generation`` adds GenerationConfig options to every call. ``prompt_style``: ``longbench`` (official LongBench strings) or ``oprm`` (the OPRM script's
    wording: trailing spaces etc.). Returns the results dict.
    """
    if not isinstance(engine, EvalEngine):
        raise OPRMUsageError("evaluate() needs an engine with config, tokenizer, name and generate() (e.g. oprm.OPRM)")
    check_run_options(chat, prompt_style, max_new_tokens_budget, limit, max_new_tokens)
    task_list = _task_list(tasks)
    configs = build_configs(modes, chunk_sizes, selections, idk, default_chunk_size=engine.config.chunk_size,
                            tag=options_tag(engine.config), default_selection=engine.config.selection)
    for cfg in configs:  # sizes and selections against the engine's other options (e.g. overlap < chunk size)
        if cfg.chunk_size:
            engine.config.replace(chunk_size=cfg.chunk_size, **({"selection": cfg.selection} if cfg.selection else {}))
    model_name = model_name or engine.name or "model"
    root = Path(output_path) / safe_name(str(model_name))
    root.mkdir(parents=True, exist_ok=True)
    settings = RunSettings(chat, prompt_style, bm25_chunk_words, _token_counter(engine), dict(generation or {}))
    if getattr(engine.tokenizer, "eval_prompt_format", None):  # RWKV runtime models: the OPRM script's wrapping
        engine.tokenizer.prompt_format = engine.tokenizer.eval_prompt_format  # (adapters/rwkv_world.py)
    syn_opts = dict(synthetic_options or {})
    if syn_opts.get("tokenizer") is None and engine.tokenizer is not None:
        syn_opts["tokenizer"] = engine.tokenizer
    # RULER sizes its inputs in the tokens the model reads: with the chat template when the run uses one
    syn_opts.setdefault("chat", engine.config.chat if chat in ("auto", "longbench") else chat == "on")
    syn_opts.setdefault("system_prompt", engine.config.system_prompt)
    log = log or (lambda msg: None)
    results: dict[str, Any] = {"model": str(model_name), "seed": seed, "limit": limit,
                               "max_new_tokens_budget": max_new_tokens_budget, "chat": chat,
                               "prompt_style": prompt_style, "tasks": {},
                               "configs": {cfg.name: {"config": cfg.to_dict(), "tasks": {}} for cfg in configs}}
    for task in task_list:  # fail fast: every data file is there (or downloaded) before any model work
        ensure_task_data(task, data_dir, download)
    is_writer = data_parallel is None or data_parallel.rank == 0
    for task in task_list:  # samples are loaded one task at a time (LongBench contexts are large)
        samples = load_task_samples(task, data_dir, limit, seed, download, syn_opts)
        results["tasks"][task.name] = {"suite": task.suite, "category": task.category, "metric": task.metric,
                                       "dataset": task.dataset, "n": len(samples)}
        if task.suite == "ruler" and samples:  # named in the tables: the essay haystack is not always RULER's
            results["tasks"][task.name]["haystack"] = samples[0]["setting"]["haystack"]
        budget = int(max_new_tokens) if max_new_tokens else task.budget(max_new_tokens_budget)
        for cfg in configs:
            if cfg.mode == "oracle" and task.suite not in ("synthetic", "ruler"):
                log(f"skipping oracle mode for {task.name}: it needs a gold needle (synthetic tasks only)")
                continue
            records = _run_config(engine, task, samples, cfg, root, budget, settings, data_parallel, progress)
            results["configs"][cfg.name]["tasks"][task.name] = agg = aggregate(task, records)
            log(f"{cfg.name}/{task.name}: {fmt(agg['score'])} (n={len(records)})")
        del samples
        if is_writer:
            results = write_summary(results, root)  # partial summaries are readable while a long run goes on
            if task.suite == "ruler":
                write_ruler_summaries(results, root)
    results["paths"] = {"root": str(root), "results_json": str(root / "results.json"),
                        "results_md": str(root / "results.md")}
    if plots and is_writer:
        results["paths"]["plots"] = [str(p) for p in make_plots(results, root / "plots")]
    return results


def _run_config(engine: EvalEngine, task: Task, samples: list[dict], cfg: RunConfig, root: Path, budget: int,
                settings: RunSettings, data_parallel, progress: bool) -> list[dict]:
    """The samples of one task under one config not yet in its prediction file; returns every record, in order."""
    fname = "longbench_v2.jsonl" if task.suite == "longbench_v2" else f"{task.dataset}.jsonl"
    path = root / cfg.name / task.pred_subdir / fname
    pred = PredictionFile(path)
    mine = samples
    if data_parallel is not None:  # torchrun: this rank's shard, into its own part file
        mine = shard_samples(samples, data_parallel.rank, data_parallel.world_size)
        done = {**pred.done}
        pred = PredictionFile(part_path(path, data_parallel.rank, data_parallel.world_size))
        pred.done = {**done, **pred.done}
    todo = [smp for smp in mine if smp["_id"] not in pred.done]
    from tqdm.auto import tqdm  # noqa: PLC0415 - progress bars only when a run starts

    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{cfg.name}/{task.name}",
              disable=not progress, leave=False) as bar:
        pred.append(_with_progress((run_sample(engine, task, smp, cfg, budget, settings) for smp in todo), bar))
    done = merge_parts(data_parallel, path, samples) if data_parallel is not None else pred.done
    return [done[smp["_id"]] for smp in samples if smp["_id"] in done]


def _with_progress(records, bar):
    for rec in records:
        yield rec
        bar.update(1)
