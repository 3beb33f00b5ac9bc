"""Encoded documents: a long context prefilled once, then asked many questions.

In OPRM the question sits in the suffix S, after the chunk, so the state of a recurrent model after [P, C_i] does not
depend on the question. ``OPRM.encode`` keeps that state for every chunk; ``OPRM.generate(document=doc, query=...)``
then runs only S on top of each state (b·|S| tokens at most instead of N), selects and decodes as usual (attention
layers: their keys/values of [P, C_i] are the state).

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
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters.base import state_from_leaves, state_nbytes
from .chunking import Chunk
from .document_file import DocumentWriter, FolderClaim, read_header, read_state_tensor
from .errors import OPRMUsageError
from .heap import release_freed_memory



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
    checksums: dict = field(default_factory=dict)  # tensor name -> SHA-256 (states on disk)

    @property
    def held(self) -> list[int]:
        """The chunks whose states this document holds (all of them, or this rank's share)."""
        return sorted(self.states) if self.states else list(self.on_disk)

    @property
    def nbytes(self) -> int:
        """Bytes of the kept states (in memory)."""
        return sum(state_nbytes(s) for s in self.states.values())

    def batch_state(self, adapter, indices: list[int], template):
        """The states of ``indices`` as one batched state (a fresh copy: the document is never changed); states
        read from disk are checked against their checksums."""
        if self.states:
            return adapter.concat([self.states[i] for i in indices])
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            count = int(self.meta["tensors_per_state"])
            states = [state_from_leaves(template, [read_state_tensor(self.path, f, f"chunk{i}.{k}", self.checksums)
                                                   .to(adapter.device) for k in range(count)], self.scalars)
                      for i in indices]
        return adapter.concat(states)

    # --- disk -----------------------------------------------------------------------------------------------------
    def header(self) -> dict:
        """What the file's JSON header says besides the states: what made the document, its chunks, its text."""
        return dict(self.meta, chunks=[[c.token_start, c.token_end, c.char_start, c.char_end] for c in self.chunks],
                    context_text=self.context_text)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file: every state tensor, the token ids, the metadata as a JSON header, and their
        checksums (``oprm.document_file``); one state at a time is copied off its device."""
        if self.on_disk:
            raise OPRMUsageError("this document's states are on disk already; copy the file instead")
        writer = DocumentWriter(path)
        try:
            for i, state in sorted(self.states.items()):
                writer.add_state(i, state)
        except BaseException:
            writer.abort()
            raise
        return writer.close(self.header(), self.context_ids, self.prefix_ids)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EncodedDocument":
        """Open a saved document; its header and token ids are checked now, its states stay on disk (memory-mapped)
        and are read, and checked, per micro-batch."""
        from safetensors import SafetensorError, safe_open

        if not os.path.isfile(path):
            raise OPRMUsageError(f"document file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = read_header(str(path), f)
        except (SafetensorError, OSError, ValueError) as e:
            if isinstance(e, OPRMUsageError):
                raise
            raise OPRMUsageError(f"cannot read document {path}: {e}") from None
        chunks = [Chunk(i, *span) for i, span in enumerate(header.pop("chunks"))]
        doc = cls(header, header.pop("prefix_ids"), header.pop("context_ids"), chunks,
                  header.pop("context_text", None), path=str(path), on_disk=header.pop("stored"),
                  scalars=header.pop("scalars"))
        doc.checksums = header.pop("state_checksums")
        return doc

    def check(self, fingerprint: dict, chunking: dict) -> None:
        """One clear error if this document was made by another model, tokenizer, dtype or chunking."""
        for key, value in fingerprint.items():
            if self.meta.get(key) != value:
                raise OPRMUsageError(f"this document was encoded with another {key.replace('_', ' ')} "
                                     f"({self.meta.get(key)!r}, here {value!r}); encode it again")
        for key, value in chunking.items():
            if self.meta.get(key) != value:
                raise OPRMUsageError(f"this document was encoded with {key} {self.meta.get(key)!r}, not {value!r}")


def fingerprint(model, tokenizer) -> dict:
    """What a document's states depend on: the model (config, a sample of its weights, their dtype), the tokenizer
    and oprm. Not the model's path: an identical copy elsewhere matches, another model at the same path does not."""
    from .version import __version__

    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        values = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "_commit_hash")}
        config_text = json.dumps(values, sort_keys=True, default=str)
    else:
        config_text = repr(config)
    params = list(model.named_parameters()) if hasattr(model, "named_parameters") else []
    return {"model_type": getattr(config, "model_type", None) or type(model).__name__,
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


INFLIGHT_WAIT_S = 600.0  # longest wait for a document another request (or replica) is encoding


class DocumentCache:
    """The engine's automatic cache: encoded documents by key, least recently used first out, within a byte
    budget; with a folder, documents are also written there and found by later processes. Thread-safe (a batching
    server answers several requests at once)."""

    def __init__(self):
        self.items: OrderedDict[str, EncodedDocument] = OrderedDict()
        self.sizes: dict[str, int] = {}
        self.hits = self.misses = 0
        self.extensions = 0  # misses served by extending a cached document (only its new chunks encoded)
        self.lock = threading.RLock()
        self.inflight: dict[str, tuple] = {}  # key being encoded after a miss -> (event set when done, thread)
        self.claims: dict[str, FolderClaim] = {}  # key being encoded into the cache folder -> its lock

    def get(self, key: str, folder: str | None, wait: float = INFLIGHT_WAIT_S) -> tuple[EncodedDocument | None, str]:
        """(document, "hit" | "disk") or (None, "miss"). A miss marks the key as being encoded: a request for it
        meanwhile, here or in a replica on the same ``folder`` (``FolderClaim``), waits for it (at most ``wait`` s)
        instead of encoding it too, until ``settle(key)`` (``NewDocument.finish``/``abort``)."""
        me, claim = threading.current_thread(), None
        with self.lock:
            event, owner = self.inflight.get(key, (None, None))
        if event is not None and owner is not me and owner.is_alive():
            event.wait(wait)
        with self.lock:
            document, status = self._get(key, folder)
            if document is None:  # this caller encodes it (an earlier attempt of its own ended without settling)
                self.inflight[key] = self.inflight.get(key, (threading.Event(), me))[:1] + (me,)
                if folder and key not in self.claims:
                    try:
                        claim = self.claims[key] = FolderClaim(folder, key)
                    except OSError as e:  # who waits for this key goes on; the caller gets one clear line
                        self.settle(key)
                        # no path in the message: a server's client must not learn where its files are
                        raise OPRMUsageError(f"cannot use the cache folder: {e.strerror or type(e).__name__}") from None
        if claim is not None and not claim.take(wait) and os.path.isfile(os.path.join(folder, key + ".oprm")):
            self.settle(key)  # a replica encoded it meanwhile
            with self.lock:
                self.misses -= 1
                return self._get(key, folder)
        return document, status

    def settle(self, key: str) -> None:
        """The document of ``key`` is encoded (kept or not), or its encoding failed: whoever waits for it goes on."""
        with self.lock:
            event, _ = self.inflight.pop(key, (None, None))
            claim = self.claims.pop(key, None)
        if claim is not None:
            claim.release()
        if event is not None:
            event.set()

    def _get(self, key: str, folder: str | None) -> tuple[EncodedDocument | None, str]:
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key], "hit"
        if folder and os.path.isfile(os.path.join(folder, key + ".oprm")):
            self.hits += 1
            return EncodedDocument.load(os.path.join(folder, key + ".oprm")), "disk"
        self.misses += 1
        return None, "miss"

    def states_by_content(self, prefix_ids: list[int], meta: dict, wanted: dict[tuple, list[int]]) -> dict:
        """Chunk index -> state, for the chunks whose tokens (``wanted``: token content -> chunk indices) a document
        in memory holds under the same P and ``meta`` (the model's path aside); most recently used documents first."""
        with self.lock:
            docs = [d for d in reversed(self.items.values()) if d.prefix_ids == prefix_ids and d.states
                    and all(d.meta.get(k) == v for k, v in meta.items() if k != "model")]
        wanted, states = dict(wanted), {}
        for doc in docs:
            for c in doc.chunks:
                for i in wanted.pop(tuple(doc.context_ids[c.token_start:c.token_end]), ()):
                    states[i] = doc.states[c.index]  # shared, never changed: batch_state copies
            if not wanted:
                break
        return states

    def make_room(self, nbytes: int, max_bytes: int) -> bool:
        """Evict least recently used documents until ``nbytes`` more fit ``max_bytes``; False if they never can."""
        if nbytes > max_bytes:
            return False
        with self.lock:
            return self._make_room(nbytes, max_bytes)

    def _make_room(self, nbytes: int, max_bytes: int) -> bool:
        while self.items and sum(self.sizes.values()) + nbytes > max_bytes:
            old, _ = self.items.popitem(last=False)
            del self.sizes[old]
        return True

    def store(self, key: str, doc: EncodedDocument, max_bytes: int) -> bool:
        """Keep ``doc`` in memory if it fits the budget (evicting the least recently used); whether it was kept."""
        size = doc.nbytes
        with self.lock:
            if not self.make_room(size, max_bytes):
                return False
            self.items[key], self.sizes[key] = doc, size
            return True


