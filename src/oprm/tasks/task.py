"""One benchmark task as data: its template, budgets, metric and OPRM treatment (see :mod:`oprm.tasks.registry`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from oprm.errors import OPRMUsageError
from oprm.metrics.longbench import get_metric, score_sample

__all__ = ["Task"]


@dataclass
class Task:
    name: str  # unique task name (file stem in results): "hotpotqa", "hotpotqa_e", "longbench_v2", "ar", ...
    dataset: str  # LongBench dataset name (pred file stem that eval.py reads) or the synthetic task name
    suite: str  # "longbench" | "longbench_e" | "longbench_v2" | "synthetic"
    category: str
    language: str
    metric: str
    template: str
    idk_template: str | None = None
    max_new_tokens: int = 32
    oprm_max_new_tokens: int | None = None
    decode: str = "one"  # "all": OPRM decodes every chunk and joins the outputs (summarisation)
    context_tail: bool = False  # lcc: OPRM keeps only the last chunk_size tokens of the context
    first_line: bool = False
    longbench_chat: bool = True  # LongBench pred.py applies the chat template
    idk_answer_map: dict[str, str] | None = None
    oprm_template: str | None = None  # the official OPRM script's wording, where it differs from LongBench's
    oprm_idk_template: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # synthetic-task settings

    # ------------------------------------------------------------------ prompts / budgets
    def template_for(self, mode: str, idk: bool, style: str = "longbench") -> str:
        """The prompt for ``mode``: the IDK variant only for OPRM with the IDK filter on (vanilla/truncate/bm25 use
        the original prompt, as the OPRM script does). ``style="oprm"`` picks the OPRM script's exact wording."""
        if style not in ("longbench", "oprm"):
            raise OPRMUsageError(f"prompt style must be 'longbench' or 'oprm', got {style!r}")
        use_idk = mode in ("oprm", "oracle") and idk and self.idk_template is not None
        if style == "oprm":
            if use_idk:
                return self.oprm_idk_template or self.idk_template
            return self.oprm_template or self.template
        return self.idk_template if use_idk else self.template

    def budget(self, which: str = "official") -> int:
        if which == "official":
            return self.max_new_tokens
        if which == "oprm":
            return self.oprm_max_new_tokens or self.max_new_tokens
        raise OPRMUsageError(f"--max-new-tokens-budget must be 'official' or 'oprm', got {which!r}")

    @property
    def pred_subdir(self) -> str:
        return "pred_e" if self.suite == "longbench_e" else "pred"

    # ------------------------------------------------------------------ scoring
    def postprocess(self, prediction: str, idk_prompt: bool) -> str:
        """Map the IDK word back to the dataset's own answer (Qasper: "Error" -> "unanswerable")."""
        if idk_prompt and self.idk_answer_map:
            for src, dst in self.idk_answer_map.items():
                prediction = re.sub(rf"\b{re.escape(src)}\b", dst, prediction)
        return prediction

    def score(self, prediction: str, sample: dict) -> float:
        """Per-sample score in [0, 1] with the official rule (first line, max over gold answers)."""
        if self.metric == "v2_choice":
            from oprm.metrics.longbench_v2 import extract_answer  # noqa: PLC0415

            return float(extract_answer(prediction) == sample["answers"][0])
        return float(score_sample(get_metric(self.metric), prediction, sample["answers"], sample.get("all_classes"),
                                  self.first_line))
