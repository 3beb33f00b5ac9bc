"""Scoring functions that reproduce the official LongBench v1/v2 and RULER scorers.

``get_metric(name)`` returns a callable ``metric(prediction, ground_truth, all_classes=None) -> float``
(0..1, per gold answer); ``score_sample`` applies the dataset rules (first line, max over answers).
"""

from oprm.metrics.longbench import (
    METRICS,
    FIRST_LINE_DATASETS,
    classification_score,
    code_sim_score,
    count_score,
    get_metric,
    normalize_answer,
    normalize_zh_answer,
    qa_f1_score,
    qa_f1_zh_score,
    retrieval_score,
    retrieval_zh_score,
    rouge_score,
    rouge_zh_score,
    score_dataset,
    score_dataset_e,
    score_sample,
    length_bucket,
)
from oprm.metrics.longbench_v2 import extract_answer, score_v2

__all__ = [
    "METRICS", "FIRST_LINE_DATASETS", "classification_score", "code_sim_score", "count_score", "get_metric",
    "normalize_answer", "normalize_zh_answer", "qa_f1_score", "qa_f1_zh_score", "retrieval_score",
    "retrieval_zh_score", "rouge_score", "rouge_zh_score", "score_dataset", "score_dataset_e", "score_sample",
    "length_bucket", "extract_answer", "score_v2",
]
