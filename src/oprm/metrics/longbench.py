"""LongBench v1 / LongBench-E scorers, behaviour-identical to the official ``metrics.py`` / ``eval.py``.

Reference (read, not copied): THUDM/LongBench @ 2e00731 (``LongBench/metrics.py``, ``LongBench/eval.py``).
Every function returns a float in [0, 1] for one (prediction, gold answer) pair; the dataset scorers take the
max over the gold answers, average, multiply by 100 and round to 2 decimals, exactly like ``eval.py``.

Deliberately reproduced upstream quirks (so numbers match published tables):

* ``classification_score`` removes "partial" matches from the match list *while iterating over it*, so the
  element right after a removed one is never examined; the difflib fallback of the original is dead code
  (it is guarded by ``list != 0``, which is always true), so a prediction matching no class scores 0.
* ``code_sim_score`` uses fuzzywuzzy's ``fuzz.ratio`` semantics: identical strings (even two empty strings)
  give 100, otherwise an empty side gives 0, otherwise ``round(100 * difflib.SequenceMatcher.ratio())``.
  We compute it with :mod:`difflib` directly, which is what fuzzywuzzy does when python-Levenshtein is not
  installed (LongBench's requirements do not install it), so the score never depends on that optional wheel.
* ``rouge_score`` uses the PyPI ``rouge`` package (not ``rouge-score``) and returns 0.0 on *any* exception
  (empty prediction, prediction made only of punctuation...). ``rouge`` splits on "." into sentences, is
  case-sensitive, counts *distinct* words, and rebuilds each LCS recursively: a sentence pair whose LCS walk needs
  more than ~990 steps hits RecursionError and scores 0.0 upstream. We reproduce that threshold exactly, whatever the
  caller's stack depth (see ``rouge_score``).
* ``scorer_e`` buckets on the sample's ``length`` field (words for EN/code, characters for ZH), and an empty
  bucket yields NaN (``numpy.mean([])``) rather than an error; we return ``float('nan')`` likewise.
"""

from __future__ import annotations

import difflib
import math
import re
import string
import sys
from collections import Counter
from typing import Callable, Iterable, Sequence

__all__ = [
    "normalize_answer", "normalize_zh_answer", "f1_score", "qa_f1_score", "qa_f1_zh_score", "rouge_score",
    "rouge_zh_score", "classification_score", "retrieval_score", "retrieval_zh_score", "count_score",
    "code_sim_score", "fuzz_ratio", "METRICS", "DATASET2METRIC", "FIRST_LINE_DATASETS", "get_metric",
    "score_sample", "score_dataset", "score_dataset_e", "length_bucket", "BUCKETS", "mean100", "bucket_means",
]

_EN_PUNCT = frozenset(string.punctuation)
# The Chinese punctuation string of the official normalize_zh_answer (it ends with an ASCII '.').
CN_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_ZH_PUNCT = frozenset(string.punctuation + CN_PUNCTUATION)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")

FIRST_LINE_DATASETS = ("trec", "triviaqa", "samsum", "lsht")
BUCKETS = ("0-4k", "4-8k", "8k+")


# ----------------------------------------------------------------------------------------------- normalisation
def normalize_answer(s: str) -> str:
    """lower -> drop ASCII punctuation -> articles to spaces -> collapse whitespace (SQuAD style)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _EN_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_zh_answer(s: str) -> str:
    """lower -> drop ASCII + Chinese punctuation -> remove *all* whitespace."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _ZH_PUNCT)
    return "".join(text.split())


def _jieba_cut(text: str) -> list[str]:
    try:
        import jieba  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Chinese LongBench metrics need jieba: pip install 'oprm[eval]' (or pip install jieba)") from exc
    jieba.setLogLevel(60)  # silence the "Building prefix dict" chatter
    return list(jieba.cut(text, cut_all=False))


