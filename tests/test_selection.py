"""Selection criteria and the IDK filter on constructed first-token distributions (a fake adapter)."""

import math

import pytest
import torch
from tiny_tokenizer import tiny_tokenizer

from oprm import OPRM, OPRMUsageError
from oprm.adapters import StateAdapter
from oprm.selection import CandidatePool, first_token_stats

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
