"""The look-ahead of ``support`` / ``lookahead`` selection: decode a chunk's greedy answer only where the choice needs
it, stop it where the answer ends, and hand the chosen chunk's look-ahead to its answer instead of decoding it again.

* **Where the choice needs it** (``SelectionPolicy.pending``): chunks are looked at in search order (the highest
  support bound, then the first token's P(IDK) / entropy). ``support`` on text stops as soon as the support found
  exceeds every bound left: the chosen chunk is the one a look-ahead on every chunk would choose. ``lookahead`` looks
  at every chunk that passes the first-token IDK filter.
* **Where the answer ends**: a row stops at an eos, at a line break after some text, or once it holds the IDK word,
  and leaves the batch; where the choice only asks whether a look-ahead passes and there is no IDK word (``support``
  without a text or an IDK filter), at its first token.
* **Reuse**: the first chunk looked at alone is decoded by the answer's own decoding loop (``decoding.decode``, its
  generation config, batch 1, its kept state): if it is chosen, its answer continues that loop, so it is exactly the
  answer ``decode`` gives from that state — the same calls in the same order — and so ``model.generate`` on
  [P, C_j, S] alone. Rows decoded together in a batch may differ from one-row decoding by float rounding: their
  answers are decoded again. Reuse needs greedy decoding without logits processors or stop strings (the look-ahead
  is plain greedy); otherwise the chunk is looked at with the batched loop and decoded again.

States: the states of the chunks the search may still look at are kept while micro-batches stream by, up to
``LOOKAHEAD_STATE_BYTES`` (at least ``SelectionPolicy.LOOKAHEAD_KEPT`` of them); a chunk that does not fit is looked
at at once, as its micro-batch goes by — or, on an encoded document, where only S is run, dropped and run again if
the search reaches it. Under chunk parallelism, or for ``lookahead``, every chunk is looked at as its
micro-batch goes by (ranks exchange records, not states).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from .adapters.base import state_from_leaves, state_leaves, state_nbytes
from .decoding import decode, eos_ids
from .selection import SelectionPolicy, search_order

PRUNE = True  # False: look ahead on every chunk as its micro-batch goes by (the full search, for comparisons)
LOOKAHEAD_STATE_BYTES = 64 << 20  # kept states of chunks not yet looked at (recurrent models: every chunk's)


class StateSlab:
    """Room for ``slots`` states shaped like ``template``, allocated once: a kept state is copied into a free slot.

    A state is many tensors of ~100 KB, below malloc's mmap threshold: copied to fresh memory while a micro-batch's
    activations are live, each kept state sat above their holes once they were freed, so the heap could not shrink
    and grew by ~20 MB per micro-batch that kept one (a 400 KB document, cache off: 1,829 MiB resident against 889
    for entropy selection, docs/documents.md). Slots are reused, so kept states take the slab's memory and no more."""

    def __init__(self, template, slots: int):
        tensors, _ = state_leaves(template)
        self.buffers = [torch.empty((slots, *t.shape), dtype=t.dtype, device=t.device) for t in tensors]
        self.free = list(range(slots - 1, -1, -1))
        self.held: dict[int, tuple] = {}  # id of a kept state -> (its slot, the state)

    def put(self, state):
        """``state`` copied into a free slot (or, where it does not fit: no slot left, another shape, into fresh
        memory); it shares no storage with ``state``."""
        tensors, values = state_leaves(state)
        if not self.free or len(tensors) != len(self.buffers) or any(
                t.shape != b.shape[1:] or t.dtype != b.dtype for t, b in zip(tensors, self.buffers)):
            return state_from_leaves(state, [t.clone() for t in tensors], values)
        slot = self.free.pop()
        for t, b in zip(tensors, self.buffers):
            b[slot].copy_(t)
        kept = state_from_leaves(state, [b[slot] for b in self.buffers], values)
        self.held[id(kept)] = (slot, kept)  # held: its id stays its own until released
        return kept

    def release(self, state) -> None:
        """``state``'s slot may be reused: nothing reads the state any more (a state never released keeps its
        slot: a look-ahead decoded alone goes on in the answer)."""
        slot, _ = self.held.pop(id(state), (None, None))
        if slot is not None:
            self.free.append(slot)


