"""Former home of ``oprm eval``; the code now lives in the :mod:`oprm.eval` package. Kept so imports keep working."""

from oprm.eval.baselines import bm25_context
from oprm.eval.cli import add_eval_arguments, add_parser, add_score_arguments, run_eval, run_score
from oprm.eval.configs import MODES, RunConfig, build_configs
from oprm.eval.report import results_markdown
from oprm.eval.runner import evaluate
from oprm.eval.scoring import aggregate, score_dir

__all__ = ["MODES", "RunConfig", "build_configs", "evaluate", "score_dir", "aggregate", "bm25_context",
           "results_markdown", "add_eval_arguments", "add_score_arguments", "add_parser", "run_eval", "run_score"]
