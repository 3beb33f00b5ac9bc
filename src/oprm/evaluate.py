"""Former home of ``oprm eval``; the code now lives in the :mod:`oprm.eval` package. Kept so imports keep working."""

from oprm.eval.baselines import bm25_context  # noqa: F401
from oprm.eval.cli import add_eval_arguments, add_parser, add_score_arguments, run_eval, run_score  # noqa: F401
from oprm.eval.configs import MODES, RunConfig, build_configs  # noqa: F401
from oprm.eval.report import results_markdown  # noqa: F401
from oprm.eval.runner import evaluate  # noqa: F401
from oprm.eval.scoring import aggregate, score_dir  # noqa: F401
