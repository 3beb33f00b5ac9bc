"""Autoregressive decoding from one chosen state, with transformers' GenerationConfig options.

Greedy by default. Sampling options (temperature, top_k, top_p), repetition_penalty, eos ids and stop strings follow
``GenerationConfig``; the processors are transformers' own, applied to the whole prompt plus the generated tokens as
``model.generate`` does, so greedy and penalised greedy outputs equal ``generate`` on [P, C_j, S] alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from .config import check_generation
from .config import GENERATION_DEFAULTS
from .errors import model_failures
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

GENERATION_OPTIONS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
                      "eos_token_id", "stop_strings")


def make_generation_config(model, generation_config: GenerationConfig | None = None, **options) -> GenerationConfig:
    """Our defaults (greedy, ``GENERATION_DEFAULTS``' new tokens, the model's eos ids), then ``generation_config``,
    then ``options``."""
    unknown = set(options) - set(GENERATION_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    check_generation(options)
    config = GenerationConfig(**GENERATION_DEFAULTS, do_sample=False)
    model_config = getattr(model, "generation_config", None)
    if model_config is not None and model_config.eos_token_id is not None:
        config.eos_token_id = model_config.eos_token_id
    if generation_config is not None:
        for key in GENERATION_OPTIONS:
            value = getattr(generation_config, key, None)
            if value is not None:
                setattr(config, key, value)
    for key, value in options.items():
        if value is not None:
            setattr(config, key, value)
    return config


def eos_ids(config: GenerationConfig | None) -> set[int]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def logits_processors(config: GenerationConfig) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


@dataclass
class DecodeStep:
    token: int
    logits: torch.Tensor  # the raw logits [V] this token was chosen from


def decode(adapter, state, first_logits: torch.Tensor, prompt_ids: list[int], position: int,
           config: GenerationConfig, tokenizer=None, generator: torch.Generator | None = None) -> Iterator[DecodeStep]:
    """Yield generated tokens one by one, continuing ``state`` (batch 1) whose next-token logits are ``first_logits``.

    ``prompt_ids`` is the prompt the state has seen ([P, C_j, S]); it feeds the repetition penalty exactly as
    ``generate`` would. ``position`` is the absolute position of the next token.
    """
    processors = logits_processors(config)
    stops = eos_ids(config)
    stop_strings = [config.stop_strings] if isinstance(config.stop_strings, str) else list(config.stop_strings or [])
    seen = torch.tensor([prompt_ids], dtype=torch.long, device=first_logits.device) if processors else None
    generated: list[int] = []
    logits = first_logits.float().reshape(1, -1)
    for step in range(config.max_new_tokens):
        scores = processors(seen, logits) if processors else logits
        if config.do_sample:
            token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
        else:
            token = int(scores.argmax(-1))
        yield DecodeStep(token, logits[0])
        generated.append(token)
        if token in stops or step == config.max_new_tokens - 1:
            return
        if stop_strings and tokenizer is not None:
            tail = tokenizer.decode(generated[-32:])
            if any(s in tail for s in stop_strings):
                return
        token_tensor = torch.tensor([[token]], dtype=torch.long, device=first_logits.device)
        if seen is not None:
            seen = torch.cat([seen, token_tensor], dim=1)
        logits, state = adapter.step(token_tensor, state, position)
        position += 1


@dataclass
class Answer:
    """The decoded answer of one chunk (or of the whole prompt in vanilla/truncate mode)."""

    chunk: int | None
    text: str
    token_ids: list[int]


class AnswerDecoder:
    """Decodes the answers of one ``generate`` call: counts tokens and time, feeds a streamer, keeps the logits of
    the first answer when asked (``output_logits``)."""

    def __init__(self, adapter, config: GenerationConfig, tokenizer, generator, streamer, output_logits: bool, stats,
                 model_name: str = "model"):
        self.adapter, self.config, self.tokenizer, self.generator = adapter, config, tokenizer, generator
        self.model_name = model_name
        self.streamer, self.stats = streamer, stats
        self.logits: list[torch.Tensor] | None = None
        self.want_logits = output_logits
        self.streamed = False

    def answer(self, chunk: int | None, state, first_logits: torch.Tensor, prompt_ids: list[int],
               steps: Iterator[DecodeStep] | None = None) -> Answer:
        """Decode from ``state``, or take the tokens of ``steps`` (a decoding already started: the chosen chunk's
        look-ahead, ``oprm.lookahead``)."""
        t = time.perf_counter()
        keep = self.want_logits and self.logits is None
        logits = [] if keep else None
        if self.streamer is not None and not self.streamed:  # transformers' streamers skip the first put (prompt)
            self.streamer.put(torch.tensor(prompt_ids))
            self.streamed = True
        tokens = []
        if steps is None:
            steps = decode(self.adapter, state, first_logits, prompt_ids, len(prompt_ids), self.config, self.tokenizer,
                           self.generator)
        with model_failures(self.model_name):
            for step in steps:
                tokens.append(step.token)
                if keep:
                    logits.append(step.logits)
                if self.streamer is not None:
                    self.streamer.put(torch.tensor([step.token]))
        if keep:
            self.logits = logits
        self.stats.tokens_processed += max(0, len(tokens) - 1)
        self.stats.timings["decode"] += time.perf_counter() - t
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip() if self.tokenizer else ""
        return Answer(chunk, text, tokens)
