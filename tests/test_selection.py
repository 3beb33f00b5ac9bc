"""Selection criteria and the IDK filter on constructed first-token distributions (a fake adapter)."""

import math

import pytest
import torch
from tiny_tokenizer import tiny_tokenizer

from oprm import OPRM, OPRMUsageError
from oprm.adapters import StateAdapter
from oprm.records import first_token_stats
from oprm.selection import CandidatePool

TOK = tiny_tokenizer()
V = len(TOK)
EOS = TOK.convert_tokens_to_ids("<|im_end|>")
ERROR = TOK("Error", add_special_tokens=False)["input_ids"][0]
SP_ERROR = TOK(" Error", add_special_tokens=False)["input_ids"][0]


def dist(top: int, p: float) -> torch.Tensor:
    """Logits of a distribution with probability p on token ``top`` and the rest spread evenly."""
    probs = torch.full((V,), (1 - p) / (V - 1))
    probs[top] = p
    return probs.log()


class TableModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = type("G", (), {"eos_token_id": EOS})()


class TableAdapter(StateAdapter):
    """Chunk c's context tokens are all equal to c + 10; its first-token logits come from ``table[c]``.

    Query positions get logits from ``query_table[c]`` (a log-probability for every suffix token). It cannot
    continue a state with several tokens, and says so (no shared prefix, no document cache)."""

    continuation_exact = False

    def __init__(self, table, query_table=None):
        super().__init__(TableModel())
        self.table, self.query_table = table, query_table

    def prefill(self, input_ids, state=None, start=0, num_logits=1):
        if state is None:  # a prompt row: [C_i, S]
            rows = [int(r[0]) - 10 for r in input_ids]
            out = torch.stack([self.table[c] for c in rows]).unsqueeze(1).repeat(1, num_logits, 1)
            if self.query_table is not None and num_logits > 1:
                for i, c in enumerate(rows):
                    boosted = torch.zeros(V)
                    boosted[[5, 6, 7]] = self.query_table[c]  # the suffix tokens
                    out[i, :-1] = boosted
            return out, torch.tensor(rows)
        return dist(EOS, 0.9).view(1, 1, -1).repeat(input_ids.shape[0], 1, 1), state  # decode: stop

    def select(self, state, rows):
        return state[rows]


def run(table, **kwargs):
    engine = OPRM(TableAdapter(table).model, TOK, adapter=TableAdapter(table, kwargs.pop("query_table", None)),
                  chunk_size=4)
    context = [c + 10 for c in range(len(table)) for _ in range(4)]
    return engine.generate(prefix_ids=[], context_ids=context, suffix_ids=kwargs.pop("suffix", [5, 6]),
                           max_new_tokens=3, **kwargs)


def test_lowest_entropy_after_idk_filter():
    table = [dist(50, 0.6), dist(ERROR, 0.99), dist(60, 0.9), dist(SP_ERROR, 0.95), dist(70, 0.7)]
    result = run(table)
    assert [c.is_idk for c in result.chunks] == [False, True, False, True, False]
    assert result.chosen == [2] and result.token_ids[0] == 60
    entropies = [c.entropy for c in result.chunks]
    assert entropies[1] < entropies[2]  # the IDK chunk was more confident, and still dropped
    p = 0.9
    expected = -(p * math.log(p) + (1 - p) * math.log((1 - p) / (V - 1)))
    assert result.chunks[2].entropy == pytest.approx(expected, rel=1e-5)
    assert result.chunks[2].top_tokens[0][0] == 60 and result.chunks[2].top_tokens[0][2] == pytest.approx(0.9)


def test_no_idk_filter():
    table = [dist(50, 0.6), dist(ERROR, 0.99), dist(60, 0.9)]
    assert run(table, idk=None).chosen == [1]


def test_all_idk_answers_idk_or_falls_back():
    table = [dist(ERROR, 0.7), dist(SP_ERROR, 0.95), dist(ERROR, 0.8)]
    result = run(table)
    assert result.chosen == [] and result.text == "Error" and result.idk_fallback_used
    result = run(table, idk_fallback="min_entropy")
    assert result.chosen == [1] and result.idk_fallback_used and result.token_ids[0] == SP_ERROR


def test_fallback_states_are_dropped_once_a_real_answer_appears():
    table = [dist(ERROR, 0.99), dist(60, 0.5), dist(ERROR, 0.999)]
    result = run(table, idk_fallback="min_entropy", max_batch_tokens=6)  # one chunk per micro-batch
    assert result.chosen == [1] and not result.idk_fallback_used