class NewDocument:
    """Where a cache miss puts each chunk's state as the prefill makes it. In memory only while the whole document
    fits the cache's byte budget: after the first state its size is known (every chunk's state is as large), and a
    document that will not fit keeps nothing, so its states go with their micro-batch exactly as with the cache off.
    With a cache folder every state is also written there as it comes (``DocumentWriter``). Memory of a miss is
    therefore one micro-batch plus at most the budget, whatever the document's length."""

    def __init__(self, cache: DocumentCache, key: str, max_bytes: int, folder: str | None, num_states: int):
        self.cache, self.key, self.max_bytes, self.num_states = cache, key, max_bytes, num_states
        self.states: dict[int, object] | None = {} if max_bytes > 0 else None
        self.nbytes = 0
        self.writer = DocumentWriter(os.path.join(folder, key + ".oprm")) if folder else None
        self.seen: set[int] = set()
        self.untrimmed = 0  # bytes of states kept since freed memory was last handed back
        self.parts: tuple | None = None  # what ``finish`` is told, when known before (``describe``)
        self.stored = False

    def describe(self, meta: dict, prefix_ids: list[int], context_ids: list[int], chunks: list[Chunk],
                 context_text: str | None) -> None:
        """What the document is, told before its states come: the cache then keeps it as soon as its last state
        arrives (before the answer is decoded), so a request for the same document waiting meanwhile goes on."""
        self.parts = (meta, prefix_ids, context_ids, chunks, context_text)

    def wants(self, index: int) -> bool:
        return index not in self.seen and (self.states is not None or self.writer is not None)

    def add(self, index: int, state) -> None:
        """One chunk's batch-1 state (a chunk prefilled again is ignored: its state is the same)."""
        if not self.wants(index):
            return
        self.seen.add(index)
        if self.writer is not None:
            self.writer.add_state(index, state)
        if self.states is None:
            return
        size = state_nbytes(state)
        if not self.states and not self.cache.make_room(size * self.num_states, self.max_bytes):
            self.states = None  # the whole document would not fit: keep nothing
        elif self.nbytes + size > self.max_bytes:
            self.states = None  # states larger than the first one's foretold (not seen in practice)
        else:
            self.states[index], self.nbytes = state, self.nbytes + size
            self.untrimmed += size
            if self.untrimmed >= TRIM_EVERY_BYTES:
                # kept states sit between a micro-batch's freed activations, whose holes grew resident memory by
                # ~40 % of the states kept (docs/documents.md); handing them back as they form costs ~1 % of CPU
                release_freed_memory()
                self.untrimmed = 0
            if self.parts is not None and len(self.states) == self.num_states and self.writer is None:
                self.stored = self.cache.store(self.key, self._document(*self.parts), self.max_bytes)
                self.cache.settle(self.key)

    def holds_all(self) -> bool:
        """Whether every state handed in so far is kept in memory (the document fits the cache)."""
        return self.states is not None and bool(self.seen) and len(self.states) == len(self.seen)

    def document(self) -> EncodedDocument:
        """The document as its states have come so far (``describe`` told what it is)."""
        return self._document(*self.parts)

    def _document(self, meta, prefix_ids, context_ids, chunks, context_text) -> EncodedDocument:
        return EncodedDocument(meta, prefix_ids, context_ids, chunks, context_text, states=self.states or {})

    def finish(self, meta: dict, prefix_ids: list[int], context_ids: list[int], chunks: list[Chunk],
               context_text: str | None) -> bool:
        """Close the file in the folder and keep the document in memory if it fit; whether it was kept."""
        if self.stored:
            return True
        doc = self._document(meta, prefix_ids, context_ids, chunks, context_text)
        if self.writer is not None:
            self.writer.close(doc.header(), context_ids, prefix_ids)
        kept = bool(self.states) and len(self.states) == len(self.seen)
        try:
            return kept and self.cache.store(self.key, doc, self.max_bytes)
        finally:
            self.cache.settle(self.key)

    def abort(self) -> None:
        self.cache.settle(self.key)
        if self.writer is not None:
            self.writer.abort()


TRIM_EVERY_BYTES = 64 << 20
