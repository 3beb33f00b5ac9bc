"""OPRM as an lm-evaluation-harness model named ``oprm``.

    oprm lm-eval --model_args pretrained=PATH,chunk_size=2000,context_field=context --tasks TASK [lm-eval flags]

``oprm lm-eval`` registers the model and hands every argument to lm-eval's own CLI (``lm-eval run``; ``--model
oprm`` is added when no ``--model`` is given). lm-eval 0.4.13 has no plugin entry point for models, so
``lm_eval --model oprm`` alone cannot find it; from Python, ``import oprm.lm_eval_model`` registers it for
``lm_eval.simple_evaluate(model="oprm", ...)``.

* ``generate_until`` runs OPRM. lm-eval hands the model a rendered prompt string; the document is found in it by
  its text (the ``context_field`` of the sample, default ``context``), and the prompt is split there into P, C and S
  (tokenized separately, as ``oprm eval`` does). A prompt in which the document cannot be found runs vanilla (the
  whole prompt in one pass) and is counted in a warning. ``query_field`` names the question's field: the
  selections that need the question (``support``, the default, and ``query_likelihood``) fail without it rather
  than rank without the question.
* ``loglikelihood`` and ``loglikelihood_rolling`` score the **full prompt** in one exact pass (vanilla, no
  chunking, segmented only where the architecture continues a state exactly): OPRM answers by decoding from a chosen
  chunk, and a likelihood over the whole prompt has no chunk to choose.

Model args: ``pretrained`` (hub id, folder, .gguf or a shipped model's name), ``dtype``, ``device``, ``threads``,
``trust_remote_code``, ``context_field``, ``query_field``, ``max_gen_toks`` (default budget), and any
:class:`~oprm.config.OPRMConfig` field (``chunk_size``, ``selection``, ``idk``, ``decode``, ``mode``, ...).
"""

from __future__ import annotations

import logging
import sys

import torch

from .config import OPRMConfig
from .errors import OPRMUsageError
from .prompts import PromptParts, bos_prefix, tokenize_with_offsets
from .selection import selection_needs

log = logging.getLogger("oprm.lm_eval")

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry
except ImportError:  # pragma: no cover - the extra is missing; main() says how to install it
    LM, model_registry = object, None

GENERATION_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


