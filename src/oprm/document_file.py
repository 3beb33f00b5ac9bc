"""The ``.oprm`` file: a safetensors file written state by state, with checksums.

Layout (safetensors): ``chunk{i}.{k}`` (leaf k of chunk i's state), ``context_ids``, ``prefix_ids``, and two
metadata entries: ``oprm`` (the JSON header: what made the document, its chunks, ``state_checksums``) and
``oprm_sha256`` (a SHA-256 of that header and of the token ids). Each state tensor's checksum covers its dtype, shape
and bytes, and is checked when the tensor is read (per micro-batch), so a flipped byte is refused, never answered
from. ``DocumentWriter`` streams the states to disk as they are made: memory holds one state at a time, never the
whole document (the automatic cache spills a new document to its folder this way while answering).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import struct
import time
import uuid
from pathlib import Path

import torch

from .adapters.base import state_leaves
from .errors import OPRMUsageError

FORMAT = "oprm-document/2"
OLD_FORMATS = ("oprm-document/1",)  # before checksums and model fingerprints: refused, encode again
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def tensor_checksum(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (a changed shape with the same bytes is a change too)."""
    h = hashlib.sha256(f"{DTYPES.get(t.dtype, str(t.dtype))}{list(t.shape)}".encode())
    h.update(_bytes(t))
    return h.hexdigest()


def header_checksum(header_text: str, context_ids: torch.Tensor, prefix_ids: torch.Tensor) -> str:
    h = hashlib.sha256(header_text.encode())
    h.update(_bytes(context_ids))
    h.update(_bytes(prefix_ids))
    return h.hexdigest()


def _bytes(t: torch.Tensor):
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()


def writable_path(path: str | os.PathLike) -> Path:
    """``path`` as a document file to write, or one clear error if it names a folder or lies under a file (checked
    before the work, so that a long encoding is not lost to a typo)."""
    path = Path(path)
    if path.is_dir():
        raise OPRMUsageError(f"{path} is a folder: name the document file to write (e.g. {path / 'document.oprm'})")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OPRMUsageError(f"cannot write the document {path}: {parent} is not a writable folder")
    return path


class FolderClaim:
    """The right to encode one document into a cache folder shared by several processes (replicas on one
    ``--cache-dir``): an exclusive lock on ``<key>.lock`` (flock: dropped when the holder closes it or dies). A process
    that cannot take it waits for the holder's document file instead of encoding the same document too."""

    def __init__(self, folder: str, key: str):
        self.path = os.path.join(folder, key + ".lock")
        os.makedirs(folder, exist_ok=True)  # a fresh --cache-dir is made by its first document, as its writer would
        self.fd, self.held = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644), False

    def take(self, wait: float) -> bool:
        """Hold the lock: at once (True), or after waiting for its holder (False), at most ``wait`` seconds."""
        deadline, waited = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.held = True
                return not waited
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False  # the holder is slow: encode it here too rather than wait on
                waited = True
                time.sleep(0.05)

    def release(self) -> None:
        """Drop the lock and its file (a process that opened the file just before still gets this lock, and one that
        comes after makes a new file: at worst a document is encoded twice, never wrongly)."""
        if self.held:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)


class DocumentWriter:
    """Writes a document file state by state: each state's tensors go to a data file as they come (with their
    checksums); ``close`` writes the header and moves the whole under its real name (never a half-written document
    there). ``abort`` removes what was written."""

    def __init__(self, path: str | os.PathLike):
        self.path = writable_path(path)
        unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # two writers of one path never share a temporary file
        self.tmp = self.path.with_name(f"{self.path.name}.{unique}.tmp")
        self.data_path = self.path.with_name(f"{self.path.name}.{unique}.data.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.data = open(self.data_path, "wb")
        except OSError as e:
            raise OPRMUsageError(f"cannot write the document {self.path}: {e.strerror or e}") from None
        self.entries: dict[str, dict] = {}
        self.checksums: dict[str, str] = {}
        self.stored: list[int] = []
        self.scalars = None
        self.tensors_per_state = 0
        self.offset = 0

    def add_state(self, index: int, state) -> None:
        leaves, values = state_leaves(state)
        if self.stored and values != self.scalars:
            raise OPRMUsageError("chunk states differ in layout; this document cannot be saved")
        self.scalars, self.tensors_per_state = values, len(leaves)
        for k, t in enumerate(leaves):
            self._add(f"chunk{index}.{k}", t)
        self.stored.append(index)

    def _add(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().contiguous().cpu()
        if t.dtype not in DTYPES:
            raise OPRMUsageError(f"a state tensor of dtype {t.dtype} cannot be saved")
        raw = _bytes(t)
        self._io(self.data.write, raw)
        self.entries[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [self.offset, self.offset + raw.nbytes]}
        self.checksums[name] = tensor_checksum(t)
        self.offset += raw.nbytes

    def close(self, header: dict, context_ids: list[int], prefix_ids: list[int]) -> Path:
        """Write the file: ``header`` (what made the document, its chunks) plus what the writer knows."""
        ids = {"context_ids": torch.tensor(context_ids, dtype=torch.int64),
               "prefix_ids": torch.tensor(prefix_ids, dtype=torch.int64)}
        for name, t in ids.items():
            self._add(name, t)
        self._io(self.data.close)
        header = dict(header, format=FORMAT, stored=self.stored, scalars=self.scalars,
                      tensors_per_state=self.tensors_per_state, state_checksums=self.checksums)
        text = json.dumps(header)
        metadata = {"oprm": text, "oprm_sha256": header_checksum(text, ids["context_ids"], ids["prefix_ids"])}
        raw = json.dumps({"__metadata__": metadata, **self.entries}).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it

        def write():
            with open(self.tmp, "wb") as out, open(self.data_path, "rb") as data:
                out.write(struct.pack("<Q", len(raw)))
                out.write(raw)
                shutil.copyfileobj(data, out, 2**24)
            self.tmp.replace(self.path)

        self._io(write)
        self.data_path.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        if not self.data.closed:
            self.data.close()
        for p in (self.data_path, self.tmp):
            p.unlink(missing_ok=True)

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            self.abort()
            raise OPRMUsageError(f"cannot write the document {self.path}: {e.strerror or e}") from None


def read_header(path: str, f) -> dict:
    """The checked JSON header of an open document file (``f``: safetensors' ``safe_open``), with the token ids."""
    metadata = f.metadata() or {}
    text = metadata.get("oprm", "{}")
    header = json.loads(text)
    if header.get("format") in OLD_FORMATS:
        raise OPRMUsageError(f"{path} was written by an older oprm ({header['format']}, without checksums): encode "
                             "the document again")
    if header.get("format") != FORMAT:
        raise OPRMUsageError(f"{path} is not an oprm document ({FORMAT})")
    context_ids, prefix_ids = f.get_tensor("context_ids"), f.get_tensor("prefix_ids")
    if metadata.get("oprm_sha256") != header_checksum(text, context_ids, prefix_ids):
        raise OPRMUsageError(f"{path} is corrupted: its header or token ids fail their checksum; encode it again")
    header["context_ids"], header["prefix_ids"] = context_ids.tolist(), prefix_ids.tolist()
    return header


def read_state_tensor(path: str, f, name: str, checksums: dict) -> torch.Tensor:
    """One state tensor of an open document file, refused if it fails its checksum."""
    t = f.get_tensor(name)
    if checksums.get(name) != tensor_checksum(t):
        raise OPRMUsageError(f"{path} is corrupted: the state tensor {name} fails its checksum; encode it again")
    return t
