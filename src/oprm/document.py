"""Encoded documents: a long context prefilled once, then asked many questions.

In OPRM the question sits in the suffix S, after the chunk, so the state of a recurrent model after [P, C_i] does not
depend on the question. ``OPRM.encode`` keeps that state for every chunk; ``OPRM.generate(document=doc, query=...)``
then runs only S on top of each state (b·|S| tokens instead of N), selects and decodes as usual. Attention layers
keep their keys/values of [P, C_i] as the state.

    doc = engine.encode(long_text)            # or engine.encode(context_ids=..., prefix_ids=...)
    doc.save("report.oprm")                   # safetensors: the state tensors + a JSON header
    doc = EncodedDocument.load("report.oprm")  # states stay on disk (memory-mapped), read per micro-batch
    engine.generate(document=doc, query="Who signed?")

A document remembers what made it (model, tokenizer, prefix tokens, chunking, dtype, oprm version); using it with
anything else is one clear error. ``DocumentCache`` is the engine's automatic cache of encoded documents (an LRU
bounded in bytes, optionally backed by a folder), so a second question on the same context skips the prefill.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters.base import state_leaves, state_from_leaves
from .chunking import Chunk
from .errors import OPRMUsageError

FORMAT = "oprm-document/1"


@dataclass
class EncodedDocument:
    """Per chunk: the model state after [P, C_i], plus the tokens and spans it was made from."""

    meta: dict  # what made it: model, tokenizer, dtype, chunking, oprm version (see ``fingerprint``)
    prefix_ids: list[int]
    context_ids: list[int]
    chunks: list[Chunk]
    context_text: str | None = None
    states: dict[int, object] = field(default_factory=dict)  # chunk index -> batch-1 state (in memory)
    path: str | None = None  # states on disk (``load``): read per micro-batch
    on_disk: list[int] = field(default_factory=list)  # chunk indices whose states the file holds
    scalars: list | None = None  # the plain values of a state (flags, offsets), shared by every chunk on disk

    @property
    def held(self) -> list[int]:
        """The chunks whose states this document holds (all of them, or this rank's share)."""
        return sorted(self.states) if self.states else list(self.on_disk)

    @property
    def nbytes(self) -> int:
        """Bytes of the kept states (in memory)."""
        return sum(t.numel() * t.element_size() for s in self.states.values() for t in state_leaves(s)[0])

    def batch_state(self, adapter, indices: list[int], template):
        """The states of ``indices`` as one batched state (a fresh copy: the document is never changed)."""
        if self.states:
            return adapter.concat([self.states[i] for i in indices])
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device=str(adapter.device)) as f:
            count = int(self.meta["tensors_per_state"])
            states = [state_from_leaves(template, [f.get_tensor(f"chunk{i}.{k}") for k in range(count)], self.scalars)
                      for i in indices]
        return adapter.concat(states)

    # --- disk -----------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file: every state tensor, the token ids, and the metadata as a JSON header."""
        from safetensors.torch import save_file

        if self.on_disk:
            raise OPRMUsageError("this document's states are on disk already; copy the file instead")
        tensors, scalars = {}, None
        for i, state in sorted(self.states.items()):
            leaves, values = state_leaves(state)
            if scalars is not None and values != scalars:
                raise OPRMUsageError("chunk states differ in layout; this document cannot be saved")
            scalars = values
            tensors.update({f"chunk{i}.{k}": t.detach().contiguous().cpu() for k, t in enumerate(leaves)})
        tensors["context_ids"] = torch.tensor(self.context_ids, dtype=torch.int64)
        tensors["prefix_ids"] = torch.tensor(self.prefix_ids, dtype=torch.int64)
        header = dict(self.meta, format=FORMAT, chunks=[[c.token_start, c.token_end, c.char_start, c.char_end]
                                                        for c in self.chunks],
                      stored=sorted(self.states), scalars=scalars,
                      tensors_per_state=len(state_leaves(next(iter(self.states.values())))[0]) if self.states else 0,
                      context_text=self.context_text)
        path = writable_path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata={"oprm": json.dumps(header)})
            tmp.replace(path)  # never a half-written document under the real name
        except OSError as e:
            if tmp.is_file():
                tmp.unlink()
            raise OPRMUsageError(f"cannot write the document {path}: {e.strerror or e}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EncodedDocument":
        """Open a saved document; its states stay on disk and are read per micro-batch (memory-mapped)."""
        from safetensors import SafetensorError, safe_open

        if not os.path.isfile(path):
            raise OPRMUsageError(f"document file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {}).get("oprm", "{}"))
                if header.get("format") != FORMAT:
                    raise OPRMUsageError(f"{path} is not an oprm document ({FORMAT})")
                context_ids = f.get_tensor("context_ids").tolist()
                prefix_ids = f.get_tensor("prefix_ids").tolist()
        except (SafetensorError, OSError, ValueError) as e:
            if isinstance(e, OPRMUsageError):
                raise
            raise OPRMUsageError(f"cannot read document {path}: {e}") from None
        chunks = [Chunk(i, *span) for i, span in enumerate(header.pop("chunks"))]
        return cls(header, prefix_ids, context_ids, chunks, header.pop("context_text", None), path=str(path),
                   on_disk=header.pop("stored"), scalars=header.pop("scalars"))

    def check(self, fingerprint: dict, chunking: dict) -> None:
        """One clear error if this document was made by another model, tokenizer, dtype or chunking."""
        for key, value in fingerprint.items():
            if self.meta.get(key) != value:
                raise OPRMUsageError(f"this document was encoded with another {key.replace('_', ' ')} "
                                     f"({self.meta.get(key)!r}, here {value!r}); encode it again")
        for key, value in chunking.items():
            if self.meta.get(key) != value:
                raise OPRMUsageError(f"this document was encoded with {key} {self.meta.get(key)!r}, not {value!r}")


def writable_path(path: str | os.PathLike) -> Path:
    """``path`` as a document file to write, or one clear error if it names a folder or lies under a file (checked
    before the work, so that hours of encoding are not lost to a typo)."""
    path = Path(path)
    if path.is_dir():
        raise OPRMUsageError(f"{path} is a folder: name the document file to write (e.g. {path / 'document.oprm'})")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OPRMUsageError(f"cannot write the document {path}: {parent} is not a writable folder")
    return path


def fingerprint(model, tokenizer) -> dict:
    """What a document's states depend on: the model (type, config, weights' dtype), the tokenizer, oprm."""
    from .version import __version__

    config = getattr(model, "config", None)
    to_json = getattr(config, "to_json_string", None)
    config_text = to_json(use_diff=False) if to_json else repr(config)
    params = list(model.named_parameters()) if hasattr(model, "named_parameters") else []
    return {"model": getattr(config, "_name_or_path", None) or type(model).__name__,
            "model_config": hashlib.sha256(config_text.encode()).hexdigest()[:16],
            "model_weights": _weights_hash(params),
            "dtype": str(params[0][1].dtype) if params else None,
            "tokenizer": _tokenizer_hash(tokenizer), "oprm_version": __version__}


@torch.no_grad()
def _weights_hash(params) -> str:
    """A hash of ~1K evenly spaced values of every weight: tells apart checkpoints of one architecture, cheaply."""
    h = hashlib.sha256()
    for name, p in params:
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)][:1024].float().cpu()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def _tokenizer_hash(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    elif hasattr(tokenizer, "get_vocab"):
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:  # a tokenizer of another kind (the RWKV World one): the text of ~4K evenly spaced ids
        size = len(tokenizer)
        text = json.dumps([size] + tokenizer.batch_decode([[i] for i in range(0, size, max(1, size // 4096))]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def document_key(fingerprint: dict, chunking: dict, prefix_ids: list[int], context_ids: list[int]) -> str:
    h = hashlib.sha256(json.dumps([fingerprint, chunking, prefix_ids], sort_keys=True).encode())
    h.update(torch.tensor(context_ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:32]


class DocumentCache:
    """The engine's automatic cache: encoded documents by key, least recently used first out, within a byte
    budget; with a folder, documents are also written there and found by later processes."""

    def __init__(self):
        self.items: OrderedDict[str, EncodedDocument] = OrderedDict()
        self.sizes: dict[str, int] = {}
        self.hits = self.misses = 0

    def get(self, key: str, folder: str | None) -> tuple[EncodedDocument | None, str]:
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key], "hit"
        if folder and os.path.isfile(os.path.join(folder, key + ".oprm")):
            self.hits += 1
            return EncodedDocument.load(os.path.join(folder, key + ".oprm")), "disk"
        self.misses += 1
        return None, "miss"

    def put(self, key: str, doc: EncodedDocument, max_bytes: int, folder: str | None) -> bool:
        """Keep ``doc`` (if it fits the budget at all); returns whether it was kept in memory."""
        if folder:
            doc.save(os.path.join(folder, key + ".oprm"))
        size = doc.nbytes
        if size > max_bytes:
            return False
        self.items[key], self.sizes[key] = doc, size
        while sum(self.sizes.values()) > max_bytes:
            old, _ = self.items.popitem(last=False)
            del self.sizes[old]
        return True
