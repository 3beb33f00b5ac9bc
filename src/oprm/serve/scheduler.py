"""Continuous batching across requests: one scheduler thread owns the model; requests run side by side.

Each running request is an ordinary ``OPRM.generate`` call in its own thread (so its answer is computed by the very
code that answers it alone), but the engine's adapter is replaced by a :class:`SchedulingAdapter`: every forward the
call asks for (a prefill micro-batch, a decode step) becomes an :class:`Op` handed to the :class:`Scheduler` thread,
the only one that runs the model. Each scheduling round the scheduler

* runs the decode steps of every request waiting on one as one batched forward (``batching.StepBatcher``): requests
  join the batch at their first token and leave it after their last, or at once when their client goes away (its
  thread stops asking);
* then runs one prefill micro-batch (at most ``max_batch_tokens`` tokens): a request's first micro-batch before any
  request's later ones (a short question does not queue behind the rest of a long document), else the oldest
  request's; while requests decode, prefill gets at most half the time (their steps wait for each micro-batch).
  Other requests' waiting micro-batches that fit the same budget and stack with it unpadded (rows of the same
  length from the same position: the chunks [P, C_i] of documents under one template, the same P, suffixes of
  equal length) share its forward (``batching.pack_prefills``).

So the work per round is bounded (one micro-batch + one decode step per running request) and no request waits for
another to finish. Before a round the scheduler waits a moment (``gather_s``) for the requests that stepped in the
last round and are between two steps, so their steps join the same batch.
"""

from __future__ import annotations

import threading
import time

import torch

from .batching import BatchStateLost, StepBatcher, pack_prefills, packable, prefill_size


class Op:
    """One forward asked by a request's thread; the thread waits on ``done``."""

    __slots__ = ("kind", "args", "owner", "done", "result", "error")

    def __init__(self, kind: str, args: tuple, owner):
        self.kind, self.args, self.owner = kind, args, owner
        self.done = threading.Event()
        self.result = self.error = None


