"""Decode steps of several requests in one forward (serve/batching.py) and requests run side by side through the
scheduler (serve/scheduler.py): the same tokens as each request alone, on tiny random models of each state layout."""

from __future__ import annotations

import threading

import pytest
import torch

from oprm import OPRM
from oprm.adapters.base import state_leaves
from oprm.serve.batching import StepBatcher, _counters, layout
from oprm.serve.scheduler import Op, Scheduler, SchedulingAdapter
from tiny_models import VOCAB, reference_generate, tiny_model

# layout -> model types; "None" ones are not stacked (their steps run one by one)
HYBRIDS = ("bamba", "jamba", "granitemoehybrid", "lfm2", "qwen3_next", "qwen3_5_text", "nemotron_h", "zamba", "zamba2",
           "falcon_h1")
STACKED = {"llama": "attention", "gemma": "attention", "gemma3_text": "attention", "mamba2": "recurrent",
           "mamba": "recurrent", **dict.fromkeys(HYBRIDS, "hybrid")}  # gemma3_text: sliding windows shorter than the prompts
ROWS = ("xlstm",)  # stacked by the adapter (concat, step, select): states without length
ALONE = ("rwkv",)  # a state of the RWKV model's own: stepped one by one
STEPS = 6


def prompts(seed: int, lengths=(5, 17, 11)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def greedy_alone(adapter, prompt):
    logits, state = adapter.prefill(torch.tensor([prompt]))
    logits, tokens, seen = logits[:, -1], [], []
    for k in range(STEPS):
        token = int(logits.argmax(-1))
        tokens.append(token)
        seen.append(logits[0])
        logits, state = adapter.step(torch.tensor([[token]]), state, len(prompt) + k)
    return tokens, seen, state


def prefilled(adapter, texts) -> list[list]:
    """Each prompt prefilled alone: [its last logits, state, position]."""
    out = []
    for p in texts:
        logits, state = adapter.prefill(torch.tensor([p]))
        out.append([logits[:, -1], state, len(p)])
    return out


@pytest.mark.parametrize("model_type", [*STACKED, *ROWS, *ALONE])
@torch.no_grad()
def test_batched_steps_equal_steps_alone(model_type):
    """Rows of different lengths (and one request with two rows, as look-ahead decodes) stepped together give each
    request's own logits and tokens; the states that come back continue exactly."""
    engine = OPRM(tiny_model(model_type), chunk_size=8, idk=None)
    adapter = engine.adapter
    texts = prompts(1)
    alone = [greedy_alone(adapter, p) for p in texts]
    batcher = StepBatcher(adapter)
    current = [c + [[]] for c in prefilled(adapter, texts)]
    # a two-row request: the first prompt twice (rows of one request share a position)
    logits, state = adapter.prefill(torch.tensor([texts[0], texts[0]]))
    pair = [logits[:, -1], state, len(texts[0]), [[], []]]
    assert layout(current[0][1]) == STACKED.get(model_type)
    for k in range(STEPS):
        items = []
        for i, c in enumerate(current):
            token = int(c[0].argmax(-1))
            torch.testing.assert_close(c[0][0], alone[i][1][k], rtol=1e-5, atol=1e-5)
            c[3].append(token)
            items.append((torch.tensor([[token]]), c[1], c[2]))
        best = pair[0].argmax(-1)
        for r in range(2):
            pair[3][r].append(int(best[r]))
        items.append((best[:, None], pair[1], pair[2]))
        results = batcher.run(items)
        for c, (logits, state) in zip(current + [pair], results):
            assert logits.shape[0] == c[0].shape[0]
            c[0], c[1], c[2] = logits, state, c[2] + 1
    for c, (tokens, _, state) in zip(current, alone):
        assert c[3] == tokens
        if layout(state) is not None:  # each request's counters and keys/values, as if it had stepped alone
            assert _counters(c[1]) == _counters(state)
            assert [t.shape for t in state_leaves(c[1])[0]] == [t.shape for t in state_leaves(state)[0]]
    assert pair[3] == [alone[0][0], alone[0][0]]
    assert batcher.batched_steps == (STEPS if model_type in STACKED or model_type in ROWS else 0)
    assert batcher.reused_steps == (STEPS - 1 if model_type in STACKED else 0)  # the batch continued in place


@pytest.mark.parametrize("model_type", ["llama", "mamba2", "jamba"])
@torch.no_grad()
def test_a_state_stepped_elsewhere_is_stacked_anew(model_type):
    """A request whose state stepped on its own between two batched rounds (in place) is not continued from the
    batch: the round stacks anew and every request still gets its own tokens."""
    adapter = OPRM(tiny_model(model_type), chunk_size=8, idk=None).adapter
    texts = prompts(2)
    alone = [greedy_alone(adapter, p) for p in texts]
    batcher = StepBatcher(adapter)
    current = prefilled(adapter, texts)
    tokens = [[] for _ in texts]

    def step(i, c):
        token = int(c[0].argmax(-1))
        tokens[i].append(token)
        return torch.tensor([[token]]), c[1], c[2]

    for k in range(STEPS):
        if k == 2:  # the first request takes one step on its own (its state changes in place), then all batched
            c = current[0]
            same = c[1]
            c[0], c[1] = adapter.step(*step(0, c))
            c[2] += 1
            assert c[1] is same  # the batch sees the same object, one token longer
        results = batcher.run([step(i, c) for i, c in enumerate(current)])
        for c, (logits, state) in zip(current, results):
            c[0], c[1], c[2] = logits, state, c[2] + 1
    assert tokens[0][:STEPS] == alone[0][0] and all(t == a for t, (a, _, _) in zip(tokens[1:], alone[1:]))
    assert (batcher.reused_steps, batcher.batched_steps) == (STEPS - 2, STEPS)  # round 2 stacked anew


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "mamba2", "zamba2", "jamba", "xlstm"])
def test_requests_side_by_side_equal_requests_alone(model_type):
    """Six OPRM requests (different documents, questions and lengths; two with look-ahead selection) run at once in
    threads through the scheduler: each answer, chosen chunk and entropy equals the request run alone, and the
    decode steps did share forwards."""
    model = tiny_model(model_type)
    g = torch.Generator().manual_seed(7)
    requests = []
    for i in range(6):
        context = torch.randint(3, VOCAB, (40 + 12 * i,), generator=g).tolist()
        suffix = torch.randint(3, VOCAB, (3 + i % 3,), generator=g).tolist()
        options = {"selection": "lookahead", "lookahead_tokens": 3} if i % 3 == 2 else {}
        requests.append((dict(prefix_ids=[1, 5], context_ids=context, suffix_ids=suffix, max_new_tokens=5 + i),
                         options))
    engine = OPRM(model, chunk_size=8, idk=None, document_cache_bytes=0)
    alone = [engine.generate(**kwargs, **options) for kwargs, options in requests]
    real = engine.adapter
    scheduler = Scheduler(real, gather_s=0.05)
    engine.adapter = SchedulingAdapter(real, scheduler)
    scheduler.start()
    results, errors = [None] * len(requests), []
    barrier = threading.Barrier(len(requests))

    def run(i):
        try:
            scheduler.enter(i)
            barrier.wait()
            kwargs, options = requests[i]
            with torch.no_grad():
                results[i] = engine.generate(**kwargs, **options)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            scheduler.leave()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    scheduler.stop()
    assert not errors, errors
    for a, b in zip(alone, results):
        assert b.token_ids == a.token_ids and b.chosen == a.chosen
        assert [c.entropy for c in b.chunks] == pytest.approx([c.entropy for c in a.chunks], rel=1e-5, abs=1e-6)
    assert scheduler.batcher.batched_steps > 0