# ----------------------------------------------------------------------------------------------- token F1
def f1_score(prediction: Sequence[str], ground_truth: Sequence[str], **kwargs) -> float:
    """Bag-of-tokens F1 (multiset intersection). 0 when nothing overlaps (including empty inputs)."""
    common = Counter(prediction) & Counter(ground_truth)
    same = sum(common.values())
    if same == 0:
        return 0
    precision = same / len(prediction)
    recall = same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    pred = [t for t in (normalize_zh_answer(x) for x in _jieba_cut(prediction)) if t]
    gold = [t for t in (normalize_zh_answer(x) for x in _jieba_cut(ground_truth)) if t]
    return f1_score(pred, gold)


# ----------------------------------------------------------------------------------------------- ROUGE-L
# How many more nested Python calls LongBench's eval.py can make from inside ``rouge_score`` before RecursionError:
# limit 1000, rouge_score called three frames deep (<module> -> scorer -> rouge_score), measured with _headroom().
_OFFICIAL_HEADROOM = 996


def _headroom() -> int:
    """Nested calls still possible below the caller (counts what the interpreter counts, C-level calls included)."""
    n = 0

    def probe():
        nonlocal n
        n += 1
        probe()

    try:
        probe()
    except RecursionError:
        pass
    return n


def rouge_score(prediction: str, ground_truth: str, _extra_official_frames: int = 0, **kwargs) -> float:
    """ROUGE-L F from the PyPI ``rouge`` package; any failure (e.g. empty hypothesis) scores 0.0.

    ``rouge`` 1.0.1 rebuilds each LCS *recursively* (one Python frame per step), so a reference/prediction sentence
    pair (sentences are split on ".") whose LCS walk is longer than ~990 steps raises RecursionError, which the
    official scorer turns into 0.0. Where that happens depends on the caller's stack and the recursion limit, so we
    give the rouge call exactly the recursion headroom it has in the official ``eval.py`` (limit 1000, three frames
    deep): the same inputs then score the same from a CLI, a notebook or a test runner.
    """
    try:
        from rouge import Rouge  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover
        raise ImportError("ROUGE metrics need the 'rouge' package: pip install rouge==1.0.1") from exc
    old_limit = sys.getrecursionlimit()
    target = _OFFICIAL_HEADROOM - _extra_official_frames
    probe_limit = old_limit
    if old_limit > 20000:  # keep the probe short (and off the C stack on old interpreters)
        try:
            sys.setrecursionlimit(20000)
            probe_limit = 20000
        except RecursionError:  # pragma: no cover - already deeper than that
            pass
    sys.setrecursionlimit(max(64, probe_limit + target - _headroom()))
    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # noqa: BLE001 - the official scorer swallows everything (RecursionError included)
        return 0.0
    finally:
        sys.setrecursionlimit(old_limit)
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return rouge_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)),
                       _extra_official_frames=1)


# ----------------------------------------------------------------------------------------------- classification
def classification_score(prediction: str, ground_truth: str, **kwargs) -> float:
    all_classes = kwargs.get("all_classes") or []
    matches = [c for c in all_classes if c in prediction]
    # Upstream removes from the list while iterating it: after a removal the following element shifts into the
    # current slot and the loop index still advances, so that element is skipped. Reproduce that exactly.
    i = 0
    while i < len(matches):
        term = matches[i]
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
        i += 1
    if ground_truth in matches:
        return 1.0 / len(matches)
    return 0.0


# ----------------------------------------------------------------------------------------------- retrieval / count
def _fraction_equal(prediction: str, target: str) -> float:
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return 0.0
    return float(sum(1 for n in numbers if n == str(target)) / len(numbers))


def retrieval_score(prediction: str, ground_truth: str, **kwargs) -> float:
    ids = re.findall(r"Paragraph (\d+)", ground_truth)
    if not ids:
        raise ValueError(f"passage_retrieval_en gold answer has no 'Paragraph N': {ground_truth!r}")
    return _fraction_equal(prediction, ids[0])


def retrieval_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    ids = re.findall(r"段落(\d+)", ground_truth)
    if not ids:
        raise ValueError(f"passage_retrieval_zh gold answer has no '段落N': {ground_truth!r}")
    return _fraction_equal(prediction, ids[0])


def count_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return _fraction_equal(prediction, str(ground_truth))


