"""LongBench v2 answer extraction and reporting, matching THUDM/LongBench ``pred.py`` / ``result.py``.

* extraction: drop every ``*``, then ``The correct answer is \\(([A-D])\\)``, then ``The correct answer is ([A-D])``,
  else ``None``; ``judge = pred == answer``.
* report: Overall / Easy / Hard / Short / Medium / Long accuracies in percent, rounded to 1 decimal.

Upstream quirk we do NOT reproduce by default: ``result.py`` tests ``length == "short"`` twice (the second branch
was meant to be ``"medium"``), so upstream puts every medium sample into "Long" and then divides by a zero
medium count. We bucket medium correctly; pass ``upstream_medium_bug=True`` to get the upstream grouping
(medium merged into long, Medium reported as NaN instead of crashing).
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

__all__ = ["extract_answer", "judge", "score_v2", "V2_COLUMNS"]

V2_COLUMNS = ("Overall", "Easy", "Hard", "Short", "Medium", "Long")
_PAT_PAREN = re.compile(r"The correct answer is \(([A-D])\)")
_PAT_PLAIN = re.compile(r"The correct answer is ([A-D])")


def extract_answer(response: str | None) -> str | None:
    if response is None:
        return None
    response = response.replace("*", "")
    m = _PAT_PAREN.search(response)
    if m:
        return m.group(1)
    m = _PAT_PLAIN.search(response)
    if m:
        return m.group(1)
    return None


def judge(response: str | None, answer: str) -> bool:
    return extract_answer(response) == answer


def _pct(num: float, den: int) -> float:
    return round(100 * num / den, 1) if den else math.nan


def score_v2(records: Iterable[Mapping], compensated: bool = False, upstream_medium_bug: bool = False) -> dict:
    """records: dicts with ``judge`` (or ``pred``/``response`` + ``answer``), ``difficulty`` and ``length``.

    ``compensated=True`` counts an unparseable answer (``pred is None``) as 0.25, as upstream's flag does.
    """
    sums = {k: 0.0 for k in V2_COLUMNS}
    counts = {k: 0 for k in V2_COLUMNS}
    for rec in records:
        if "judge" in rec and rec["judge"] is not None:
            acc = float(bool(rec["judge"]))
            pred = rec.get("pred", "x")
        else:
            pred = rec.get("pred")
            if pred is None and "response" in rec:
                pred = extract_answer(rec["response"])
            acc = float(pred is not None and pred == rec.get("answer"))
        if compensated and pred is None:
            acc = 0.25
        keys = ["Overall", "Easy" if rec.get("difficulty") == "easy" else "Hard"]
        length = rec.get("length")
        if length == "short":
            keys.append("Short")
        elif length == "medium" and not upstream_medium_bug:
            keys.append("Medium")
        else:
            keys.append("Long")
        for k in keys:
            sums[k] += acc
            counts[k] += 1
    return {k: _pct(sums[k], counts[k]) for k in V2_COLUMNS}