def test_batched_decode_equals_generate_on_the_chosen_chunk():
    """The end of the chain: an answer decoded in a shared batch is model.generate on [P, C_j, S] alone."""
    model = tiny_model("llama")
    engine = OPRM(model, chunk_size=8, idk=None, document_cache_bytes=0)
    real = engine.adapter
    scheduler = Scheduler(real, gather_s=0.05)
    engine.adapter = SchedulingAdapter(real, scheduler)
    scheduler.start()
    g = torch.Generator().manual_seed(3)
    asks = [dict(prefix_ids=[1], context_ids=torch.randint(3, VOCAB, (32 + 8 * i,), generator=g).tolist(),
                 suffix_ids=[4, 5 + i], max_new_tokens=6) for i in range(3)]
    out = [None] * 3

    def run(i):
        scheduler.enter(i)
        try:
            with torch.no_grad():
                out[i] = engine.generate(**asks[i])
        finally:
            scheduler.leave()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    scheduler.stop()
    for ask, result in zip(asks, out):
        j = result.chosen[0]
        chunk = ask["context_ids"][8 * j:8 * (j + 1)]
        tokens, _ = reference_generate(model, ask["prefix_ids"] + chunk + ask["suffix_ids"], 6)
        assert result.token_ids == tokens


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "mamba2", "zamba2", "jamba"])
@torch.no_grad()
def test_prefills_of_different_requests_share_a_forward(model_type):
    """Prefill micro-batches of different requests waiting at once share a forward where their rows have one length
    and start (with or without a start state: P shared), and only then: each gets its own logits and a state that
    continues as the one it would get alone."""
    engine = OPRM(tiny_model(model_type), chunk_size=8, idk=None)
    real = engine.adapter
    p9, p9b, p5, c6, c6b = prompts(3, lengths=(9, 9, 5, 6, 6))
    _, state_p = real.prefill(torch.tensor([[1, 5]]))
    _, state_q = real.prefill(torch.tensor([[1, 7]]))
    calls = [(torch.tensor([p9, p9b]), None, 0, 1), (torch.tensor([p9b]), None, 0, 1),  # one length: packed
             (torch.tensor([p5]), None, 0, 2),  # another length: alone
             (torch.tensor([c6]), real.select(state_p, [0]), 2, 1),  # after a P of two tokens: packed
             (torch.tensor([c6b, c6]), real.select(state_q, [0, 0]), 2, 1)]
    alone = [real.prefill(ids, None if s is None else real.select(s, list(range(ids.shape[0]))), start, n)
             for ids, s, start, n in calls]
    scheduler = Scheduler(real)
    results = [None] * len(calls)

    def run(i):
        scheduler.enter(i)
        try:
            results[i] = SchedulingAdapter(real, scheduler).prefill(*calls[i])
        finally:
            scheduler.leave()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for _ in range(6000):  # every call waits before the scheduler takes any (a dead thread fails, not hangs)
        if len(scheduler.pending) == len(calls):
            break
        threading.Event().wait(0.01)
    assert len(scheduler.pending) == len(calls)
    scheduler.start()
    for t in threads:
        t.join(60)
    scheduler.stop()
    assert scheduler.packed == 2
    for (ids, _, start, _), (logits_a, state_a), (logits_b, state_b) in zip(calls, alone, results):
        torch.testing.assert_close(logits_b, logits_a, rtol=1e-5, atol=1e-5)
        token = torch.full((ids.shape[0], 1), 4)
        step_a, _ = real.step(token, state_a, start + ids.shape[1])
        step_b, _ = real.step(token, state_b, start + ids.shape[1])
        torch.testing.assert_close(step_b, step_a, rtol=1e-5, atol=1e-5)