def test_max_prob_and_oracle_and_random():
    table = [dist(50, 0.6), dist(ERROR, 0.99), dist(60, 0.9), dist(70, 0.95)]
    assert run(table, selection="max_prob").chosen == [3]
    assert run(table, selection="oracle", gold_chunk=1).chosen == [1]  # oracle ignores the IDK filter
    engine_picks = set()
    for seed in range(12):
        engine = OPRM(TableModel(), TOK, adapter=TableAdapter(table), chunk_size=4, seed=seed, selection="random")
        ctx = [c + 10 for c in range(4) for _ in range(4)]
        first = engine.generate(prefix_ids=[], context_ids=ctx, suffix_ids=[5], max_new_tokens=2).chosen
        again = engine.generate(prefix_ids=[], context_ids=ctx, suffix_ids=[5], max_new_tokens=2).chosen
        assert first == again  # seeded
        assert first[0] != 1  # the IDK chunk is filtered for random selection too
        engine_picks.add(first[0])
    assert engine_picks == {0, 2, 3}
    with pytest.raises(OPRMUsageError, match="gold"):
        run(table, selection="oracle")
    with pytest.raises(OPRMUsageError, match="unknown selection"):
        run(table, selection="best")


def test_query_likelihood():
    table = [dist(50, 0.9), dist(60, 0.5), dist(70, 0.6)]
    query_table = [-2.0, 3.0, 0.0]  # chunk 1 makes every suffix token most likely
    result = run(table, selection="query_likelihood", query_table=query_table, suffix=[5, 6, 7],
                 query_span=(0, 2))
    assert result.chosen == [1]
    assert result.chunks[1].query_logprob > result.chunks[0].query_logprob
    expected = 2 * (3.0 - math.log(3 * math.exp(3.0) + V - 3))  # two query tokens, each boosted by 3
    assert result.chunks[1].query_logprob == pytest.approx(expected, rel=1e-5)
    with pytest.raises(OPRMUsageError, match="query"):
        run(table, selection="query_likelihood")


def test_top_k_and_all_decode_in_document_order():
    table = [dist(50, 0.6), dist(ERROR, 0.99), dist(60, 0.9), dist(70, 0.95)]
    result = run(table, decode="top_k", num_decode=2)
    assert result.chosen == [2, 3] and [a.chunk for a in result.answers] == [2, 3]
    result = run(table, decode="all")
    assert result.chosen == [0, 1, 2, 3] and [a.token_ids[0] for a in result.answers] == [50, ERROR, 60, 70]


def test_micro_batches_and_one_batch_agree():
    table = [dist(10 + i, 0.3 + 0.05 * ((i * 7) % 11)) for i in range(9)]
    one = run(table, max_batch_tokens=10_000)
    small = run(table, max_batch_tokens=6)
    assert one.chosen == small.chosen
    assert [c.entropy for c in one.chunks] == [c.entropy for c in small.chunks]


def test_candidate_pool_keeps_k_best_ties_to_earlier():
    pool = CandidatePool(2)
    for key, index in [(1.0, 0), (3.0, 1), (3.0, 2), (2.0, 3)]:
        if pool.would_accept(key):
            pool.add(key, index, None)
    assert [i for _, i, _ in pool.items] == [1, 2]


def test_first_token_stats():
    logits = torch.stack([dist(3, 0.5)[:V], torch.zeros(V)])
    entropy, argmax, max_prob, top_i, top_p = first_token_stats(logits, top_k=2)
    assert argmax[0] == 3 and max_prob[0] == pytest.approx(0.5)
    assert entropy[1] == pytest.approx(math.log(V), rel=1e-6)  # uniform: the largest entropy


def test_zero_or_negative_sizes_are_errors_not_defaults():
    table = [dist(50, 0.6), dist(60, 0.9)]
    for kwargs in ({"chunk_size": 0}, {"chunk_size": -4}, {"max_batch_tokens": 0}):
        with pytest.raises(OPRMUsageError):
            run(table, **kwargs)


