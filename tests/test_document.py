"""Encoded documents: a question on an encoded document equals OPRM from scratch, for every architecture; on disk;
in the automatic cache; and every mismatch is one clear error."""

import os
import random

import pytest
import torch
from tiny_models import CONFIGS, VOCAB, reference_generate, tiny_model
from tiny_tokenizer import tiny_tokenizer

from oprm import OPRM, OPRMUsageError
from oprm.document import EncodedDocument

ARCHS = sorted(CONFIGS)
NEW = 4
TOL = 1e-5


def prompt(seed=0, n_context=40, n_suffix=6):
    rng = random.Random(seed)
    tokens = lambda n: [rng.randrange(3, VOCAB) for _ in range(n)]  # noqa: E731
    return tokens(5), tokens(n_context), tokens(n_suffix)


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return tiny_model(request.param)


def scratch(model):
    return OPRM(model, chunk_size=12, idk=None, document_cache_bytes=0)


def test_every_chunk_on_a_document_equals_generate(model):
    P, C, S = prompt()
    engine = scratch(model)
    doc = engine.encode(prefix_ids=P, context_ids=C)
    assert len(doc.chunks) == 4
    for j in range(4):
        result = engine.generate(document=doc, suffix_ids=S, selection="oracle", gold_chunk=j, max_new_tokens=NEW,
                                 output_logits=True)
        fresh = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, selection="oracle", gold_chunk=j,
                                max_new_tokens=NEW, output_logits=True)
        assert result.chosen == [j] and result.document == {"source": "document"}
        c = result.chunks[j]
        ref_tokens, ref_logits = reference_generate(model, P + C[c.token_start:c.token_end] + S, NEW)
        assert result.token_ids == ref_tokens == fresh.token_ids
        assert max(float((a - b).abs().max()) for a, b in zip(result.logits, ref_logits)) < TOL
        assert max(abs(a.entropy - b.entropy) for a, b in zip(result.chunks, fresh.chunks)) < TOL
        if engine.adapter.continuation_exact:  # only S runs: b*|S| prefill tokens, plus the decode steps
            assert result.tokens_processed == 4 * len(S) + NEW - 1


def test_document_answers_many_questions_like_scratch(model):
    P, C, _ = prompt(1)
    engine = scratch(model)
    doc = engine.encode(prefix_ids=P, context_ids=C)
    for seed in range(3):
        S = prompt(10 + seed)[2]
        a = engine.generate(document=doc, suffix_ids=S, max_new_tokens=NEW)
        b = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW)
        entropies = sorted(c.entropy for c in b.chunks)
        if entropies[1] - entropies[0] > 1e-4:  # the choice is determined, not a float-rounding tie
            assert a.chosen == b.chosen and a.token_ids == b.token_ids


def test_saved_document_streams_from_disk(model, tmp_path):
    P, C, S = prompt(2)
    engine = scratch(model)
    doc = engine.encode(prefix_ids=P, context_ids=C)
    # an architecture whose state cannot be continued exactly holds no states: the file keeps the tokens, and a
    # question recomputes from them; every other architecture must hold all four chunks' states
    assert doc.held == ([0, 1, 2, 3] if engine.adapter.continuation_exact else [])
    path = doc.save(tmp_path / "doc.oprm")
    loaded = EncodedDocument.load(path)
    assert loaded.held == doc.held and loaded.context_ids == C and loaded.prefix_ids == P
    for j in (0, 3):
        kwargs = dict(suffix_ids=S, selection="oracle", gold_chunk=j, max_new_tokens=NEW, output_logits=True)
        a, b = engine.generate(document=doc, **kwargs), engine.generate(document=loaded, **kwargs)
        assert a.token_ids == b.token_ids
        assert max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits)) < TOL
    one_batch = engine.generate(document=loaded, suffix_ids=S, max_new_tokens=NEW)
    small = engine.generate(document=loaded, suffix_ids=S, max_new_tokens=NEW, max_batch_tokens=20)  # 1 row each
    assert max(abs(a.entropy - b.entropy) for a, b in zip(one_batch.chunks, small.chunks)) < TOL