class OPRMLM(LM):
    """lm-eval's model interface over an :class:`oprm.OPRM` engine."""

    def __init__(self, pretrained: str = "oprm-ar-mamba2", dtype: str = "auto", device: str | None = None,
                 threads: int | None = None, trust_remote_code: bool = False, context_field: str = "context",
                 query_field: str | None = None, max_gen_toks: int = 256, batch_size=None, max_batch_size=None,
                 engine=None, **options):
        super().__init__()
        from .engine import OPRM
        from .runtime import set_threads

        unknown = sorted(set(options) - set(OPRMConfig.names()))
        if unknown:
            raise OPRMUsageError(f"unknown oprm model arg(s): {', '.join(unknown)}; OPRM options are "
                                 f"{', '.join(OPRMConfig.names())}")
        if isinstance(options.get("idk"), str) and options["idk"].lower() == "none":
            options["idk"] = None
        if engine is None:
            set_threads(threads)
            if device in ("", "auto"):
                device = None
            if device and str(device).startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's CLI passes cuda:0 when --device is not given; like its HF model, fall back to the CPU
                log.warning("oprm: CUDA is not available; running on the CPU (device %s requested)", device)
                device = None
            engine = OPRM.from_pretrained(str(pretrained), dtype=dtype, device=device,
                                          trust_remote_code=bool(trust_remote_code), **options)
        elif options:
            engine.config = engine.config.replace(**options)
        self.engine = engine
        self.context_field, self.query_field = context_field, query_field
        needs = selection_needs(engine.config)
        if query_field is None and needs & {"query_text", "query_span"}:
            # the question is found by its field, or not at all: fail here rather than rank without it
            raise OPRMUsageError(f"selection={engine.config.selection} needs the question: pass query_field=FIELD "
                                 "(the sample's question field) in --model_args, or choose another selection")
        if "gold" in needs:
            raise OPRMUsageError(f"selection={engine.config.selection} needs a gold text, which lm-eval does not give")
        self.max_gen_toks = int(max_gen_toks)
        self.chat_applied = False  # lm-eval rendered the prompts with our apply_chat_template
        self.counts = {"oprm": 0, "vanilla": 0}
        self._device = engine.adapter.device

    # --- chat templates (lm-eval --apply_chat_template) -------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.engine.tokenizer, "name_or_path", self.engine.name)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.engine.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        # as lm-eval's HF model: a gen_prefix arrives as a final assistant message that the answer continues
        self.chat_applied = True
        return self.engine.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                         add_generation_prompt=add_generation_prompt,
                                                         continue_final_message=not add_generation_prompt)

    # --- tokens ------------------------------------------------------------------------------------------------------
    def _bos(self, text: str) -> list[int]:
        """A rendered chat template carries its own BOS text (as in ``oprm.prompts``); plain prompts get the
        tokenizer's."""
        tok = self.engine.tokenizer
        if self.chat_applied or (tok.bos_token and text.startswith(tok.bos_token)):
            return []
        return bos_prefix(tok)

    def _encode(self, text: str) -> list[int]:
        return self._bos(text) + self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]

    def split(self, prompt: str, doc: dict | None) -> PromptParts | None:
        """P, C, S of ``prompt`` around the sample's document, or None when the document is not in the prompt."""
        document = doc.get(self.context_field) if isinstance(doc, dict) else None
        if not isinstance(document, str) or not document.strip():
            return None
        start = prompt.rfind(document)  # the last occurrence: few-shot examples come before the sample
        if start < 0:
            document = document.strip()
            start = prompt.rfind(document)
            if start < 0:
                return None
        tok = self.engine.tokenizer
        prefix_text, suffix_text = prompt[:start], prompt[start + len(document):]
        prefix_ids = self._bos(prompt) + tok(prefix_text, add_special_tokens=False)["input_ids"]
        context_ids, offsets = tokenize_with_offsets(tok, document)
        suffix_ids, suffix_offsets = tokenize_with_offsets(tok, suffix_text)
        if not context_ids:
            return None
        query_span = None
        query = doc.get(self.query_field) if self.query_field else None
        if isinstance(query, str) and query and suffix_offsets is not None and query in suffix_text:
            q0 = suffix_text.rfind(query)
            inside = [i for i, (s, e) in enumerate(suffix_offsets) if e > q0 and s < q0 + len(query)]
            query_span = (inside[0], inside[-1] + 1) if inside else None
        return PromptParts(prefix_ids, context_ids, suffix_ids, document, offsets, query_span,
                           query_text=query if isinstance(query, str) else None)

    # --- requests ------------------------------------------------------------------------------------------------
    def _generation(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        from lm_eval.models.utils import normalize_gen_kwargs

        kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), default_max_gen_toks=self.max_gen_toks)
        until = [u for u in kwargs.pop("until", []) if u]
        options = {"max_new_tokens": int(kwargs.pop("max_gen_toks"))}
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        options["do_sample"] = do_sample and temperature > 0
        if options["do_sample"]:
            options["temperature"] = temperature
        for key in ("top_p", "top_k", "repetition_penalty"):
            if kwargs.get(key) is not None:
                options[key] = kwargs.pop(key)
        if until:
            options["stop_strings"] = until  # stop decoding early; the text is cut before the stop below
        ignored = sorted(k for k in kwargs if k not in GENERATION_KEYS)
        if ignored:
            log.warning("oprm: generation kwargs ignored: %s", ", ".join(ignored))
        return options, until

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="oprm generate_until"):
            prompt, gen_kwargs = request.args
            options, until = self._generation(gen_kwargs)
            parts = self.split(prompt, request.doc)
            if parts is None:
                self.counts["vanilla"] += 1
                result = self.engine.generate(prefix_ids=[], context_ids=self._encode(prompt), suffix_ids=[],
                                              mode="vanilla", **options)
            else:
                self.counts["oprm"] += 1
                result = self.engine.generate(prompt=parts, **options)
            text = result.text
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (prompt, gen_kwargs), text)
        if self.counts["vanilla"]:
            log.warning("oprm: the document (field %r) was not found in %d of %d prompts; those ran vanilla (the whole "
                        "prompt in one pass)", self.context_field, self.counts["vanilla"], sum(self.counts.values()))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        tok = self.engine.tokenizer
        for request in requests:
            context, continuation = request.args
            spaces = len(context) - len(context.rstrip())  # word-boundary spaces belong to the continuation
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            if context:
                whole = self._encode(context + continuation)
                ctx = self._encode(context)
                cont = whole[len(ctx):]
            else:
                ctx, cont = [self._prefix_token()], tok(continuation, add_special_tokens=False)["input_ids"]
            result = self.score(ctx + cont, len(cont))
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", (request.args[0], request.args[1]), result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            ids = self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
            value = self.score([self._prefix_token()] + ids, len(ids))[0]
            out.append(value)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
        return out

    def _prefix_token(self) -> int:
        tok = self.engine.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def score(self, ids: list[int], num_scored: int) -> tuple[float, bool]:
        """(sum of log p of the last ``num_scored`` tokens of ``ids`` given what precedes them, whether each is the
        greedy choice), in one exact pass over ``ids`` (segments continue the state where that is exact)."""
        from .engine import default_max_batch_tokens
        from .prefill import Prefiller, RunStats

        if num_scored <= 0:
            return 0.0, True
        engine = self.engine
        adapter = engine.adapter
        inputs, targets = ids[:-1], ids[1:]
        first = len(inputs) - num_scored  # the first position whose next-token logits are scored
        prefiller = Prefiller(adapter, RunStats(), engine.config.max_batch_tokens or
                              default_max_batch_tokens(adapter.device), model_name=engine.name)
        segment = prefiller.long_segment(len(inputs))
        state, total, greedy = None, 0.0, True
        for offset in range(0, len(inputs), segment):
            piece = inputs[offset:offset + segment]
            end = offset + len(piece)
            needed = end - max(offset, first)
            logits, state = prefiller.forward([piece], state, start=offset, num_logits=max(1, needed))
            if needed > 0:
                logp = torch.log_softmax(logits[0, -needed:].float(), -1)
                target = torch.tensor(targets[end - needed:end], device=logp.device)
                total += float(logp.gather(-1, target[:, None]).sum())
                greedy = greedy and bool((logp.argmax(-1) == target).all())
        return total, greedy


def register() -> None:
    """Make ``oprm`` a model name of lm-eval's registry (idempotent)."""
    if model_registry is None:
        raise OPRMUsageError("oprm lm-eval needs lm-evaluation-harness: pip install 'oprm[lm-eval]'")
    if "oprm" not in model_registry:
        model_registry.register("oprm", target=OPRMLM)


if model_registry is not None:
    register()


def main(argv: list[str]) -> int:
    """``oprm lm-eval ARGS``: lm-eval's CLI with the ``oprm`` model registered (``run`` is implied)."""
    register()
    from lm_eval.__main__ import cli_evaluate

    args = list(argv)
    command = args.pop(0) if args[:1] in (["run"], ["ls"], ["validate"]) else "run"
    if command == "run" and not any(a == "--model" or a.startswith("--model=") for a in args) \
            and not any(a in ("-h", "--help") for a in args):
        args = ["--model", "oprm", *args]
    saved = sys.argv
    sys.argv = ["lm-eval", command, *args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