# --- look-ahead only where it can change the choice (oprm.lookahead) -------------------------------------------------
def _records(rng, n, k_values):
    """Random look-ahead records: support bounds, supports at most their bound, answers sharing prefixes."""
    from oprm.selection import ChunkRecord

    out = []
    for i in range(n):
        bound = rng.choice(k_values)
        rec = ChunkRecord(i, 0, 4, 0, 4, entropy=rng.random(), argmax=3, max_prob=0.5, is_idk=rng.random() < 0.2,
                          p_idk=rng.choice([0.1, 0.2, 0.3]))
        rec.support_bound = bound
        ids = [rng.choice([7, 8]) for _ in range(rng.randint(0, 3))]  # short answers: shared prefixes, empty ones
        truth = dict(lookahead_ids=ids, lookahead_logprobs=[-rng.random() for _ in range(len(ids) + 1)],
                     lookahead=" ".join(map(str, ids)) if rng.random() < 0.8 else "Error",
                     support=rng.choice([v for v in k_values if v <= bound]))
        out.append((rec, truth))
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_bounded_search_chooses_what_a_lookahead_on_every_chunk_chooses(k):
    """``support`` on text looks ahead in search order only while a chunk left could still be chosen or move the
    contenders' scores; on 400 random cases (ties in support, answers sharing prefixes, IDK answers, top-k) it
    chooses exactly the chunks, in the order, that a look-ahead on every chunk chooses, looking at fewer."""
    import copy
    import random

    from oprm.config import OPRMConfig
    from oprm.selection import SelectionPolicy

    config = OPRMConfig(idk="Error", decode="top_k" if k > 1 else "one", num_decode=k)
    looked = total = 0
    for seed in range(400):
        rng = random.Random(seed)
        cases = _records(rng, rng.randint(1, 12), [0.0, 1 / 3, 2 / 3, 1.0])
        full = [copy.deepcopy(rec) for rec, _ in cases]
        for rec, (_, truth) in zip(full, cases):
            vars(rec).update(truth)
        expected = SelectionPolicy(config).choose(full, [], [])
        policy, pruned = SelectionPolicy(config), [rec for rec, _ in cases]
        assert policy.search == "bounded"
        size = 1
        while pending := policy.pending(pruned):  # the search: what the choice still needs, a growing round
            for rec in pending[:size]:
                vars(rec).update(cases[rec.index][1])
            size *= 2
        choice = policy.choose(pruned, [], [])
        assert (choice.winners, choice.fallback_used) == (expected.winners, expected.fallback_used), seed
        looked += sum(r.lookahead_ids is not None for r in pruned)
        total += sum(not r.is_idk for r in pruned)
    assert looked < (0.8 if k == 1 else 1.0) * total


def test_first_token_search_without_text_takes_the_first_chunk_that_passes():
    from oprm.config import OPRMConfig
    from oprm.selection import ChunkRecord, SelectionPolicy

    policy = SelectionPolicy(OPRMConfig(idk="Error"), text=False)
    assert policy.search == "first_token"
    recs = [ChunkRecord(i, 0, 4, None, None, entropy=e, argmax=3, max_prob=0.5, is_idk=False, p_idk=p)
            for i, (e, p) in enumerate([(1.0, 0.3), (2.0, 0.1), (0.5, 0.2)])]
    assert [r.index for r in policy.pending(recs)] == [1, 2, 0]  # lowest P(IDK) first
    recs[1].lookahead_ids, recs[1].lookahead_logprobs, recs[1].lookahead = [5], [-0.1, -0.1], "Error 5"
    assert [r.index for r in policy.pending(recs)] == [2, 0]  # said IDK: widen
    recs[2].lookahead_ids, recs[2].lookahead_logprobs, recs[2].lookahead = [6], [-3.0, -0.1], "6"
    assert policy.pending(recs) == [] and policy.choose(recs, [], []).winners == [2]


def test_lookahead_rows_stop_at_the_end_of_the_answer_and_leave_the_batch():
    from oprm.lookahead import AnswerEnd, batched_lookahead

    nl, seven, eight = (TOK(t, add_special_tokens=False)["input_ids"][0] for t in ("\n", "7", "8"))
    script = {0: [seven, nl, seven, seven], 1: [seven, EOS], 2: [seven] + [ERROR] * 3, 3: [seven, eight, seven, eight]}
    sizes = []

    class Script(StateAdapter):  # row r emits script[r] (its state: [row, step])
        def step(self, token, state, position):
            sizes.append(len(state))
            state = [[r, t + 1] for r, t in state]
            return torch.stack([dist(script[r][t], 0.9) for r, t in state]), state

        def select(self, state, rows):
            return [state[r] for r in rows]

    first = torch.stack([dist(script[r][0], 0.9) for r in range(4)])
    rows = batched_lookahead(Script(TableModel()), [[r, 0] for r in range(4)], first, 10, 4,
                             AnswerEnd(TOK, {EOS}, "Error"))
    assert [r.text for r in rows] == ["7", "7", "7Error", "7878"]
    assert [len(r.logprobs) for r in rows] == [2, 2, 2, 4]  # the line break, the eos, the IDK word end a row
    assert sizes == [4, 1, 1]  # finished rows leave the batch