@pytest.fixture(scope="module")
def chat_engine():
    tok = tiny_tokenizer()
    model = tiny_model("mamba2")
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    return OPRM(model, tok, chunk_size=16)


TEXT = "The code of the amber falcon is 4821. The weather was calm and the river ran slowly. " * 8


def test_automatic_cache_skips_the_prefill(chat_engine):
    chat_engine.documents.items.clear()
    first = chat_engine.generate(context=TEXT, query="What is the code?", max_new_tokens=4)
    second = chat_engine.generate(context=TEXT, query="What is the weather?", max_new_tokens=4)
    again = chat_engine.generate(context=TEXT, query="What is the weather?", max_new_tokens=4, document_cache_bytes=0)
    assert first.document["cache"] == "miss" and first.document["kept"]
    assert second.document["cache"] == "hit" and again.document is None
    assert second.token_ids == again.token_ids
    assert max(abs(a.entropy - b.entropy) for a, b in zip(second.chunks, again.chunks)) < TOL
    only_suffix = (len(second.chunks) * second.prompt_tokens["suffix"] + len(second.token_ids) - 1
                   + second.lookahead_tokens)
    assert second.tokens_processed == only_suffix < again.tokens_processed
    other = chat_engine.generate(context=TEXT + " More.", query="What is the code?", max_new_tokens=4)
    # another context, another key; it extends the cached one, so only chunks with new tokens are encoded
    assert other.document["cache"] == "extended" and other.document["encoded_chunks"] < len(other.chunks)


def test_cache_folder_is_shared_between_engines(chat_engine, tmp_path):
    folder = tmp_path / "fresh" / "cache"  # made by the first document
    other = OPRM(chat_engine.model, chat_engine.tokenizer, chunk_size=16)
    kwargs = dict(context=TEXT, query="What is the code?", max_new_tokens=4, cache_dir=str(folder))
    first = OPRM(chat_engine.model, chat_engine.tokenizer, chunk_size=16).generate(**kwargs)
    second = other.generate(**kwargs)
    assert first.document["cache"] == "miss" and second.document["cache"] == "disk"
    assert first.token_ids == second.token_ids and len(list(folder.glob("*.oprm"))) == 1


def test_text_document_and_its_errors(chat_engine, tmp_path):
    doc = chat_engine.encode(TEXT)
    a = chat_engine.generate(document=doc, query="What is the code?", max_new_tokens=4)
    b = chat_engine.generate(context=TEXT, query="What is the code?", max_new_tokens=4, document_cache_bytes=0)
    assert a.token_ids == b.token_ids and a.chosen_spans == b.chosen_spans
    with pytest.raises(OPRMUsageError, match="chunk_size"):
        chat_engine.generate(document=doc, query="What?", chunk_size=32)
    with pytest.raises(OPRMUsageError, match="prefix"):
        chat_engine.generate(document=doc, query="What?", system_prompt="Be brief.")
    with pytest.raises(OPRMUsageError, match="before"):
        chat_engine.encode(TEXT, template="Question: {input}\n{context}\nAnswer:")
    path = doc.save(tmp_path / "doc.oprm")
    stranger = OPRM(tiny_model("mamba2", seed=3), chat_engine.tokenizer, chunk_size=16)
    stranger.model.resize_token_embeddings(len(chat_engine.tokenizer), mean_resizing=False)
    with pytest.raises(OPRMUsageError, match="encoded with another"):
        stranger.generate(document=EncodedDocument.load(path), query="What?")
    (tmp_path / "junk.oprm").write_bytes(b"not a document")
    with pytest.raises(OPRMUsageError, match="cannot read"):
        EncodedDocument.load(tmp_path / "junk.oprm")
    with pytest.raises(OPRMUsageError, match="not found"):
        EncodedDocument.load(tmp_path / "missing.oprm")


