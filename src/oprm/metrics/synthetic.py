"""Metrics for the synthetic tasks (RULER-style string matching, passkey / AR exact recall).

RULER (NVIDIA/RULER ``scripts/eval/synthetic/constants.py``): predictions have ASCII control characters replaced
by ``\\n`` and are stripped; ``string_match_all`` = mean over references of ``ref.lower() in pred.lower()``;
``string_match_part`` = max over references. Per-sample values are in [0, 1]; datasets are averaged x100.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["postprocess_pred", "string_match_all", "string_match_part", "contains_score", "word_match", "SYNTHETIC_METRICS"]

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    return _CONTROL.sub("\n", prediction).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    if not references:
        return 0.0
    pred = postprocess_pred(prediction).lower()
    return sum(1.0 for r in references if r.lower() in pred) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    pred = postprocess_pred(prediction).lower()
    return max((1.0 if r.lower() in pred else 0.0 for r in references), default=0.0)


def contains_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Per-answer containment (case-insensitive); with eval.py's max-over-answers this is string_match_part."""
    return 1.0 if ground_truth.lower() in postprocess_pred(prediction).lower() else 0.0


def word_match(prediction: str, ground_truth: str, **kwargs) -> float:
    """1.0 when the gold answer occurs in the prediction as a whole word/number (case-insensitive).

    "1234" does not match inside "12345"; used for pass-key and associative-recall values and the IDK word.
    """
    pat = r"(?<!\w)" + re.escape(ground_truth.strip().lower()) + r"(?!\w)"
    return 1.0 if ground_truth.strip() and re.search(pat, postprocess_pred(prediction).lower()) else 0.0


# Metrics that take the whole reference list are flagged with ``all_refs = True``; score_sample-style callers
# that work per gold answer use ``contains`` instead.
def _all_refs(fn):
    fn.all_refs = True
    return fn


SYNTHETIC_METRICS = {
    "contains": contains_score,
    "word_match": word_match,
    "string_match_all": _all_refs(string_match_all),
    "string_match_part": _all_refs(string_match_part),
}
