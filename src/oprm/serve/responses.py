"""Engine results -> OpenAI response bodies and stream events."""

from __future__ import annotations

import math

from .plan import Plan


# --- responses ----------------------------------------------------------------------------------------------------
def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """OpenAI semantics: the text ends before the first stop sequence, which is not returned."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish_reason(result, plan: Plan, stopped: bool, eos: set[int]) -> str:
    if stopped:
        return "stop"
    for answer in result.answers:
        tokens = answer.token_ids
        if answer.chunk is not None or not plan.oprm:  # a decoded answer (not the all-IDK word)
            if len(tokens) >= plan.max_new_tokens and not (tokens and tokens[-1] in eos):
                return "length"
    return "stop"


def usage(result) -> dict:
    prompt = int(sum(result.prompt_tokens.values()))
    completion = len(result.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def oprm_details(result, plan: Plan) -> dict:
    """The OPRM view of an answer: chosen chunk spans, per-chunk entropy and IDK flag, counts and timings."""
    chunks = [{"index": c.index, "token_start": c.token_start, "token_end": c.token_end, "char_start": c.char_start,
               "char_end": c.char_end, "entropy": _finite(c.entropy), "is_idk": None if c.is_idk is None else bool(c.is_idk),
               "score": _finite(c.score), "top_tokens": [[t, s, _finite(p)] for t, s, p in c.top_tokens]}
              for c in result.chunks]
    details = {"mode": result.mode, "document_from": plan.document_from, "chosen": list(result.chosen),
               "chosen_spans": result.chosen_spans, "chunks": chunks, "selection": result.selection,
               "chunk_size": result.chunk_size, "idk_fallback_used": bool(result.idk_fallback_used),
               "prompt_tokens": dict(result.prompt_tokens), "tokens_processed": int(result.tokens_processed),
               "timings": {k: round(float(v), 6) for k, v in result.timings.items()}}
    document = getattr(result, "document", None)  # the engine's document-state cache, when it reports one
    if document is not None:
        details["document"] = document.to_dict() if hasattr(document, "to_dict") else document
    return details


def _finite(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def token_logprobs(result, tokenizer, top: int, eos: set[int]) -> list[dict] | None:
    """Per generated token: its log-probability under the model's (unprocessed) next-token distribution and the
    ``top`` best alternatives. Only for a single decoded answer (``result.logits`` holds the first answer's)."""
    if result.logits is None or len(result.answers) != 1:
        return None
    import torch

    tokens = result.answers[0].token_ids
    out = []
    for token, logits in zip(tokens, result.logits):
        if token in eos:
            break
        logp = torch.log_softmax(logits.float(), -1)
        entry = {"token_id": token, "token": tokenizer.decode([token]), "logprob": float(logp[token])}
        if top:
            values, ids = logp.topk(top)
            entry["top"] = [(int(i), tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]
        out.append(entry)
    return out


def chat_logprobs(entries: list[dict] | None) -> dict | None:
    if entries is None:
        return None
    return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode()),
                         "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())}
                                          for _, s, v in e.get("top", [])]} for e in entries], "refusal": None}


def completion_logprobs(entries: list[dict] | None) -> dict | None:
    if entries is None:
        return None
    offsets, position = [], 0
    for e in entries:
        offsets.append(position)
        position += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{s: v for _, s, v in e.get("top", [])} for e in entries] if entries and "top" in entries[0]
            else None, "text_offset": offsets}


def chat_response(plan: Plan, text: str, reason: str, result, logprobs: dict | None) -> dict:
    body = {"id": plan.id, "object": "chat.completion", "created": plan.created, "model": plan.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": logprobs, "finish_reason": reason}],
            "usage": usage(result), "system_fingerprint": None}
    return body


def completion_response(plan: Plan, text: str, reason: str, result, logprobs: dict | None) -> dict:
    return {"id": plan.id, "object": "text_completion", "created": plan.created, "model": plan.model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}],
            "usage": usage(result), "system_fingerprint": None}


def chunk_event(plan: Plan, delta_text: str | None, *, role: bool = False, reason: str | None = None) -> dict:
    """One streamed chunk (``chat.completion.chunk`` or ``text_completion``)."""
    if plan.kind == "chat":
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
        if delta_text is not None:
            delta["content"] = delta_text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    return {"id": plan.id, "object": obj, "created": plan.created, "model": plan.model, "choices": [choice]}


def usage_event(plan: Plan, result) -> dict:
    obj = "chat.completion.chunk" if plan.kind == "chat" else "text_completion"
    return {"id": plan.id, "object": obj, "created": plan.created, "model": plan.model, "choices": [],
            "usage": usage(result)}