class AnswerEnd:
    """Where a look-ahead answer ends: an eos, a line break after some text, or the IDK word; with ``first_decides``
    at its first text (the choice only asks whether a look-ahead passes, and without an IDK word any text does)."""

    def __init__(self, tokenizer, eos: set[int], idk: str | None, first_decides: bool = False):
        self.tokenizer, self.eos, self.idk, self.first_decides = tokenizer, eos, idk, first_decides

    def text(self, ids: list[int]) -> tuple[str, bool]:
        """(the answer's text up to its first line break, whether the answer ended: a line break or the IDK word)."""
        if self.tokenizer is None:
            return " ".join(map(str, ids)), False
        text = self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        cut = text.find("\n")
        if cut >= 0:
            return text[:cut].rstrip(), True
        text = text.rstrip()
        return text, bool(self.idk and self.idk in text)


@dataclass
class Row:
    """One chunk's look-ahead as it is decoded."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    done: bool = False

    def add(self, token: int, logprob: float, end: AnswerEnd) -> None:
        self.logprobs.append(logprob)
        if token in end.eos:
            self.done = True
            return
        self.ids.append(token)
        self.text, self.done = end.text(self.ids)
        self.done = self.done or (end.first_decides and bool(self.text))  # passes once it holds some text


def batched_lookahead(adapter, state, first_logits: torch.Tensor, position: int, steps: int,
                      end: AnswerEnd) -> list[Row]:
    """Greedy look-ahead of a batch of rows (``state`` holds B rows whose next-token logits are ``first_logits`` [B, V],
    at absolute ``position``), at most ``steps`` tokens each; a row that ends leaves the batch. ``state`` is
    consumed. Tokens are the argmax of the raw logits, as ``decoding.decode`` picks them."""
    rows = [Row() for _ in range(first_logits.shape[0])]
    active = list(range(len(rows)))
    logits = first_logits.float()
    for step in range(steps):
        best = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1).gather(-1, best[:, None])[:, 0].tolist()
        for j, (token, lp) in enumerate(zip(best.tolist(), logp)):
            rows[active[j]].add(token, lp, end)
        keep = [j for j, r in enumerate(active) if not rows[r].done]
        if not keep or step == steps - 1:
            break
        if len(keep) < len(active):
            state, best = adapter.select(state, keep), best[keep]
            active = [active[j] for j in keep]
        logits, state = adapter.step(best[:, None], state, position + step)
        logits = logits.float()
    return rows


class Resumable:
    """A chunk's look-ahead decoded by the answer's own loop, paused: its answer continues it (``steps``)."""

    def __init__(self, steps, max_new_tokens: int):
        self.loop, self.pulled, self.max_new_tokens = steps, [], max_new_tokens

    def pull(self):
        step = next(self.loop, None)
        if step is not None:
            self.pulled.append(step)
        return step

    def steps(self):
        """The answer: the pulled steps, then the rest of the loop, up to the answer's own ``max_new_tokens``
        (greedy decoding does not depend on how many tokens are asked for)."""
        for n, step in enumerate(self._all()):
            if n >= self.max_new_tokens:
                return
            yield step

    def _all(self):
        yield from self.pulled
        yield from self.loop


class LookaheadSearch:
    """A call's look-ahead: kept states, look-aheads as micro-batches go by or on demand, reuse in the answer.

    ``run`` is the call's ``ChunkRun`` (adapter, tokenizer, prompt, decoder, prefiller, chunks, config)."""

    def __init__(self, run, policy: SelectionPolicy):
        self.run, self.policy = run, policy
        config, prompt, decoder = run.config, run.prompt, run.decoder
        self.steps = config.lookahead_tokens
        # the answer ends where the model ends it, whatever eos the caller decodes with (e.g. none)
        self.end = AnswerEnd(run.tokenizer, eos_ids(decoder.config) | run.model_eos, policy.idk,
                             first_decides=policy.search == "first_token" and policy.idk is None)
        self.defer = PRUNE and policy.search != "full" and run.parallel is None
        self.kept: dict[int, tuple] = {}  # chunk -> (state, first-token logits): deferred, or kept for decoding
        self.order: dict[int, tuple] = {}
        self.capacity: int | None = None
        self.slab: StateSlab | None = None
        self.resumable: dict[int, Resumable] = {}
        generation = decoder.config
        self.reuse = (not generation.do_sample and generation.repetition_penalty in (None, 1.0)
                      and not generation.stop_strings)
        text, query = prompt.context_text, prompt.query_text
        self.bounds = {}
        if policy.search == "bounded" and text is not None and query:
            from .support import support_bound

            self.bounds = {c.index: support_bound(text[c.char_start:c.char_end], query) for c in run.chunks
                           if c.char_start is not None}

    # --- as micro-batches go by ---------------------------------------------------------------------------------
    def observe(self, batch, records) -> None:
        """Note one micro-batch: its chunks' support bounds; defer the look-ahead of the chunks the search may need
        while their states fit, look ahead at once on the others."""
        for rec in records:
            rec.support_bound = self.bounds.get(rec.index)
        rows = [r for r, rec in enumerate(records) if not rec.is_idk]
        if not self.defer:
            self.look_rows(batch, rows, records)
            self.policy.observe(records, lambda r: (self.run.adapter.select(batch.state, [r]),
                                                    batch.logits[r, -1].clone()))
            return
        now, evicted = [], []
        for r in rows:
            rec = records[r]
            if self.capacity is not None and len(self.kept) >= self.capacity and (
                    search_order(rec) > max(k for k, _ in self.order.values())):
                now.append(r)
                continue
            state = self.run.adapter.select(batch.state, [r])
            if self.capacity is None:
                self.capacity = max(self.policy.LOOKAHEAD_KEPT, self.policy.k,
                                    LOOKAHEAD_STATE_BYTES // max(1, state_nbytes(state)))
                # one slot more than kept: a state is kept before the worst goes; no more slots than chunks
                self.slab = StateSlab((state, batch.logits[r, -1]), min(self.capacity, len(self.run.chunks)) + 1)
            self.kept[rec.index] = self.slab.put((state, batch.logits[r, -1]))
            self.order[rec.index] = (search_order(rec), rec)
            del state
            if len(self.kept) > self.capacity:
                worst = max(self.order, key=lambda i: self.order[i][0])
                evicted.append((self.order.pop(worst)[1], self.kept.pop(worst)))
        if self.run.document is None:  # on an encoded document S alone is run again if the search needs them
            self.look_rows(batch, now, records)
            if evicted:
                self.look_states([rec for rec, _ in evicted], [kept for _, kept in evicted])
        for _, kept in evicted:
            self.slab.release(kept)

    # --- once every chunk is known ------------------------------------------------------------------------------
    def complete(self, records) -> None:
        """Look ahead on the chunks the choice still needs, in search order: first one alone (its answer reusable),
        then twice as many each round."""
        size = 1
        while True:
            pending = self.policy.pending(records)
            if not pending:
                return
            take = pending[:size] if self.defer else pending
            if len(take) == 1 and self.reuse and self.defer:
                if take[0].index not in self.kept:
                    self.kept.update(self.run.prefill_again([take[0].index]))
                self.look_alone(take[0])
            else:
                held = [r for r in take if r.index in self.kept]
                self.look_states(held, [self.kept[r.index] for r in held])
                # not kept (chunk parallelism, or a state that did not fit): prefilled again, at most the kept
                # states' capacity at a time, and dropped once looked at (a winner among them is prefilled again
                # for its answer), so a round over thousands of chunks holds no more states than the prefill did
                missing = [r for r in take if r.index not in self.kept]
                part = self.capacity or len(missing) or 1
                for i in range(0, len(missing), part):
                    again = self.run.prefill_again([r.index for r in missing[i:i + part]])
                    self.look_states(missing[i:i + part], [again[r.index] for r in missing[i:i + part]])
                    del again
            size *= 2

    def states(self) -> dict[int, tuple]:
        """(state, first-token logits) of the chunks kept for decoding."""
        return self.kept if self.defer else self.policy.states()

    def answer(self, index: int):
        """The chosen chunk's answer continuing its look-ahead, or None when it was not decoded alone."""
        resumable = self.resumable.pop(index, None)
        if resumable is None:
            return None
        answer = self.run.decoder.answer(index, None, None, self.run.chunk_prompt(index), steps=resumable.steps())
        reused = max(0, min(len(resumable.pulled), len(answer.token_ids)) - 1)  # counted once, as decoding
        stats = self.run.prefiller.stats
        stats.tokens_processed -= reused
        stats.lookahead_tokens -= reused
        return answer

    # --- the look-ahead itself ----------------------------------------------------------------------------------
    def look_alone(self, rec) -> None:
        """One chunk's look-ahead by the answer's own decoding loop on its kept state (consumed)."""
        t = time.perf_counter()
        state, first = self.kept.pop(rec.index)
        prompt_ids = self.run.chunk_prompt(rec.index)
        decoder = self.run.decoder
        config = decoder.config
        if config.max_new_tokens < self.steps:  # greedy: the answer is the first max_new_tokens of a longer loop
            config = copy.deepcopy(config)
            config.max_new_tokens = self.steps
        resumable = Resumable(decode(self.run.adapter, state, first, prompt_ids, len(prompt_ids), config,
                                     self.run.tokenizer, decoder.generator), decoder.config.max_new_tokens)
        row = Row()
        while not row.done and len(row.logprobs) < self.steps:
            step = resumable.pull()
            if step is None:
                break
            row.add(step.token, float(torch.log_softmax(step.logits.float(), -1)[step.token]), self.end)
        self.resumable[rec.index] = resumable
        self.note(rec, row, steps=len(resumable.pulled) - 1, started=t)

    def look_states(self, records, kept) -> None:
        """The look-ahead of chunks from their kept (state, logits), batched by position; the states stay kept."""
        groups: dict[int, list] = {}
        for rec, pair in zip(records, kept):
            groups.setdefault(rec.token_end - rec.token_start, []).append((rec, pair))
        for items in groups.values():
            state = self.run.adapter.concat([s for _, (s, _) in items])
            self.look_batch(state, torch.stack([f for _, (_, f) in items]), [rec for rec, _ in items])

    def look_rows(self, batch, rows: list[int], records) -> None:
        """The look-ahead of rows ``rows`` of a micro-batch (``records`` are its chunks' records)."""
        if rows:
            self.look_batch(self.run.adapter.select(batch.state, rows), batch.logits[rows, -1],
                            [records[r] for r in rows])

    def look_batch(self, state, first_logits, records) -> None:
        """The look-ahead of ``records``, the rows of ``state`` (consumed) whose next-token logits are
        ``first_logits``."""
        if not records:
            return
        t = time.perf_counter()
        p = self.run.prompt
        position = len(p.prefix_ids) + records[0].token_end - records[0].token_start + len(p.suffix_ids)
        rows = batched_lookahead(self.run.adapter, state, first_logits, position, self.steps, self.end)
        steps = sum(len(r.logprobs) - 1 for r in rows)  # rows stepped (the first token came with the prefill)
        for i, (rec, row) in enumerate(zip(records, rows)):
            self.note(rec, row, steps=steps if i == 0 else 0, started=t if i == 0 else None)

    def note(self, rec, row: Row, steps: int, started: float | None) -> None:
        """Record a look-ahead on its chunk record (and what else the policy ranks by); count its steps and time."""
        rec.lookahead_ids, rec.lookahead_logprobs, rec.lookahead = row.ids, row.logprobs, row.text
        p = self.run.prompt
        known = p.context_text is not None and rec.char_start is not None
        self.policy.annotate(rec, p.context_text[rec.char_start:rec.char_end] if known else None, p.query_text)
        stats = self.run.prefiller.stats
        stats.tokens_processed += steps
        stats.lookahead_tokens += steps
        if started is not None:
            stats.timings["lookahead"] += time.perf_counter() - started