def test_cache_is_bounded_in_bytes(chat_engine):
    chat_engine.documents.items.clear()
    chat_engine.documents.sizes.clear()
    small = chat_engine.generate(context=TEXT, query="What?", max_new_tokens=1)
    size = chat_engine.documents.sizes[next(iter(chat_engine.documents.items))]
    budget = int(size * 1.5)  # room for one document, not two
    for i in range(3):
        chat_engine.generate(context=TEXT + f" Extra {i}.", query="What?", max_new_tokens=1, document_cache_bytes=budget)
    assert len(chat_engine.documents.items) == 1 and sum(chat_engine.documents.sizes.values()) <= budget
    tiny = chat_engine.generate(context=TEXT + " Other.", query="What?", max_new_tokens=1, document_cache_bytes=10)
    assert tiny.document["kept"] is False and small.document["cache"] == "miss"


def test_state_layout_round_trip_every_architecture(model):
    """concat(select(rows)) rebuilds a batch state exactly (what document micro-batches rely on)."""
    adapter = OPRM(model).adapter
    ids = torch.randint(3, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, state = adapter.prefill(ids)
        rebuilt = adapter.concat([adapter.select(state, [r]) for r in range(3)])
        nxt = torch.randint(3, VOCAB, (3, 4), generator=torch.Generator().manual_seed(1))
        a, _ = adapter.prefill(nxt, adapter.select(state, [0, 1, 2]), start=10)
        b, _ = adapter.prefill(nxt, rebuilt, start=10)
    assert float((a - b).abs().max()) < TOL


def test_selected_states_are_freed_without_the_cycle_collector(model):
    """A row selected from a batch state (and the batch it shares tensors with) is freed as soon as nobody holds it:
    no reference cycle, which only Python's cyclic GC would free. One made a miss's per-row states pile up micro-batch
    after micro-batch (a 400 KB document: 1.86x the cache-off peak resident memory)."""
    import gc
    import weakref

    adapter = OPRM(model).adapter
    ids = torch.randint(3, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, state = adapter.prefill(ids)
    gc.collect()
    gc.disable()
    try:
        rows = [adapter.select(state, [r]) for r in range(3)] + [adapter.select(state, [0, 0, 1])]
        merged = adapter.concat(rows[:3])
        refs = [weakref.ref(t) for t in adapter_tensors(state) + adapter_tensors(rows) + adapter_tensors(merged)]
        del state, rows, merged
        assert refs and all(ref() is None for ref in refs)
    finally:
        gc.enable()


def adapter_tensors(obj) -> list:
    from oprm.adapters.base import state_leaves

    return [t for t in state_leaves(obj)[0] if t.numel() > 64] if not isinstance(obj, list) else [
        t for x in obj for t in adapter_tensors(x)]


def _held_bytes(monkeypatch):
    """Record the bytes of states a cache miss holds in memory after every state it is handed."""
    from oprm.document import NewDocument

    held, add = [], NewDocument.add

    def recording(self, index, state):
        add(self, index, state)
        held.append(self.nbytes if self.states is not None else 0)

    monkeypatch.setattr(NewDocument, "add", recording)
    return held


def test_a_miss_holds_no_more_than_the_budget(chat_engine, monkeypatch):
    """A document larger than the budget keeps nothing from its first state on (cache off's memory), a document that
    fits is kept whole, and older documents make room for it."""
    chat_engine.documents.items.clear()
    chat_engine.documents.sizes.clear()
    held = _held_bytes(monkeypatch)
    text = TEXT * 4
    off = chat_engine.generate(context=text, query="What is the code?", max_new_tokens=4, document_cache_bytes=0)
    whole = chat_engine.generate(context=text, query="What is the code?", max_new_tokens=4)
    size = chat_engine.documents.sizes[next(iter(chat_engine.documents.items))]
    assert whole.document["kept"] and max(held) == size and len(off.chunks) > 4
    chat_engine.documents.items.clear()
    chat_engine.documents.sizes.clear()
    held.clear()
    budget = size // 2  # room for half the document's states
    small = chat_engine.generate(context=text, query="What is the code?", max_new_tokens=4,
                                 document_cache_bytes=budget)
    assert small.document == {"source": "cache", "cache": "miss", "kept": False}
    assert max(held) == 0 and not chat_engine.documents.items
    assert small.token_ids == off.token_ids == whole.token_ids
    # two documents that fit one at a time: the second evicts the first before it is kept
    chat_engine.generate(context=TEXT, query="What?", max_new_tokens=1, document_cache_bytes=size)
    chat_engine.generate(context=text, query="What?", max_new_tokens=1, document_cache_bytes=size)
    assert list(chat_engine.documents.sizes.values()) == [size]


def test_a_miss_that_keeps_states_hands_freed_memory_back_as_it_goes(chat_engine, monkeypatch):
    """Holes left between kept states by freed activations are handed back every TRIM_EVERY_BYTES of states kept
    (not only at the end of the request); the answer is unchanged."""
    import oprm.document as document

    chat_engine.documents.items.clear()
    chat_engine.documents.sizes.clear()
    trims = []
    monkeypatch.setattr(document, "release_freed_memory", lambda: trims.append(1))
    text = TEXT * 4
    off = chat_engine.generate(context=text, query="What is the code?", max_new_tokens=4, document_cache_bytes=0)
    assert not trims
    size = document.state_nbytes(chat_engine.adapter.select(chat_engine.adapter.prefill(
        torch.tensor([[5, 6, 7]]))[1], [0]))
    monkeypatch.setattr(document, "TRIM_EVERY_BYTES", 3 * size)
    kept = chat_engine.generate(context=text, query="What is the code?", max_new_tokens=4)
    assert kept.document["kept"] and kept.token_ids == off.token_ids
    assert len(trims) == len(kept.chunks) // 3


def test_a_miss_spills_to_the_cache_folder_state_by_state(chat_engine, monkeypatch, tmp_path):
    """With a cache folder and no memory budget, states go to disk as they are made and none stays in memory; the
    file answers later questions exactly like the context itself."""
    held = _held_bytes(monkeypatch)
    kwargs = dict(context=TEXT, query="What is the code?", max_new_tokens=4)
    spilled = chat_engine.generate(**kwargs, cache_dir=str(tmp_path), document_cache_bytes=0)
    assert spilled.document["cache"] == "miss" and not spilled.document["kept"] and max(held) == 0
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".oprm"]  # no temporary file left behind
    again = OPRM(chat_engine.model, chat_engine.tokenizer, chunk_size=16).generate(**kwargs, cache_dir=str(tmp_path))
    off = chat_engine.generate(**kwargs, document_cache_bytes=0)
    assert again.document["cache"] == "disk"
    assert spilled.token_ids == again.token_ids == off.token_ids
    assert max(abs(a.entropy - b.entropy) for a, b in zip(again.chunks, off.chunks)) < TOL


def test_a_failed_miss_leaves_no_file(chat_engine, tmp_path):
    with pytest.raises(OPRMUsageError):
        chat_engine.generate(context=TEXT, query="What?", cache_dir=str(tmp_path), selection="oracle",
                             gold_chunk=10_000)
    assert list(tmp_path.iterdir()) == []


def test_cache_folder_off_values_home_and_an_unusable_folder(monkeypatch, tmp_path):
    """$OPRM_CACHE_DIR=off is no folder (not one named "off"), ~ is expanded; a folder that cannot be made is one
    clear error, and a later request for the same document does not wait for the failed one."""
    from oprm.config import OPRMConfig
    from oprm.document import DocumentCache
    from oprm.run import cache_folder

    for off in ("off", "none", "0"):
        monkeypatch.setenv("OPRM_CACHE_DIR", off)
        assert cache_folder(OPRMConfig()) is None
    monkeypatch.setenv("OPRM_CACHE_DIR", "~/oprm-docs")
    assert cache_folder(OPRMConfig()) == os.path.expanduser("~/oprm-docs")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cache = DocumentCache()
    for _ in range(2):
        with pytest.raises(OPRMUsageError, match="cannot use the cache folder"):
            cache.get("k" * 64, str(blocker / "docs"), wait=600)
    assert not cache.inflight and not cache.claims
