"""``oprm eval`` and ``oprm score`` on the command line.

Engine flags come from :class:`~oprm.config.OPRMConfig` (``add_config_arguments``), so ``oprm eval`` accepts every
engine option ``oprm ask`` does; ``--chunk-size`` and ``--selection`` take comma lists (the ablation grid). Five
config fields have eval's own, richer flags instead: ``--modes`` (mode; plus bm25 and oracle), ``--chunk-size`` (also
truncate's ``max_input_tokens``), ``--no-idk``/``--idk-ablation`` (idk: the task prompts name the word "Error"),
``--chat auto|on|off|longbench`` (chat) and ``--seed`` (seed: the synthetic data and the engine alike). The default
configuration is the paper's (``OPRMConfig.paper()``), with no memory cache of documents (``EVAL_BASE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from oprm.config import (OPRMConfig, add_config_arguments, add_generation_arguments, config_from_args,
                         generation_from_args, grid_values)
from oprm.errors import OPRMUsageError

__all__ = ["add_eval_arguments", "add_score_arguments", "add_parser", "run_eval", "run_score", "eval_config"]

GRID = ("chunk_size", "selection")
OWN_FLAGS = ("mode", "max_input_tokens", "idk", "chat", "seed")  # config fields with eval's own flags (see above)
# every sample is a new context, so a memory cache would only hold past ones; without it `support` runs only the
# chunks that can win (RULER NIAH on SmolLM2 at 8K: 2.6-3.3 s a sample instead of 8.9-10.6, the same predictions)
EVAL_BASE = OPRMConfig.paper(document_cache_bytes=0)


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
    from oprm.eval.configs import CHAT_CHOICES, MODES

    if with_model:
        from oprm.cli import add_model_arguments

        add_model_arguments(p)
    p.add_argument("--tasks", default="longbench_e",
                   help="comma list of tasks or groups: longbench, longbench_en, longbench_e, longbench_v2, ar, niah, "
                        "passkey, synthetic, ruler, or single tasks (hotpotqa, hotpotqa_e, niah_single, "
                        "niah_single_1, ruler_vt, ...)")
    p.add_argument("--modes", default="oprm,vanilla", help=f"comma list of {', '.join(MODES)} (default oprm,vanilla); "
                                                           "--chunk-size is also the budget of truncate and bm25")
    add_config_arguments(p, exclude=OWN_FLAGS, grid=GRID, defaults=EVAL_BASE.to_dict())
    idk = p.add_mutually_exclusive_group()
    idk.add_argument("--no-idk", action="store_true", help="OPRM without the IDK prompt and filter")
    idk.add_argument("--idk-ablation", action="store_true", help="run OPRM both with and without IDK")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat_rule", choices=CHAT_CHOICES, default="auto",
                      help="chat template: the engine's default (on), always, never, or LongBench's per-dataset rule")
    chat.add_argument("--no-chat", dest="chat_rule", action="store_const", const="off", help="same as --chat off")
    p.add_argument("--limit", type=int, default=None, help="first N samples per dataset (per setting for synthetic)")
    p.add_argument("--data-dir", default=None, help="folder with LongBench *.jsonl / LongBench-v2 data.json "
                                                   "(default $OPRM_DATA_DIR or ~/.cache/oprm/longbench)")
    p.add_argument("--download", action="store_true", help="fetch missing LongBench data from the HF Hub")
    p.add_argument("--output-path", default="results", help="output folder (default ./results)")
    p.add_argument("--seed", type=int, default=42, help="seeds the synthetic samples and the engine (default 42)")
    p.add_argument("--max-new-tokens-budget", choices=("official", "oprm"), default="official",
                   help="official = LongBench dataset2maxlen; oprm = the OPRM script's shorter budgets")
    p.add_argument("--prompt-style", choices=("longbench", "oprm"), default="longbench",
                   help="LongBench's prompt strings (default) or the official OPRM script's wording")
    add_generation_arguments(p, max_new_tokens=None)  # --max-new-tokens overrides every task's budget
    p.add_argument("--samples", type=int, default=None, help="synthetic tasks: samples per setting (default 20)")
    p.add_argument("--ar-num-facts", default=None, help="AR: comma list of fact counts (default 15,30,60,120,160)")
    p.add_argument("--lengths", default=None, help="NIAH/passkey/RULER: comma list of context lengths in tokens "
                                                  "(default 1000,2000,4000,8000; RULER 4096)")
    p.add_argument("--haystack", default=None, help="NIAH haystack: noise (default), filler, or a text file")
    p.add_argument("--depths", default=None, help="NIAH/passkey: comma list of needle depths in percent, cycled over "
                                                 "the samples (default: random)")
    p.add_argument("--niah-values", choices=("numbers", "uuids"), default=None, help="NIAH value type")
    p.add_argument("--ar-absent-fraction", type=float, default=None,
                   help="AR: share of episodes whose key is absent (gold answer: the IDK word)")
    p.add_argument("--ruler-essays", default=None,
                   help="RULER: folder of .txt files for the essay haystack (e.g. Paul Graham's essays, RULER's own); "
                        "default: the Moby-Dick chapters oprm ships (named in the results)")
    p.add_argument("--ruler-squad", default=None, help="RULER qa_1: SQuAD v2 dev JSON (dev-v2.0.json); "
                                                      "without it ruler_qa_1 is skipped")
    p.add_argument("--ruler-hotpotqa", default=None, help="RULER qa_2: HotpotQA dev JSON (distractor setting); "
                                                         "without it ruler_qa_2 is skipped")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def eval_config(args) -> OPRMConfig:
    """The engine configuration the flags describe (grid fields keep the paper's values; the runner sets them)."""
    return config_from_args(args, base=EVAL_BASE, grid=GRID)


def _synthetic_options(args) -> dict:
    opts: dict[str, Any] = {}
    if args.samples is not None:
        opts["samples_per_setting"] = args.samples
    if args.ar_num_facts:
        opts["ar_num_facts"] = _int_csv(args.ar_num_facts, "--ar-num-facts")
    if args.lengths:
        opts["lengths"] = _int_csv(args.lengths, "--lengths")
    if args.haystack:
        opts["haystack"] = args.haystack
    if args.depths:
        try:
            opts["depths"] = [float(d) for d in _csv(args.depths)]
        except ValueError:
            raise OPRMUsageError(f"--depths takes comma-separated numbers, got {args.depths!r}") from None
        if any(not 0 <= d <= 100 for d in opts["depths"]):
            raise OPRMUsageError(f"--depths must be within 0..100, got {args.depths!r}")
    if args.niah_values:
        opts["value_type"] = args.niah_values
    if args.ar_absent_fraction is not None:
        if not 0 <= args.ar_absent_fraction <= 1:
            raise OPRMUsageError(f"--ar-absent-fraction must be within 0..1, got {args.ar_absent_fraction}")
        opts["ar_absent_fraction"] = args.ar_absent_fraction
    for flag, key in (("--ruler-squad", "ruler_squad"), ("--ruler-hotpotqa", "ruler_hotpotqa")):
        path = getattr(args, key, None)
        if path:
            if not Path(path).is_file():
                raise OPRMUsageError(f"{flag}: no such file {path}")
            opts[key] = path
    if getattr(args, "ruler_essays", None):
        if not Path(args.ruler_essays).is_dir():
            raise OPRMUsageError(f"--ruler-essays: no such folder {args.ruler_essays}")
        opts["ruler_essays"] = args.ruler_essays
    sizes = opts.get("lengths", []) + opts.get("ar_num_facts", []) + [opts.get("samples_per_setting", 1)]
    if any(n <= 0 for n in sizes):
        raise OPRMUsageError("--lengths, --ar-num-facts and --samples take positive numbers")
    return opts


def _without_missing_qa(tasks: list, args) -> list:
    """RULER's QA tasks need the user's SQuAD / HotpotQA files: without them they are skipped with one line."""
    from oprm.tasks.ruler import RULER_QA_TASKS

    kept = []
    for t in tasks:
        key = RULER_QA_TASKS.get(t.name)
        if key and not getattr(args, key, None):
            print(f"skipping {t.name}: give --{key.replace('_', '-')} FILE (the dev set JSON) to run it",
                  file=sys.stderr)
            continue
        kept.append(t)
    if not kept:
        raise OPRMUsageError("no task left to run")
    return kept


def run_eval(args, engine=None) -> int:
    """``oprm eval``: check every flag, load the model, run, print the summary table."""
    from oprm.eval.configs import build_configs
    from oprm.eval.report import results_markdown
    from oprm.eval.runner import check_run_options, evaluate
    from oprm.tasks import expand_tasks

    tasks = _without_missing_qa(expand_tasks(args.tasks), args)
    chunk_sizes, selections = grid_values(args, "chunk_size"), grid_values(args, "selection")
    idk: bool | list[bool] = [True, False] if args.idk_ablation else (not args.no_idk)
    config = eval_config(args)
    build_configs(args.modes, chunk_sizes, selections, idk)  # every check before a model is loaded
    synthetic_options = _synthetic_options(args)
    generation = generation_from_args(args)
    check_run_options(args.chat_rule, args.prompt_style, args.max_new_tokens_budget, args.limit)
    data_parallel = None
    from oprm.parallel import ChunkParallel, init_from_env

    if init_from_env():  # torchrun: samples are sharded across ranks (before loading: each rank picks its GPU)
        data_parallel = ChunkParallel()
    if engine is None:
        from oprm.cli import engine_from_args

        engine = engine_from_args(args, config=config)
    results = evaluate(engine, tasks, args.modes, chunk_sizes or None, selections or None, idk, args.limit,
                       args.data_dir, args.output_path, args.seed, model_name=args.model,
                       max_new_tokens_budget=args.max_new_tokens_budget, download=args.download,
                       synthetic_options=synthetic_options, chat=args.chat_rule, progress=not args.quiet,
                       plots=not args.no_plots, max_new_tokens=generation.pop("max_new_tokens", None),
                       generation=generation, prompt_style=args.prompt_style,
                       log=None if args.quiet else lambda m: print(m, file=sys.stderr), data_parallel=data_parallel)
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
    from oprm.eval.report import score_table
    from oprm.eval.scoring import score_dir
    from oprm.eval.storage import jsonable

    scores = score_dir(args.path, map_idk=not args.no_idk_map)
    if not scores:
        raise OPRMUsageError(f"no scorable prediction files (*.jsonl) under {args.path}")
    if args.output:
        Path(args.output).write_text(json.dumps(jsonable(scores), ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps(jsonable(scores), ensure_ascii=False, indent=2) if args.json else score_table(scores))
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