class Scheduler:
    def __init__(self, adapter, gather_s: float = 0.005, observe=None, quantum: int = 8192,
                 max_batch_tokens: int | None = None):
        self.adapter = adapter
        self.batcher = StepBatcher(adapter)
        self.gather_s = gather_s
        self.observe = observe  # callback(kind, rows, seconds) for the metrics
        self.cond = threading.Condition()
        self.pending: list[Op] = []
        self.active: set = set()  # owners (request threads' tokens) that may ask for forwards
        self.stepping: set = set()  # owners whose last forward was a decode step: the next round waits for them
        self.local = threading.local()
        self.arrival: dict = {}  # owner -> its order of arrival
        self.served: dict = {}  # owner -> tokens of prefill run for it
        self.quantum = quantum  # prefill tokens a request gets before it queues behind newer requests
        self.max_batch_tokens = max_batch_tokens or quantum  # one prefill forward, packed micro-batches included
        self.packed = 0  # prefill forwards that served more than one request
        self.prefill_s = self.step_s = 0.0  # time in prefill and in decode steps since nobody decoded
        self.arrivals = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="oprm-scheduler", daemon=True)
        self.rounds = 0

    # --- request threads ------------------------------------------------------------------------------------------
    def enter(self, owner) -> None:
        """The calling thread runs a request from now on: its forwards are scheduled."""
        self.local.owner = owner
        with self.cond:
            self.active.add(owner)
            self.arrivals += 1
            self.arrival[owner] = self.arrivals

    def leave(self) -> None:
        owner = getattr(self.local, "owner", None)
        self.local.owner = None
        with self.cond:
            self.active.discard(owner)
            self.stepping.discard(owner)
            self.arrival.pop(owner, None)
            self.served.pop(owner, None)
            self.batcher.release()  # the batch changes: it stacks anew without the leaver's rows
            self.cond.notify_all()

    def owner(self):
        return getattr(self.local, "owner", None)

    def submit(self, kind: str, *args):
        owner = self.owner()
        if owner is None or threading.current_thread() is self.thread:
            return getattr(self.adapter, kind)(*args)
        op = Op(kind, args, owner)
        with self.cond:
            if self.stopping:
                raise RuntimeError("the scheduler has stopped")
            self.pending.append(op)
            self.cond.notify_all()
        op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    # --- the scheduler thread -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(10)

    def _take(self) -> tuple[list[Op], list[Op]]:
        with self.cond:
            while not self.pending and not self.stopping:
                self.cond.wait()
            if self.stopping and not self.pending:
                return [], []
            # a moment for decoding requests between two steps (streaming a piece): their steps join this round's
            # batch; requests in other work (tokenizing, selecting, waiting for a document) are not waited for
            deadline = time.monotonic() + self.gather_s
            while (self.stepping & self.active) - {op.owner for op in self.pending} and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            steps = [op for op in self.pending if op.kind == "step"]
            prefills = [op for op in self.pending if op.kind == "prefill"]
            chosen = None
            # prefill gets at most half the time while requests decode (their steps wait for each prefill)
            if prefills and (not steps or self.prefill_s <= self.step_s):
                # a request's first micro-batch goes first (a short question is not queued behind a long
                # document's later ones), then the oldest request
                chosen = min(prefills, key=lambda op: (self.served.get(op.owner, 0) >= self.quantum,
                                                       self.arrival.get(op.owner, 0)))
            packed = [chosen] if chosen is not None else []
            size = prefill_size(chosen.args) if chosen is not None else 0
            for op in prefills:  # others' micro-batches that stack with it unpadded, within the budget
                if op is not chosen and packed and packable(chosen.args, op.args) and \
                        size + prefill_size(op.args) <= self.max_batch_tokens:
                    packed.append(op)
                    size += prefill_size(op.args)
            for op in packed:  # counted as taken, under the lock (its thread may leave as soon as it is done)
                self.served[op.owner] = self.served.get(op.owner, 0) + op.args[0].numel()
            if not steps:  # nobody decodes: the time shares start again
                self.prefill_s = self.step_s = 0.0
            self.pending = [op for op in self.pending if op.kind != "step" and op not in packed]
            self.stepping = {op.owner for op in steps}
            return steps, packed

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                steps, prefills = self._take()
                if not steps and not prefills:
                    if self.stopping:
                        return
                    continue
                self.rounds += 1
                if steps:
                    t = time.perf_counter()
                    self._run_steps(steps)
                    self.step_s += time.perf_counter() - t
                if prefills:
                    t = time.perf_counter()
                    self._run_prefills(prefills)
                    self.prefill_s += time.perf_counter() - t

    def _run_steps(self, ops: list[Op]) -> None:
        t = time.perf_counter()
        try:
            results = self.batcher.run([op.args for op in ops])
        except BatchStateLost as e:  # the states changed in place: each request gets the model's error
            for op in ops:
                op.error = e.__cause__
                op.done.set()
            return
        except BaseException:  # one failing request must not fail the others: run them one by one
            for op in ops:
                self._run(op)
            return
        if self.observe:
            self.observe("step", sum(op.args[0].shape[0] for op in ops), time.perf_counter() - t)
        for op, result in zip(ops, results):
            op.result = result
            op.done.set()

    def _run_prefills(self, ops: list[Op]) -> None:
        if len(ops) == 1:
            return self._run(ops[0])
        t = time.perf_counter()
        try:
            results = pack_prefills(self.adapter, [op.args for op in ops])
        except BaseException:  # one failing request must not fail the others: run them one by one
            for op in ops:
                self._run(op)
            return
        self.packed += 1
        if self.observe:
            self.observe("prefill", sum(op.args[0].shape[0] for op in ops), time.perf_counter() - t)
        for op, result in zip(ops, results):
            op.result = result
            op.done.set()

    def _run(self, op: Op) -> None:
        t = time.perf_counter()
        try:
            op.result = getattr(self.adapter, op.kind)(*op.args)
        except BaseException as e:  # handed to the request's thread, which raises it as its own
            op.error = e
        if self.observe:
            self.observe(op.kind, op.args[0].shape[0], time.perf_counter() - t)
        op.done.set()


class SchedulingAdapter:
    """The engine's adapter while the server batches: forwards asked by request threads go through the scheduler;
    everything else (select, concat, device, flags) is the model's own adapter."""

    def __init__(self, adapter, scheduler: Scheduler):
        self.__dict__["_adapter"] = adapter
        self.__dict__["_scheduler"] = scheduler

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def __setattr__(self, name, value):
        setattr(self._adapter, name, value)

    def prefill(self, input_ids, state=None, start: int = 0, num_logits: int = 1):
        return self._scheduler.submit("prefill", input_ids, state, start, num_logits)

    def step(self, token, state, position: int):
        return self._scheduler.submit("step", token, state, position)