class FailingForward:
    """The adapter, whose ``fail_at``-th batched forward raises (a model error mid-step)."""

    def __init__(self, adapter, fail_at: int):
        self.adapter, self.fail_at, self.calls = adapter, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("model failed")
        return self.adapter.forward(*args, **kwargs)


@pytest.mark.parametrize("model_type,fail_at", [("jamba", 1), ("jamba", 2), ("llama", 2)])
@torch.no_grad()
def test_a_failed_batch_continued_in_place_fails_its_requests(model_type, fail_at):
    """A first batch that fails leaves the requests' own states untouched: the scheduler runs them one by one. A
    batch continued in place that fails may have changed their recurrent states (views of it, written in place):
    each request gets the error instead of being stepped again on a state it cannot trust. Keys/values are only ever
    replaced, so an attention model's requests still run one by one."""
    adapter = OPRM(tiny_model(model_type), chunk_size=8, idk=None).adapter
    current = prefilled(adapter, prompts(4))
    scheduler = Scheduler(adapter)
    scheduler.batcher = StepBatcher(FailingForward(adapter, fail_at))
    scheduler.batcher.enabled = True
    for _ in range(fail_at):
        ops = [Op("step", (c[0].argmax(-1)[:, None], c[1], c[2]), owner=i) for i, c in enumerate(current)]
        scheduler._run_steps(ops)
        for c, op in zip(current, ops):
            if op.error is None:
                c[0], c[1] = op.result
                c[2] += 1
    if fail_at == 1 or model_type == "llama":
        assert all(op.error is None for op in ops)  # run one by one instead
    else:
        assert all(isinstance(op.error, RuntimeError) and str(op.error) == "model failed" for op in ops)