# ----------------------------------------------------------------------------------------------- code
def fuzz_ratio(s1: str | None, s2: str | None) -> int:
    """fuzzywuzzy ``fuzz.ratio`` (pure-python path): 0..100 integer."""
    if s1 is None or s2 is None:
        return 0
    if s1 == s2:
        return 100
    if len(s1) == 0 or len(s2) == 0:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, s1, s2).ratio()))


def code_sim_score(prediction: str, ground_truth: str, **kwargs) -> float:
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz_ratio(line, ground_truth) / 100


# ----------------------------------------------------------------------------------------------- registry
METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1_score,
    "qa_f1_zh": qa_f1_zh_score,
    "rouge": rouge_score,
    "rouge_zh": rouge_zh_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "retrieval_zh": retrieval_zh_score,
    "count": count_score,
    "code_sim": code_sim_score,
}

# eval.py's dataset2metric, by metric name.
DATASET2METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "dureader": "rouge_zh",
    "gov_report": "rouge", "qmsum": "rouge", "multi_news": "rouge", "vcsum": "rouge_zh",
    "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge", "lsht": "classification",
    "passage_retrieval_en": "retrieval", "passage_count": "count", "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_sim", "repobench-p": "code_sim",
}


def get_metric(name: str) -> Callable[..., float]:
    """A metric by metric name (``qa_f1``...) or by LongBench dataset name (``hotpotqa``...)."""
    if name in METRICS:
        return METRICS[name]
    if name in DATASET2METRIC:
        return METRICS[DATASET2METRIC[name]]
    # synthetic metrics live in a sibling module; import lazily to avoid a cycle
    from oprm.metrics.synthetic import SYNTHETIC_METRICS  # noqa: PLC0415

    if name in SYNTHETIC_METRICS:
        return SYNTHETIC_METRICS[name]
    raise KeyError(f"unknown metric {name!r}")


def score_sample(metric: str | Callable[..., float], prediction: str, answers: Iterable[str],
                 all_classes=None, first_line: bool = False) -> float:
    """eval.py's per-sample rule: optional first-line cut, then max over gold answers (0 if no answers)."""
    fn = get_metric(metric) if isinstance(metric, str) else metric
    if first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    if getattr(fn, "all_refs", False):  # RULER string_match_all/part score the whole reference list at once
        return fn(prediction, list(answers))
    score = 0.0
    for gold in answers:
        score = max(score, fn(prediction, gold, all_classes=all_classes))
    return score


def _first_line_for(dataset: str) -> bool:
    return dataset in FIRST_LINE_DATASETS


def mean100(values) -> float:
    """eval.py's aggregation: round(100 * mean, 2); NaN for no values (numpy's mean of nothing)."""
    values = list(values)
    return round(100 * sum(values) / len(values), 2) if values else math.nan


def bucket_means(scores, lengths) -> dict[str, float]:
    """eval.py ``scorer_e``'s aggregation: ``mean100`` per length bucket (a sample without a numeric length is left
    out; an empty bucket is NaN)."""
    by: dict[str, list[float]] = {b: [] for b in BUCKETS}
    for s, n in zip(scores, lengths):
        if isinstance(n, (int, float)):
            by[length_bucket(n)].append(s)
    return {b: mean100(v) for b, v in by.items()}


def score_dataset(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]], all_classes=None,
                  metric: str | None = None, first_line: bool | None = None) -> float:
    """eval.py ``scorer``: round(100 * mean, 2). ``all_classes`` is one list for the whole file, as upstream."""
    metric = metric or DATASET2METRIC[dataset]
    first_line = _first_line_for(dataset) if first_line is None else first_line
    return mean100(score_sample(metric, p, a, all_classes, first_line) for p, a in zip(predictions, answers))


def length_bucket(length: float) -> str:
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def score_dataset_e(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
                    lengths: Sequence[float], all_classes=None, metric: str | None = None,
                    first_line: bool | None = None) -> dict[str, float]:
    """eval.py ``scorer_e``: per length bucket round(100 * mean, 2); an empty bucket is NaN like numpy's mean."""
    metric = metric or DATASET2METRIC[dataset]
    first_line = _first_line_for(dataset) if first_line is None else first_line
    return bucket_means([score_sample(metric, p, a, all_classes, first_line) for p, a in zip(predictions, answers)],
                        lengths)