@pytest.mark.parametrize("arch", sorted(__import__("tiny_models").CONFIGS))
def test_reused_lookahead_answer_equals_generate(arch):
    """Pre-tokenized input without an IDK word: the choice only asks whether a look-ahead passes, so it stops at its
    first token; the chunk looked at alone is decoded by the answer's own loop, its answer continues it, and equals
    model.generate on [P, C_j, S] alone."""
    import random

    from tiny_models import VOCAB, reference_generate, tiny_model

    model = tiny_model(arch)
    rng = random.Random(5)
    P, C, S = ([rng.randrange(3, VOCAB) for _ in range(n)] for n in (5, 48, 6))
    result = OPRM(model, idk=None, chunk_size=12, lookahead_tokens=6, document_cache_bytes=0).generate(
        prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=7, output_logits=True)
    assert result.selection == "support" and len(result.chunks) == 4
    looked = [c for c in result.chunks if c.lookahead_ids is not None]
    assert [c.index for c in looked] == result.chosen and len(looked[0].lookahead_logprobs) == 1
    assert result.lookahead_tokens == 0  # its one token is the answer's first
    c = result.chunks[result.chosen[0]]
    tokens, logits = reference_generate(model, P + C[c.token_start:c.token_end] + S, 7)
    assert result.token_ids == tokens
    assert max(float((a.cpu() - b).abs().max()) for a, b in zip(result.logits, logits)) < 1e-5


def test_resumed_answer_is_cut_at_its_own_max_new_tokens():
    from oprm.lookahead import Resumable

    resumable = Resumable(iter(range(10)), max_new_tokens=3)
    assert [resumable.pull() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert list(resumable.steps()) == [0, 1, 2]
    resumable = Resumable(iter(range(10)), max_new_tokens=7)
    resumable.pull(), resumable.pull()
    assert list(resumable.steps()) == [0, 1, 2, 3, 4, 5, 6]


def test_pruned_support_on_the_shipped_model_chooses_what_the_full_search_does(monkeypatch):
    """The demo's setting (the shipped model, sentence chunks of 16 tokens, support, the IDK filter) on AR documents
    of 84 and 169 facts (hundreds of chunks): the pruned search chooses the chunk and answer that a look-ahead on
    every chunk chooses, looks at fewer chunks, and its (reused) answer equals model.generate on [P, C_j, S]."""
    import random

    from oprm import lookahead
    from oprm.synthetic.ar import make_ar_episode

    engine = OPRM.from_pretrained("oprm-ar-mamba2", dtype="float32", chunk_size=16, idk="Error",
                                  document_cache_bytes=0)
    looked = {True: 0, False: 0}
    for facts, seed in ((84, 1), (169, 2)):
        episode = make_ar_episode(random.Random(f"prune-{seed}"), facts)
        kwargs = dict(episode.prompt_kwargs(), max_new_tokens=8)
        results = {}
        for prune in (False, True):  # pruned last: the max_new_tokens=2 call below prunes too
            monkeypatch.setattr(lookahead, "PRUNE", prune)
            results[prune] = engine.generate(**kwargs)
            looked[prune] += sum(c.lookahead_ids is not None for c in results[prune].chunks)
        pruned, full = results[True], results[False]
        assert len(pruned.chunks) > 80 and pruned.selection == "support"
        assert pruned.chosen == full.chosen and pruned.token_ids == full.token_ids
        for a, b in zip(pruned.chunks, full.chunks):
            if a.lookahead_ids is not None:
                assert (a.lookahead, a.support) == (b.lookahead, b.support)
        if pruned.chosen:
            prompt = engine.build_prompt(episode.context, episode.question, template=kwargs["template"],
                                         answer_prefix=kwargs["answer_prefix"])
            c = pruned.chunks[pruned.chosen[0]]
            ids = prompt.prefix_ids + prompt.context_ids[c.token_start:c.token_end] + prompt.suffix_ids
            for new, result in ((8, pruned), (2, engine.generate(**dict(kwargs, max_new_tokens=2)))):
                assert result.chosen == pruned.chosen  # 2: the answer is cut inside the reused look-ahead
                out = engine.model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                                            attention_mask=torch.ones(1, len(ids), dtype=torch.long))
                assert result.token_ids == out[0, len(ids):].tolist()
    assert looked[True] < looked[False]


