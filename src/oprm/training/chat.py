"""The chat markup of the shipped model and the prompt ids [P] and [S] around a context, as the engine builds them.

Shared by the tokenizer (its special tokens and template), the training data and the held-out checks, so the
model is trained on exactly the ids the engine feeds it.
"""
from __future__ import annotations

from ..synthetic import AR_TEMPLATE

IM_START, IM_END, PAD, BOS = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_MARK = "\u0000CONTEXT\u0000"


def render_chat(user: str, answer: str | None = None) -> str:
    """Exactly what ``apply_chat_template([{'role':'user','content':user}], add_generation_prompt=True)``
    renders with :data:`CHAT_TEMPLATE`, optionally followed by the answer and <|im_end|>."""
    s = f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
    if answer is not None:
        s += f"{answer}{IM_END}\n"
    return s


def prompt_parts(tok, question: str, template: str | None = None, answer_prefix: str = ""
                 ) -> tuple[list[int], list[int]]:
    """Token ids of the OPRM prefix P and suffix S around the context, tokenized separately exactly as
    ``oprm.prompts.build_prompt`` does (chat template rendered, split at the context, answer prefix appended)."""
    before, after = (template or AR_TEMPLATE).split("{context}")
    rendered = render_chat(before + _MARK + after.replace("{input}", question))
    p, s_ = rendered.split(_MARK)
    s_ += answer_prefix
    return tok.encode(p, add_special_tokens=False), tok.encode(s_, add_special_tokens=False)
