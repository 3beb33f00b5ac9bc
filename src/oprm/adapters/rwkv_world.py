"""The RWKV World tokenizer of the `rwkv` package, with the slice of the transformers tokenizer API oprm uses.

The package's vocabulary file (``rwkv_vocab_v20230424.txt``), encoded by greedy longest match over UTF-8 bytes as the
package's ``TRIE_TOKENIZER`` does (tests check the ids are equal). Its trie holds ~550k Python objects: 530 MB and
3 s to build, and every ``gc.collect()`` the runtime's loader makes then takes ~0.5 s. A dict of the tokens plus,
per two-byte prefix, the lengths of the tokens that start with it finds the same longest match in 14 MB, built in
0.7 s. Offsets are character offsets: a token that ends inside a multi-byte character spans the whole character, so
two neighbouring tokens can share one (as byte-level BPE offsets do in transformers).

Prompt formats (the "chat template"; no template file exists for these models):

* ``chat`` — the RWKV World chat format of the model cards (BlinkDL/rwkv-6-world, rwkv-7-world README):
  ``"System: ...\\n\\nUser: ...\\n\\nAssistant:"``, no space after the final colon (the World vocabulary puts the
  space in front of the next word). Messages are kept verbatim; the cards' advice to turn "\\n\\n" into "\\n" inside
  a message is not applied, because the context itself is never rewritten either.
* ``instruction`` — how the official OPRM script prompts RWKV on LongBench (eval_longbench_oprm.py): the ids of
  ``"Instruction: "``, the pre-context text, ``"\\n\\nInput: "``, the context, the query text, ``"\\n\\nResponse:"``,
  each piece tokenized on its own. The rendered text carries ``PIECE_BREAK`` between pieces so that tokenizing it
  gives exactly those ids. ``oprm eval`` switches RWKV runtime tokenizers to this format.
"""

from __future__ import annotations

import ast
import os
from functools import lru_cache

from ..errors import OPRMUsageError
from ..prompts import _CONTEXT_MARK  # where build_prompt puts the context inside the user message

WORLD_VOCAB_SIZE = 65536  # rows of the World models' embedding; the vocabulary file fills ids 1..65529
END_OF_TEXT = 0  # the World models' end-of-text token, not in the vocabulary file
PIECE_BREAK = "\x00RWKV_PIECE\x00"
PROMPT_FORMATS = ("chat", "instruction")


