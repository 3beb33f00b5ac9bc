"""Documents that extend a cached one: a log appended to, a chat whose history grows, the same passages in another
document. Only the chunks whose tokens no cached document has are encoded.

The state after [P, C_i] depends on P and on C_i's tokens only (every row starts at position 0), so a chunk of a new
context whose tokens are those of a chunk of a cached document with the same P (model, dtype, chunking) has that
chunk's state. Every chunking places its windows from the text's start, so appending keeps the earlier chunks'
contents: only the old last chunk (the final L tokens) and the new ones are encoded (docs/serving.md measures it).
"""

from __future__ import annotations

from .chunking import Chunk
from .document import EncodedDocument, state_nbytes
from .run import ChunkRun, chunking_used


def chunk_tokens(context_ids: list[int], chunks: list[Chunk]) -> dict[tuple, list[int]]:
    """The token content of each chunk -> the indices of the chunks holding it."""
    out: dict[tuple, list[int]] = {}
    for c in chunks:
        out.setdefault(tuple(context_ids[c.token_start:c.token_end]), []).append(c.index)
    return out


def extend_cached(engine, prompt, config, key: str, prefiller) -> tuple[EncodedDocument | None, dict]:
    """On a cache miss: a document built from the states of the cached documents' chunks (in memory, same model,
    chunking and P) that hold the same tokens, and the new chunks encoded; kept in the cache under ``key``, with
    {"cache": "extended", "reused_chunks", "encoded_chunks"}. (None, {}) when no cached chunk matches, or the
    document would not fit the cache's budget."""
    try:
        return _extend_cached(engine, prompt, config, key, prefiller)
    except BaseException:  # e.g. the client left during the encoding: who waits for this document goes on
        engine.documents.settle(key)
        raise


def _extend_cached(engine, prompt, config, key: str, prefiller) -> tuple[EncodedDocument | None, dict]:
    cache = engine.documents
    if config.document_cache_bytes <= 0 or engine.chunk_parallel is not None:
        return None, {}
    meta = engine.document_meta(config, chunking_used(prompt, config))
    chunks = ChunkRun.chunks_of(prompt, config)
    states = cache.states_by_content(prompt.prefix_ids, meta, chunk_tokens(prompt.context_ids, chunks))
    if not states:
        return None, {}
    per_state = state_nbytes(next(iter(states.values())))
    if not cache.make_room(per_state * len(chunks), config.document_cache_bytes):
        return None, {}
    reused = len(states)
    new = [c for c in chunks if c.index not in states]
    if new:
        states.update(prefiller.chunk_states(prompt.prefix_ids, prompt.context_ids, new, config.shared_prefix))
    doc = EncodedDocument(meta, prompt.prefix_ids, prompt.context_ids, chunks, prompt.context_text, states=states)
    cache.store(key, doc, config.document_cache_bytes)
    with cache.lock:
        cache.extensions += 1
    cache.settle(key)
    return doc, {"cache": "extended", "reused_chunks": reused, "encoded_chunks": len(new)}
