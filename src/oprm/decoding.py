"""Autoregressive decoding from one chosen state, with transformers' GenerationConfig options.

Greedy by default. Sampling options (temperature, top_k, top_p), repetition_penalty, eos ids and stop strings follow
``GenerationConfig``; the processors are transformers' own, applied to the whole prompt plus the generated tokens as
``model.generate`` does, so greedy and penalised greedy outputs equal ``generate`` on [P, C_j, S] alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
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
    """Our defaults (greedy, 64 new tokens, the model's eos ids), then ``generation_config``, then ``options``."""
    unknown = set(options) - set(GENERATION_OPTIONS) - {"seed"}
    if unknown:
        raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
    config = GenerationConfig(max_new_tokens=64, do_sample=False)
    model_config = getattr(model, "generation_config", None)
    if model_config is not None and model_config.eos_token_id is not None:
        config.eos_token_id = model_config.eos_token_id
    if generation_config is not None:
        for key in GENERATION_OPTIONS:
            value = getattr(generation_config, key, None)
            if value is not None:
                setattr(config, key, value)
    for key, value in options.items():
        if value is not None and key != "seed":
            setattr(config, key, value)
    return config


def eos_ids(config: GenerationConfig) -> set[int]:
    eos = config.eos_token_id
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