FALCON_TEXT = ("The code of the amber falcon is 4821. The weather was calm and the river ran slowly. "
               "The silver otter keeps 7731 in a box near the old harbour. ") * 4
FALCON_QUERY = "What is the code of the amber falcon?"


def assert_answer_is_generate(engine, result, text, query, new=5):
    """``result``'s answer (5 tokens, with logits) equals model.generate on [P, C_j, S] of its chosen chunk alone."""
    from tiny_models import reference_generate

    prompt = engine.build_prompt(text, query)
    c = result.chunks[result.chosen[0]]
    tokens, logits = reference_generate(engine.model, prompt.prefix_ids + prompt.context_ids[c.token_start:c.token_end]
                                        + prompt.suffix_ids, new)
    assert result.token_ids == tokens
    assert max(float((a - b).abs().max()) for a, b in zip(result.logits, logits)) < 1e-5


def test_states_that_do_not_fit_are_run_again_on_an_encoded_document(monkeypatch):
    """One state kept: on an encoded document the other chunks' S runs again when the search reaches them; the
    choice and answer are those of a look-ahead on every chunk, and the answer equals model.generate."""
    from tiny_models import tiny_model

    from oprm import lookahead
    from oprm.run import ChunkRun
    from oprm.selection import SelectionPolicy

    model = tiny_model("mamba2", vocab_size=V)
    engine = OPRM(model, TOK, chunk_size=24, lookahead_tokens=5, document_cache_bytes=0, idk=None)
    document = engine.encode(FALCON_TEXT)
    again, prefill_again = [], ChunkRun.prefill_again
    monkeypatch.setattr(ChunkRun, "prefill_again", lambda self, indices: again.append(indices) or
                        prefill_again(self, indices))
    results = {}
    for prune in (False, True):  # `again` ends with the pruned run's
        again.clear()
        monkeypatch.setattr(lookahead, "PRUNE", prune)
        monkeypatch.setattr(lookahead, "LOOKAHEAD_STATE_BYTES", 1)
        monkeypatch.setattr(SelectionPolicy, "LOOKAHEAD_KEPT", 1)
        results[prune] = engine.generate(document=document, query=FALCON_QUERY, max_new_tokens=5, output_logits=True)
    pruned, full = results[True], results[False]
    assert len(pruned.chunks) > 4 and pruned.chunking == "sentences" and sum(map(len, again)) > 2
    assert pruned.chosen == full.chosen and pruned.token_ids == full.token_ids
    assert_answer_is_generate(engine, pruned, FALCON_TEXT, FALCON_QUERY)


def test_kept_states_reuse_their_slots_and_choose_like_the_full_search(monkeypatch):
    """Two states kept and one row per micro-batch: the look-ahead's kept states go through the slab's two slots
    again and again (evicted ones looked at as they go), and the choice and answer are those of a look-ahead on every
    chunk, and of model.generate."""
    from tiny_models import tiny_model

    from oprm import lookahead
    from oprm.selection import SelectionPolicy

    model = tiny_model("mamba2", vocab_size=V)
    # a cache too small to keep the document: every chunk's prompt runs as its micro-batch goes by
    engine = OPRM(model, TOK, chunk_size=24, lookahead_tokens=5, document_cache_bytes=1, idk=None,
                  max_batch_tokens=40)
    puts, put = [], lookahead.StateSlab.put
    monkeypatch.setattr(lookahead.StateSlab, "put", lambda self, s: puts.append(len(self.free)) or put(self, s))
    monkeypatch.setattr(lookahead, "LOOKAHEAD_STATE_BYTES", 1)
    monkeypatch.setattr(SelectionPolicy, "LOOKAHEAD_KEPT", 2)
    results = {}
    for prune in (False, True):
        monkeypatch.setattr(lookahead, "PRUNE", prune)
        results[prune] = engine.generate(context=FALCON_TEXT, query=FALCON_QUERY, max_new_tokens=5, output_logits=True)
    pruned, full = results[True], results[False]
    assert len(pruned.chunks) > 4 and len(puts) > 3 and min(puts) >= 1  # 3 slots: never full, each reused
    assert pruned.chosen == full.chosen and pruned.token_ids == full.token_ids
    assert_answer_is_generate(engine, pruned, FALCON_TEXT, FALCON_QUERY)