def _storage_bytes(state) -> tuple[int, int]:
    """(bytes of the storage a state's tensors keep alive, bytes of the tensors themselves)."""
    tensors = [t for t in state_leaves(state)[0] if t.dim()]
    return (sum(t.untyped_storage().nbytes() for t in tensors), sum(t.numel() * t.element_size() for t in tensors))


@pytest.mark.parametrize("model_type", ["mamba2", "jamba", "llama"])
@torch.no_grad()
def test_a_view_stepped_alone_owns_its_memory(model_type):
    """A request that goes on alone after a batched step (the others left) steps a copy of its view: from then on it
    keeps only its own rows, not the batch's memory; the logits handed back are the request's own."""
    adapter = OPRM(tiny_model(model_type), chunk_size=8, idk=None).adapter
    current = prefilled(adapter, prompts(5))
    batcher = StepBatcher(adapter)
    results = batcher.run([(c[0].argmax(-1)[:, None], c[1], c[2]) for c in current])
    logits, state = results[0]
    kept, own = _storage_bytes(state)
    assert kept > own  # a view of the batch
    assert logits.untyped_storage().nbytes() == logits.numel() * logits.element_size()
    _, alone_state = batcher.run([(logits.argmax(-1)[:, None], state, current[0][2] + 1)])[0]
    kept, own = _storage_bytes(alone_state)
    assert kept == own


@pytest.mark.parametrize("model_type", ["mamba2", "jamba", "llama", "gemma3_text"])
@torch.no_grad()
def test_a_paused_view_gets_its_own_rows_when_the_others_go_on(model_type):
    """A request that sits out a round (a decode paused for more look-aheads) while the others step on is given
    copies of its own rows, so the batch it came from can go; it resumes with the tokens it has alone."""
    adapter = OPRM(tiny_model(model_type), chunk_size=8, idk=None).adapter
    texts = prompts(6)
    alone = [greedy_alone(adapter, p)[0] for p in texts]
    batcher = StepBatcher(adapter)
    current = prefilled(adapter, texts)
    tokens = [[] for _ in texts]

    def run(ids):
        steps = []
        for i in ids:
            token = int(current[i][0].argmax(-1))
            tokens[i].append(token)
            steps.append((torch.tensor([[token]]), current[i][1], current[i][2]))
        for i, (logits, state) in zip(ids, batcher.run(steps)):
            current[i] = [logits, state, current[i][2] + 1]

    run([0, 1, 2])
    kept, own = _storage_bytes(current[0][1])
    assert kept > own  # a view of the batch
    run([1, 2])  # request 0 sits this round out
    kept, own = _storage_bytes(current[0][1])
    assert kept == own
    run([0])
    for _ in range(STEPS - 2):
        run([0, 1, 2])
    assert tokens == alone
