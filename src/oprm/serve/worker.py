"""One engine, a bounded queue of jobs, and the threads that answer them.

The event loop only parses, queues and streams; the engine runs in worker threads. Without batching one thread
answers one job at a time. With batching (the default: ``oprm serve --max-running``), several jobs run at once, each
in its own thread, and only the scheduler thread (``scheduler.py``) runs the model: their decode steps share forwards.

A full queue is refused at once (the app answers 503 with ``Retry-After``), and so is every job once the server
drains for a shutdown. A job whose client went away is skipped if it has not started, and stopped at its next decoded
token if it has: the job's streamer raises :class:`DecodeCancelled` from ``put``, which the engine calls once per
token (with batching its rows leave the next decode step).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass

from ..errors import GenerationCancelled, ModelError, OPRMUsageError
from ..prompts import bos_prefix, has_chat_template
from .plan import APIError, Plan
from .responses import cut_at_stop, finish_reason, token_logprobs

log = logging.getLogger("oprm.serve")


class DecodeCancelled(GenerationCancelled):
    """The client went away. A BaseException so the engine's model-failure wrapper (which turns an ``Exception``
    raised inside a forward into a ``ModelError``) lets it through unchanged."""


class JobCancelled(Exception):
    """What a cancelled job's waiter receives."""


@dataclass
class Outcome:
    result: object  # OPRMResult
    text: str  # the answer as returned (stop sequences cut)
    reason: str  # finish_reason
    logprobs: list | None  # token_logprobs entries
    final_delta: str  # streaming: what the pieces sent so far lack of ``text``


class Job:
    """A request on its way through the worker; results go back to the event loop thread-safely."""

    def __init__(self, plan: Plan, loop: asyncio.AbstractEventLoop):
        self.plan, self.loop = plan, loop
        self.future: asyncio.Future = loop.create_future()
        self.events: asyncio.Queue | None = asyncio.Queue() if plan.stream else None
        self.cancelled = threading.Event()
        self.enqueued = time.perf_counter()
        self.started: float | None = None
        self.first_token: float | None = None
        self.tokens_decoded = 0

    def cancel(self) -> None:
        self.cancelled.set()

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed (server shutting down): nobody is waiting
            pass

    def emit(self, delta: str) -> None:
        if self.events is not None and delta:
            self._call(self.events.put_nowait, ("delta", delta))

    def settle(self, outcome: Outcome | None = None, error: BaseException | None = None) -> None:
        def resolve():
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(outcome)
            if self.events is not None:
                self.events.put_nowait(("end", None))

        self._call(resolve)