def test_state_slab_copies_into_reused_slots():
    from oprm.lookahead import StateSlab

    template = ({"h": torch.zeros(1, 3), "n": 7}, torch.zeros(5))
    slab = StateSlab(template, 2)
    a = ({"h": torch.ones(1, 3), "n": 7}, torch.arange(5.0))
    kept_a = slab.put(a)
    assert torch.equal(kept_a[0]["h"], a[0]["h"]) and kept_a[0]["n"] == 7 and torch.equal(kept_a[1], a[1])
    a[0]["h"].add_(1)  # shares no storage with what it copied
    assert torch.equal(kept_a[0]["h"], torch.ones(1, 3))
    kept_b = slab.put(({"h": torch.full((1, 3), 2.0), "n": 7}, torch.zeros(5)))
    assert not slab.free and kept_b[0]["h"].data_ptr() != kept_a[0]["h"].data_ptr()
    full = slab.put(({"h": torch.full((1, 3), 3.0), "n": 7}, torch.zeros(5)))  # no slot left: a plain copy
    odd = slab.put(({"h": torch.zeros(2, 3), "n": 7}, torch.zeros(5)))  # another shape: a plain copy
    assert torch.equal(full[0]["h"], torch.full((1, 3), 3.0)) and odd[0]["h"].shape == (2, 3)
    slab.release(full)  # not in a slot: nothing to free
    assert not slab.free
    slab.release(kept_a)
    kept_c = slab.put(({"h": torch.full((1, 3), 4.0), "n": 7}, torch.zeros(5)))
    assert kept_c[0]["h"].data_ptr() == kept_a[0]["h"].data_ptr() and torch.equal(kept_c[0]["h"],
                                                                                   torch.full((1, 3), 4.0))


def test_without_an_idk_word_a_lookahead_stops_at_its_first_text():
    from oprm.lookahead import AnswerEnd, Row

    end, row = AnswerEnd(TOK, {EOS}, None, first_decides=True), Row()
    space, seven = (TOK(t, add_special_tokens=False)["input_ids"][0] for t in (" ", "7"))
    row.add(space, -0.1, end)
    assert not row.done and row.text == ""  # whitespace alone would not pass: go on
    row.add(seven, -0.2, end)
    assert row.done and row.text == "7" and row.ids == [space, seven]


def test_support_on_an_encoded_document_runs_s_only_where_the_choice_can_be(monkeypatch):
    """On an encoded document S runs alone, tier by tier of support bound: the tiers below the support found never
    run, and the choice, the answer and every record that ran are those of S on every chunk."""
    import random

    from oprm.run import ChunkRun
    from oprm.synthetic.ar import AR_TEMPLATE, make_ar_episode

    engine = OPRM.from_pretrained("oprm-ar-mamba2", dtype="float32", chunk_size=16, idk="Error",
                                  document_cache_bytes=0)
    episode = make_ar_episode(random.Random("tiers"), 84)
    document = engine.encode(episode.context, template=AR_TEMPLATE)
    questions = [(episode.question, episode.answer_prefix)] + [
        (f"What is the {attr} of {the}{key}?", f"The {attr} of {the}{key} is ")
        for key, attr, _ in episode.records[:3] for the in ["" if key[:1].isupper() else "the "]]
    tiered = ChunkRun.tiers
    skipped = 0
    for query, answer_prefix in questions:
        results = {}
        for lazy in (False, True):
            monkeypatch.setattr(ChunkRun, "tiers", tiered if lazy else lambda self, chunks, search: [chunks])
            results[lazy] = engine.generate(document=document, query=query, template=AR_TEMPLATE,
                                            answer_prefix=answer_prefix, max_new_tokens=8)
        lazy, full = results[True], results[False]
        assert lazy.chosen == full.chosen and lazy.token_ids == full.token_ids
        assert [c.index for c in lazy.chunks] == [c.index for c in full.chunks]
        for a, b in zip(lazy.chunks, full.chunks):
            if a.entropy is None:  # not run: no chunk it could beat
                assert a.support_bound < max(c.support or 0.0 for c in full.chunks)
            else:
                assert (a.is_idk, a.lookahead, a.support) == (b.is_idk, b.lookahead, b.support)
                assert a.entropy == pytest.approx(b.entropy, abs=1e-5)  # other batch sizes: float rounding
        skipped += sum(c.entropy is None for c in lazy.chunks)
        assert lazy.tokens_processed < full.tokens_processed or not lazy.chosen
    assert skipped > len(questions) * 40  # most of the ~170 chunks never run S


