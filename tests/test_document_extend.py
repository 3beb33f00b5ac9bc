"""A document that extends a cached one (a log appended to, a chat whose history grows) encodes only its new chunks;
the answer equals a fresh run on the whole new document. Requests for a document being encoded wait for it."""

from __future__ import annotations

import threading

import pytest
import torch

from oprm import OPRM
from oprm.document import DocumentCache
from tiny_models import VOCAB, tiny_model

L = 8


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("model_type", ["mamba2", "llama"])
def test_appending_encodes_only_the_new_chunks(model_type):
    model = tiny_model(model_type)
    cached = OPRM(model, chunk_size=L, idk=None)
    fresh = OPRM(model, chunk_size=L, idk=None, document_cache_bytes=0)
    prefix, suffix = [1, 5, 6], [4, 9]
    base = ids(400, 1)  # 50 chunks
    grown = base + ids(4, 2)  # + 1 %: one new (overlapping) last chunk
    first = cached.generate(prefix_ids=prefix, context_ids=base, suffix_ids=suffix, max_new_tokens=4)
    assert first.document["cache"] == "miss"
    result = cached.generate(prefix_ids=prefix, context_ids=grown, suffix_ids=suffix, max_new_tokens=4)
    reference = fresh.generate(prefix_ids=prefix, context_ids=grown, suffix_ids=suffix, max_new_tokens=4)
    assert result.document["cache"] == "extended"
    assert result.document["encoded_chunks"] == 1 and result.document["reused_chunks"] == 50
    assert result.token_ids == reference.token_ids and result.chosen == reference.chosen
    assert [c.entropy for c in result.chunks] == pytest.approx([c.entropy for c in reference.chunks], abs=1e-5)
    # the prefill: the new chunk's tokens (and P) plus S on every chunk, against all of [P, C_i, S] (the
    # look-ahead decoding of the selection is the same in both)
    prefilled = result.tokens_processed - result.lookahead_tokens
    assert prefilled <= len(prefix) + L + 51 * len(suffix) + 4
    assert reference.tokens_processed - reference.lookahead_tokens >= len(prefix) + 51 * (L + len(suffix))
    again = cached.generate(prefix_ids=prefix, context_ids=grown, suffix_ids=[4, 7], max_new_tokens=4)
    assert again.document["cache"] == "hit" and cached.documents.extensions == 1
    # a document that only shares a beginning by chance (another P) is not extended from
    other = cached.generate(prefix_ids=[1, 5], context_ids=grown, suffix_ids=suffix, max_new_tokens=4)
    assert other.document["cache"] == "miss"


@pytest.mark.parametrize("chunking", ["tokens", "sentences"])
def test_extension_on_text_keeps_the_complete_chunks(chunking):
    """On text (the shipped model and tokenizer): appending ~1 % re-encodes at most the last old chunk and the new
    ones, with plain and with sentence-snapped windows (both are placed from the text's start)."""
    from oprm.synthetic.ar import AR_TEMPLATE, make_ar_episode

    engine = OPRM.from_pretrained("oprm-ar-mamba2", chunk_size=64, chunking=chunking)
    fresh = OPRM(engine.model, engine.tokenizer, chunk_size=64, chunking=chunking, prompt_format=engine.prompt_format,
                 document_cache_bytes=0)
    ep = make_ar_episode(5, 120)
    more = make_ar_episode(6, 3).facts[0]
    kwargs = dict(template=AR_TEMPLATE, answer_prefix=ep.answer_prefix, max_new_tokens=8)
    engine.generate(context=ep.context, query=ep.question, **kwargs)
    grown = ep.context + " " + more
    result = engine.generate(context=grown, query=ep.question, **kwargs)
    reference = fresh.generate(context=grown, query=ep.question, **kwargs)
    info = result.document
    assert info["cache"] == "extended", info
    total = info["reused_chunks"] + info["encoded_chunks"]
    assert info["encoded_chunks"] <= 2 and total == len(reference.chunks)
    assert result.text == reference.text and result.chosen == reference.chosen


def test_a_request_waits_for_the_document_another_is_encoding():
    cache = DocumentCache()
    assert cache.get("k", None) == (None, "miss")  # this caller encodes it
    seen = []
    waiter = threading.Thread(target=lambda: seen.append(cache.get("k", None, wait=30)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waiting, not encoding the same document again
    cache.settle("k")  # the encoding failed (or did not fit): the waiter goes on, and encodes it itself
    waiter.join(10)
    assert seen == [(None, "miss")] and "k" in cache.inflight
    cache.settle("k")
    assert cache.misses == 2 and not cache.inflight
    # the same thread asking again (its earlier encoding ended without settling) does not wait for itself
    assert cache.get("j", None, wait=30) == (None, "miss") and cache.get("j", None, wait=30) == (None, "miss")


def test_replicas_on_one_cache_folder_encode_a_document_once(tmp_path):
    """Two engines on one --cache-dir stand for two replicas (two caches, two locks): while one encodes a document,
    the other's request for it waits for its file and reads it instead of encoding it too; the answers agree."""
    model = tiny_model("mamba2")
    engines = [OPRM(model, chunk_size=8, idk=None, cache_dir=str(tmp_path)) for _ in range(2)]
    kwargs = dict(prefix_ids=[1, 5], context_ids=list(range(3, 60)), suffix_ids=[4, 7], max_new_tokens=3)
    results = [None, None]
    slow, encode = engines[0].adapter, engines[0].adapter.prefill

    def slow_prefill(*args, **kw):  # the first replica's encoding takes a while
        threading.Event().wait(0.05)
        return encode(*args, **kw)

    slow.prefill = slow_prefill
    first = threading.Thread(target=lambda: results.__setitem__(0, engines[0].generate(**kwargs)))
    first.start()
    for _ in range(2000):  # until the first replica holds the document's claim
        if engines[0].documents.claims:
            break
        threading.Event().wait(0.005)
    results[1] = engines[1].generate(**kwargs)
    first.join(60)
    assert results[0].document["cache"] == "miss" and results[1].document["cache"] == "disk"
    assert results[1].token_ids == results[0].token_ids and results[1].chosen == results[0].chosen
    assert not engines[0].documents.claims and not engines[1].documents.claims


def test_a_replica_that_gives_up_waiting_encodes_the_document_itself(tmp_path):
    a, b = DocumentCache(), DocumentCache()
    assert a.get("k", str(tmp_path)) == (None, "miss") and "k" in a.claims
    assert b.get("k", str(tmp_path), wait=0.2) == (None, "miss")  # a is slow and wrote nothing: b encodes it too
    a.settle("k")
    b.settle("k")
    assert not a.claims and not b.claims