class _Streamer:
    """The engine's streamer for one job: checks for cancellation at every token and, when the job streams, turns
    token ids into text pieces (incremental detokenization over a short window, so each step costs O(1)).

    The pieces never run ahead of the final answer: leading whitespace is dropped and trailing whitespace held back
    (the engine strips the answer), and a tail that could begin a stop sequence is held back until it cannot."""

    def __init__(self, job: Job, tokenizer, stream_text: bool):
        self.job, self.tokenizer, self.stream_text = job, tokenizer, stream_text
        self.stops = job.plan.stop
        self.prompt_seen = False
        self.tokens: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.pending = ""  # decoded, not yet sent
        self.sent: list[str] = []
        self.any_sent = False
        self.stopped = False

    def put(self, value) -> None:
        if self.job.cancelled.is_set():
            raise DecodeCancelled()
        if not self.prompt_seen:  # the engine sends the prompt first, as transformers' streamers expect
            self.prompt_seen = True
            return
        new = [int(t) for t in value.reshape(-1).tolist()]
        if self.job.first_token is None:
            self.job.first_token = time.perf_counter()
        self.tokens += new
        self.job.tokens_decoded += len(new)
        if self.stream_text and not self.stopped:
            self._advance()

    def end(self) -> None:
        pass

    def _advance(self) -> None:
        decode = self.tokenizer.decode
        before = decode(self.tokens[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = decode(self.tokens[self.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):  # nothing new, or half a UTF-8 character
            return
        delta = after[len(before):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        if not self.any_sent and not self.pending:
            delta = delta.lstrip()
        self.pending += delta
        text, self.stopped = cut_at_stop(self.pending, self.stops)
        ready = text.rstrip()
        if not self.stopped:
            ready = ready[:len(ready) - _partial_stop(ready, self.stops)]
        if ready:
            self.pending = self.pending[len(ready):]
            self.sent.append(ready)
            self.any_sent = True
            self.job.emit(ready)

    def final_delta(self, text: str) -> str:
        sent = "".join(self.sent)
        if text.startswith(sent):
            return text[len(sent):]
        log.warning("streamed pieces diverged from the final answer; the last piece carries no correction")
        return ""


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop sequence (held back)."""
    best = 0
    for s in stops:
        for j in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:j]):
                best = j
                break
    return best


class EngineWorker:
    """Runs jobs on the engine. Without batching, one at a time in one thread. With batching (``max_running`` > 1),
    up to ``max_running`` jobs run at once, each in its own thread, and a :class:`~.scheduler.Scheduler` runs their
    forwards: decode steps of all of them in one forward, prefill micro-batches in turn."""

    def __init__(self, engine, max_queue: int = 64, max_running: int = 1, metrics=None,
                 shutdown_timeout: float = 30.0):
        self.engine = engine
        self.max_queue = max_queue
        self.max_running = max(1, max_running)
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.running: set[Job] = set()
        self.metrics = metrics
        self.shutdown_timeout = shutdown_timeout
        self.draining = False
        # failed: the server's fault (5xx); refused: the request's (a 4xx found only by the engine, e.g. a context of
        # no tokens); rejected: the queue was full or the server was shutting down
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "refused": 0, "rejected": 0}
        self.scheduler = None
        if self.max_running > 1:
            from .scheduler import Scheduler, SchedulingAdapter

            from ..engine import default_max_batch_tokens

            budget = engine.config.max_batch_tokens or default_max_batch_tokens(engine.adapter.device)
            self.scheduler = Scheduler(engine.adapter, observe=metrics.observe_forward if metrics else None,
                                       max_batch_tokens=budget)
            engine.adapter = SchedulingAdapter(engine.adapter, self.scheduler)
        self.threads = [threading.Thread(target=self._loop, name=f"oprm-engine-{i}", daemon=True)
                        for i in range(self.max_running)]
        self.started_at = time.time()
        self.lock = threading.Lock()
        eos = getattr(getattr(engine.model, "generation_config", None), "eos_token_id", None)
        self.eos = set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    @property
    def batching(self) -> bool:
        return self.scheduler is not None

    def start(self) -> None:
        if self.scheduler is not None:
            self.scheduler.start()
        for thread in self.threads:
            thread.start()

    def drain(self) -> None:
        """Admit no more jobs (503); those queued and running go on."""
        self.draining = True

    def idle(self) -> bool:
        return not self.running and self.queue.empty()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let the queued and running ones finish within ``timeout`` seconds (default
        ``shutdown_timeout``), cancel what is left, and end the threads."""
        self.drain()
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        while not self.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        while True:  # what did not finish in time is cancelled
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                self.counts["cancelled"] += 1
                job.settle(error=JobCancelled())
        for job in list(self.running):
            job.cancel()
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()) + 5)
        if self.scheduler is not None:
            self.scheduler.stop()

    def submit(self, job: Job) -> None:
        if self.draining:
            self._count("rejected", "shutting_down")
            raise APIError(503, "the server is shutting down; retry on another replica or later",
                           type="server_error", code="shutting_down", headers={"Retry-After": "5"})
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            self._count("rejected", "queue_full")
            raise APIError(503, f"the server is busy: {self.max_queue} requests are already waiting; retry later",
                           type="server_error", code="queue_full", headers={"Retry-After": "1"}) from None

    def status(self) -> dict:
        return {"queued": self.queue.qsize(), "max_queue": self.max_queue, "busy": bool(self.running),
                "running": len(self.running), "max_running": self.max_running, "batching": self.batching,
                "draining": self.draining, **self.counts}

    def _count(self, count: str, code: str | None = None) -> None:
        with self.lock:
            self.counts[count] += 1
        if self.metrics is not None:
            self.metrics.finished(count, code)

    # --- the threads ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if job.cancelled.is_set():  # its client left while it waited
                self._count("cancelled", "cancelled")
                job.settle(error=JobCancelled())
                continue
            with self.lock:
                self.running.add(job)
            job.started = time.perf_counter()
            if self.scheduler is not None:
                self.scheduler.enter(job)
            outcome, error, count = None, None, "failed"
            try:
                outcome, count = self._run(job), "completed"
            except GenerationCancelled:  # the client left: during the prefill or at a decoded token
                error, count = JobCancelled(), "cancelled"
            except APIError as e:
                error, count = e, ("failed" if e.status >= 500 else "refused")
            except ModelError as e:  # the model itself failed: a server-side problem, told in one line
                error = APIError(500, str(e), type="server_error", code="model_error")
            except OPRMUsageError as e:  # e.g. a template the tokenizer cannot render, a context of no tokens
                error, count = APIError(400, str(e), param="oprm" if job.plan.oprm else "messages",
                                        code="invalid_value"), "refused"
            except Exception as e:  # never a traceback to the client; the server log keeps it
                log.error("request %s failed:\n%s", job.plan.id, traceback.format_exc())
                error = APIError(500, f"internal error while answering ({type(e).__name__})", type="server_error",
                                 code="internal_error")
            finally:
                if self.scheduler is not None:
                    self.scheduler.leave()
            # the counters and the busy flag are settled before the client hears back, so /health agrees with it
            code = getattr(error, "code", None) or (str(error.status) if isinstance(error, APIError) else None)
            self._count(count, code if count != "cancelled" else "cancelled")
            if self.metrics is not None and outcome is not None:
                self.metrics.answered(job, outcome)
            with self.lock:
                self.running.discard(job)
            job.settle(outcome, error)

    def _run(self, job: Job) -> Outcome:
        plan, engine = job.plan, self.engine
        kwargs = dict(plan.engine_kwargs)
        if not plan.oprm:
            kwargs.update(prefix_ids=[], context_ids=self._vanilla_ids(plan), suffix_ids=[], mode="vanilla")
        streamer = _Streamer(job, engine.tokenizer, stream_text=plan.stream and plan.streams_pieces)
        result = engine.generate(streamer=streamer, output_logits=plan.logprobs, should_stop=job.cancelled.is_set,
                                 **kwargs)
        text, stopped = cut_at_stop(result.text, plan.stop)
        eos = set() if kwargs.get("eos_token_id") == [] else self.eos
        entries = token_logprobs(result, engine.tokenizer, plan.top_logprobs, eos) if plan.logprobs else None
        return Outcome(result, text, finish_reason(result, plan, stopped, eos), entries, streamer.final_delta(text))

    def _vanilla_ids(self, plan: Plan) -> list[int]:
        """Plain chat: the whole conversation through the model's chat template; plain completion: the raw text."""
        tok = self.engine.tokenizer
        if plan.vanilla_messages is not None:
            if has_chat_template(tok):
                try:
                    text = tok.apply_chat_template(plan.vanilla_messages, tokenize=False, add_generation_prompt=True)
                except Exception as e:  # e.g. a template that refuses a system message
                    raise APIError(400, f"the model's chat template rejected the messages: {e}",
                                   param="messages", code="chat_template_error") from None
                return tok(text, add_special_tokens=False)["input_ids"]  # the template writes its own BOS
            text = "\n\n".join(m["content"] for m in plan.vanilla_messages)
        else:
            text = plan.vanilla_prompt
        ids = bos_prefix(tok) + tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise APIError(400, "the prompt tokenizes to no tokens", param="prompt")
        return ids