def test_a_miss_runs_tier_by_tier_s_once_the_document_is_kept_and_whole_prompts_without_a_cache(monkeypatch):
    """A cache miss hands every chunk's state after [P, C_i] to the document cache and, while the cache keeps them
    all, runs S tier by tier on them as a hit does; with the cache off, the whole prompts [P, C_i, S] run tier by
    tier. Both choose and answer as a look-ahead on every chunk (the full search), the records that ran agree, far
    fewer tokens run, and the fewest without a cache (nothing needs the other chunks' states)."""
    import random

    from oprm import lookahead
    from oprm.synthetic.ar import make_ar_episode

    cached = OPRM.from_pretrained("oprm-ar-mamba2", dtype="float32", chunk_size=16, idk="Error", max_batch_tokens=512)
    plain = OPRM(cached.model, cached.tokenizer, chunk_size=16, idk="Error", max_batch_tokens=512,
                 prompt_format=cached.prompt_format, document_cache_bytes=0)
    for facts, seed in ((42, 1), (84, 2)):
        kwargs = dict(make_ar_episode(random.Random(f"miss-{seed}"), facts).prompt_kwargs(), max_new_tokens=8)
        miss, tiered = cached.generate(**kwargs), plain.generate(**kwargs)
        monkeypatch.setattr(lookahead, "PRUNE", False)
        full = plain.generate(**kwargs)
        monkeypatch.setattr(lookahead, "PRUNE", True)
        assert miss.document["cache"] == "miss" and miss.document["kept"] and tiered.document is None
        for run in (miss, tiered):
            assert run.chosen == full.chosen and run.token_ids == full.token_ids
            assert [c.index for c in run.chunks] == [c.index for c in full.chunks]
            ran = [(a, b) for a, b in zip(run.chunks, full.chunks) if a.entropy is not None]
            assert len(ran) < len(run.chunks) / 2
            for a, b in ran:
                assert (a.is_idk, a.lookahead, a.support) == (b.is_idk, b.lookahead, b.support)
                assert a.entropy == pytest.approx(b.entropy, abs=1e-5)
        assert tiered.tokens_processed < miss.tokens_processed < full.tokens_processed / 2


def test_a_miss_whose_states_stop_fitting_runs_the_waiting_chunks_again(monkeypatch):
    """The cache drops a document's states midway (they turned out larger than foretold) after S was deferred on
    some chunks: those chunks run [P, C_i, S] again, and the answer is still S on every chunk's."""
    import random

    from oprm import lookahead
    from oprm.document import NewDocument
    from oprm.synthetic.ar import make_ar_episode

    cached = OPRM.from_pretrained("oprm-ar-mamba2", dtype="float32", chunk_size=16, idk="Error", max_batch_tokens=512)
    plain = OPRM(cached.model, cached.tokenizer, chunk_size=16, idk="Error", max_batch_tokens=512,
                 prompt_format=cached.prompt_format, document_cache_bytes=0)
    add, calls = NewDocument.add, []

    def add_then_drop(self, index, state):
        add(self, index, state)
        calls.append(index)
        if len(calls) == 20:  # the third micro-batch: two have deferred their S by now
            self.states = None

    monkeypatch.setattr(NewDocument, "add", add_then_drop)
    kwargs = dict(make_ar_episode(random.Random("drop"), 84).prompt_kwargs(), max_new_tokens=8)
    miss = cached.generate(**kwargs)
    monkeypatch.setattr(lookahead, "PRUNE", False)  # the full search: a look-ahead on every chunk
    full = plain.generate(**kwargs)
    assert len(calls) > 20 and not miss.document["kept"]
    assert miss.chosen == full.chosen and miss.token_ids == full.token_ids