@lru_cache(maxsize=1)
def world_vocab() -> tuple[dict[int, bytes], dict[bytes, int], dict[bytes, list[int]]]:
    """(id -> token bytes, token bytes -> id, two-byte prefix -> token lengths >= 2, longest first)."""
    try:
        import rwkv
    except ImportError:
        raise OPRMUsageError("RWKV .pth models need the rwkv runtime: pip install 'oprm[rwkv]'") from None
    id_to_token = {}
    with open(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"), encoding="utf-8") as f:
        for line in f:  # "<id> <python str or bytes literal> <byte length>"
            index, rest = line.split(" ", 1)
            token = ast.literal_eval(rest[: rest.rindex(" ")])
            id_to_token[int(index)] = token.encode("utf-8") if isinstance(token, str) else token
    token_to_id = {t: i for i, t in id_to_token.items()}
    lengths: dict[bytes, set[int]] = {}
    for token in token_to_id:
        if len(token) >= 2:
            lengths.setdefault(token[:2], set()).add(len(token))
    return id_to_token, token_to_id, {k: sorted(v, reverse=True) for k, v in lengths.items()}


class RwkvWorldTokenizer:
    is_fast = True  # offsets are exact: build_prompt uses them for chunk spans and the query span
    eos_token_id = END_OF_TEXT
    eos_token = "<|endoftext|>"
    eval_prompt_format = "instruction"

    def __init__(self, prompt_format: str = "chat"):
        self.id_to_token, self.token_to_id, self.lengths = world_vocab()
        self.prompt_format = prompt_format

    @property
    def prompt_format(self) -> str:
        return self._prompt_format

    @prompt_format.setter
    def prompt_format(self, value: str) -> None:
        if value not in PROMPT_FORMATS:
            raise OPRMUsageError(f"unknown RWKV prompt format {value!r}; choose one of: {', '.join(PROMPT_FORMATS)}")
        self._prompt_format = value

    @property
    def chat_template(self) -> str:  # descriptive only: apply_chat_template renders in Python
        if self.prompt_format == "chat":
            return "User: {content}\n\nAssistant:"
        return "Instruction: {instruction}\n\nInput: {context}{query}\n\nResponse:"

    def __len__(self) -> int:
        return WORLD_VOCAB_SIZE

    # --- encoding -------------------------------------------------------------------------------------------------
    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False, **_):
        ids, offsets, pos = [], [], 0
        for piece in text.split(PIECE_BREAK):
            piece_ids, piece_offsets = self._encode(piece)
            ids += piece_ids
            offsets += [(pos + s, pos + e) for s, e in piece_offsets]
            pos += len(piece) + len(PIECE_BREAK)
        out = {"input_ids": ids}  # the World models use no BOS: add_special_tokens adds nothing
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self(text)["input_ids"]

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        data = text.encode("utf-8")
        ids, i = [], 0
        while i < len(data):
            for length in self.lengths.get(data[i:i + 2], ()):
                token_id = self.token_to_id.get(data[i:i + length])
                if token_id is not None:
                    break
            else:  # every single byte is a token
                length, token_id = 1, self.token_to_id[data[i:i + 1]]
            ids.append(token_id)
            i += length
        if len(data) == len(text):  # ASCII: byte offsets are character offsets
            char_of_byte = None
        else:
            char_of_byte = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
        offsets, pos = [], 0
        for t in ids:
            end = pos + len(self.id_to_token[t])
            if char_of_byte is None:
                offsets.append((pos, end))
            else:
                offsets.append((char_of_byte[pos], char_of_byte[end - 1] + 1))
            pos = end
        return ids, offsets

    # --- decoding -------------------------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        ids = [ids] if isinstance(ids, int) else ids
        out, pending = [], []  # bytes of a multi-byte character may span tokens: decode runs of vocabulary tokens
        for i in ids:
            if i in self.id_to_token:
                pending.append(self.id_to_token[i])
                continue
            out.append(b"".join(pending).decode("utf-8", errors="replace"))
            pending = []
            if i == END_OF_TEXT and not skip_special_tokens:
                out.append(self.eos_token)
        out.append(b"".join(pending).decode("utf-8", errors="replace"))
        return "".join(out)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **_) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    # --- prompts --------------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = True, **_):
        text = (self._render_chat if self.prompt_format == "chat" else self._render_instruction)(
            messages, add_generation_prompt)
        return self.encode(text) if tokenize else text

    @staticmethod
    def _render_chat(messages, add_generation_prompt: bool) -> str:
        names = {"system": "System", "user": "User", "assistant": "Assistant"}
        turns = []
        for m in messages:
            if m["role"] not in names:
                raise OPRMUsageError(f"the RWKV chat format has no role {m['role']!r}")
            turns.append(f"{names[m['role']]}: {m['content']}")
        return "\n\n".join(turns) + ("\n\nAssistant:" if add_generation_prompt else "")

    @staticmethod
    def _render_instruction(messages, add_generation_prompt: bool) -> str:
        system = [m["content"] for m in messages if m["role"] == "system"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if len(users) != 1 or len(system) + len(users) != len(messages):
            raise OPRMUsageError("the RWKV instruction format takes one user message (and an optional system one)")
        before, mark, after = users[0].partition(_CONTEXT_MARK)
        body = f"{before}{PIECE_BREAK}\n\nInput: {mark}{after}" if mark else before
        head = "".join(f"System: {s}\n\n" for s in system)
        tail = f"{PIECE_BREAK}\n\nResponse:" if add_generation_prompt else ""
        return f"{head}Instruction: {PIECE_BREAK}{body}{tail}"
