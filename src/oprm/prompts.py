"""Prompt construction: the fixed prefix P and suffix S around the context, as token ids.

A prompt is a template with one ``{context}`` placeholder (and other fields such as ``{input}``). With a chat
template, the user message is rendered through the tokenizer's own template and split at the context, so P holds the
chat header and instructions and S holds the query, the instructions after it and the assistant header — no token
ids are hard-coded. The three pieces are tokenized separately (as the official OPRM code does), so chunk boundaries
never merge tokens across P/C/S.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, replace
from pathlib import Path

from .config import IDK_WORD
from .errors import OPRMUsageError

# The default question template of `oprm ask`: the paper's prompts tell the model to answer the IDK word when the
# text lacks the answer, which is what lets the IDK filter drop irrelevant chunks.
_QA_INSTRUCTION = "Answer the question based on the given text. Only give me the answer and do not output any other words."


def default_qa_template(idk: str | None = IDK_WORD) -> str:
    idk_instruction = f' If the answer does not exist in the text, return "{idk}".' if idk else ""
    return (f"{_QA_INSTRUCTION}\n\nText:\n{{context}}\n\n{_QA_INSTRUCTION}{idk_instruction}\n\n"
            "Question: {input}\nAnswer:")


PROMPT_FORMAT_FILE = "prompt_format.json"


@dataclass(frozen=True)
class PromptFormat:
    """The prompt a model was trained on, kept in its folder (``prompt_format.json``) as its chat template is: the
    template (``{context}``, ``{input}``) and rules that open the reply with an answer prefix derived from the question
    (RULER's convention), e.g. "What is the code of X?" -> "The code of X is ". ``OPRM`` uses it for a question asked
    without a template, so ``oprm ask`` and ``oprm serve`` speak the model's own format."""

    template: str
    answer_prefixes: tuple[tuple[str, str], ...] = ()  # (regex the whole question matches, prefix of its named groups)

    def answer_prefix_for(self, query: str | None) -> str | None:
        for pattern, prefix in self.answer_prefixes:
            match = re.fullmatch(pattern, (query or "").strip())
            if match:
                return prefix.format(**match.groupdict())
        return None

    def save(self, folder: str | Path) -> None:
        data = {"template": self.template, "answer_prefixes": [list(rule) for rule in self.answer_prefixes]}
        (Path(folder) / PROMPT_FORMAT_FILE).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "PromptFormat | None":
        """The folder's prompt format, or None when it has none (hub ids and most models)."""
        path = Path(folder) / PROMPT_FORMAT_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(data["template"], tuple(tuple(rule) for rule in data.get("answer_prefixes", ())))


_CONTEXT_MARK = "\x00OPRM_CONTEXT\x00"
_QUERY_OPEN, _QUERY_CLOSE = "\x00OPRM_Q<\x00", "\x00OPRM_Q>\x00"


@dataclass
class PromptParts:
    """Token ids of P, C and S, plus what is needed to report chunk spans and score the query."""

    prefix_ids: list[int]
    context_ids: list[int]
    suffix_ids: list[int]
    context_text: str | None = None
    context_offsets: list[tuple[int, int]] | None = None  # character span of each context token
    query_span: tuple[int, int] | None = None  # token span of the query inside the suffix, end exclusive
    query_text: str | None = None  # the question (the support selection looks for its words around an answer)

    def full_ids(self) -> list[int]:
        return self.prefix_ids + self.context_ids + self.suffix_ids

    def context_tail(self, num_tokens: int) -> "PromptParts":
        """The same prompt with only the context's last ``num_tokens`` tokens (LongBench lcc under OPRM)."""
        cut = max(0, len(self.context_ids) - num_tokens)
        return replace(self, context_ids=self.context_ids[cut:],
                       context_offsets=self.context_offsets[cut:] if self.context_offsets else None)


def template_fields(template: str) -> list[str]:
    """The placeholder names of ``template``, which may hold only plain ``{name}`` placeholders (and ``{{``/``}}`` for
    braces): no format spec, conversion, attribute or index (``{input:>20000}`` spent 71 s; ``{input.x}`` reached into
    the value's attributes). Raises :class:`OPRMUsageError` otherwise."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise OPRMUsageError(f"prompt template is not valid: {e} (write a literal brace as {{{{ or }}}})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise OPRMUsageError(f"prompt template placeholder {shown[:60]} is not allowed: use plain {{context}} "
                                 "and {input} (no format specs, conversions, attributes or indexes)")
        names.append(name)
    return names


def _fill(part: str, fields: dict) -> str:
    """``part`` with each ``{name}`` replaced by ``fields[name]``: plain substitution, never ``str.format``'s specs."""
    out = []
    template_fields(part)  # checked first: a bad placeholder is an error whatever the fields
    for literal, name, _, _ in string.Formatter().parse(part):
        out.append(literal)
        if name is not None:
            if name not in fields:
                raise OPRMUsageError(f"prompt template needs a value for {{{name}}}")
            out.append(str(fields[name]))
    return "".join(out)


def bos_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text on its own (usually [bos] or nothing)."""
    with_specials = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    if plain and plain[0] in with_specials:
        return with_specials[: with_specials.index(plain[0])]
    return []


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer, context: str, template: str, fields: dict | None = None, *, query_field: str = "input",
                 chat: bool = True, system_prompt: str | None = None, answer_prefix: str | None = None) -> PromptParts:
    """Render ``template`` around ``context`` and tokenize P, C and S separately.

    ``answer_prefix`` (a template too, e.g. RULER's "The special magic number for {input} is") is appended after the
    chat template's assistant header, so the model continues it.
    """
    if context is None or not context.strip():
        raise OPRMUsageError("the context is empty")
    frame = prompt_frame(tokenizer, template, fields, query_field=query_field, chat=chat, system_prompt=system_prompt,
                         answer_prefix=answer_prefix)
    context_ids, offsets = tokenize_with_offsets(tokenizer, context)
    if not context_ids:
        raise OPRMUsageError("the context tokenizes to no tokens")
    return replace(frame, context_ids=context_ids, context_text=context, context_offsets=offsets)


def prompt_frame(tokenizer, template: str, fields: dict | None = None, *, query_field: str = "input",
                 chat: bool = True, system_prompt: str | None = None, answer_prefix: str | None = None) -> PromptParts:
    """P and S of ``template`` (the context left empty): what a question adds to an encoded document."""
    if template.count("{context}") != 1:
        raise OPRMUsageError("the prompt template must contain the placeholder {context} exactly once")
    fields = dict(fields or {})
    fields.pop("context", None)
    query_text = fields.get(query_field)
    answer_prefix = _fill(answer_prefix, fields) if answer_prefix else ""
    if query_field in fields:  # mark the query so its tokens can be found in S (query-likelihood selection)
        fields[query_field] = f"{_QUERY_OPEN}{fields[query_field]}{_QUERY_CLOSE}"
    before, after = template.split("{context}")
    user_message = _fill(before, fields) + _CONTEXT_MARK + _fill(after, fields)

    if chat and has_chat_template(tokenizer):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": user_message})
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered.count(_CONTEXT_MARK) != 1:
            raise OPRMUsageError("the tokenizer's chat template dropped or repeated the context")
        prefix_text, suffix_text = rendered.split(_CONTEXT_MARK)
        bos: list[int] = []  # a chat template writes its own BOS text, as apply_chat_template(tokenize=True) assumes
    else:
        prefix_text, suffix_text = user_message.split(_CONTEXT_MARK)
        bos = bos_prefix(tokenizer)

    suffix_text += answer_prefix
    query_chars = None
    if _QUERY_OPEN in suffix_text:
        start = suffix_text.index(_QUERY_OPEN)
        suffix_text = suffix_text.replace(_QUERY_OPEN, "", 1)
        end = suffix_text.index(_QUERY_CLOSE)
        suffix_text = suffix_text.replace(_QUERY_CLOSE, "", 1)
        query_chars = (start, end)
    # the query may also appear in the prefix (query-first templates); there it is plain text
    prefix_text = prefix_text.replace(_QUERY_OPEN, "").replace(_QUERY_CLOSE, "")

    prefix_ids = bos + tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    suffix_ids, suffix_offsets = tokenize_with_offsets(tokenizer, suffix_text)
    query_span = None
    if query_chars and suffix_offsets is not None:
        inside = [i for i, (s, e) in enumerate(suffix_offsets) if e > query_chars[0] and s < query_chars[1]]
        if inside:
            query_span = (inside[0], inside[-1] + 1)
    return PromptParts(prefix_ids, [], suffix_ids, query_span=query_span,
                       query_text=query_text if isinstance(query_text, str) else None)


def tokenize_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    return tokenizer(text, add_special_tokens=False)["input_ids"], None


def idk_token_ids(tokenizer, idk: str) -> set[int]:
    """Every token id whose text, stripped, is the first piece of ``idk`` (tokenized with or without a leading space)."""
    pieces = set()
    for variant in (idk, " " + idk):
        ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
        if ids:
            piece = tokenizer.decode(ids[:1]).strip()
            if piece:
                pieces.add(piece)
    if not pieces:
        raise OPRMUsageError(f"the IDK string {idk!r} tokenizes to nothing")
    vocab_size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    return {i for i, t in enumerate(texts) if t.strip() in pieces}
