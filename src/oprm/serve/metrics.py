"""``GET /metrics``: the server's counters in the Prometheus text format (prometheus-client).

Every server has its own registry (several apps in one process do not share counters). What is read live (queue
depth, running requests, the document cache) is collected when scraped; the rest is counted as requests finish.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, float("inf"))
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, float("inf"))
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf"))


class _Live:
    """Values read when scraped: the worker's queue and running jobs, the engine's document cache."""

    def __init__(self, worker, engine):
        self.worker, self.engine = worker, engine

    def collect(self):
        w = self.worker
        yield GaugeMetricFamily("oprm_queue_depth", "requests waiting for the engine", value=w.queue.qsize())
        yield GaugeMetricFamily("oprm_queue_capacity", "most requests that may wait (--max-queue)", value=w.max_queue)
        yield GaugeMetricFamily("oprm_running_requests", "requests being answered", value=len(w.running))
        yield GaugeMetricFamily("oprm_draining", "1 while shutting down (new requests get 503)",
                                value=int(w.draining))
        scheduler = getattr(w, "scheduler", None)
        if scheduler is not None:
            yield CounterMetricFamily("oprm_batched_steps", "decode-step forwards that served several requests",
                                      value=scheduler.batcher.batched_steps)
            yield CounterMetricFamily("oprm_reused_batch_steps", "of those, steps that continued the previous batch in "
                                      "place (no copy of the requests' states)", value=scheduler.batcher.reused_steps)
            yield CounterMetricFamily("oprm_packed_prefills", "prefill forwards that served several requests",
                                      value=scheduler.packed)
        cache = getattr(self.engine, "documents", None)
        if cache is not None:
            with cache.lock:
                nbytes = sum(cache.sizes.values())
            yield GaugeMetricFamily("oprm_document_cache_bytes", "bytes of document states kept in memory",
                                    value=nbytes)
            yield GaugeMetricFamily("oprm_document_cache_documents", "documents kept in memory",
                                    value=len(cache.items))
            yield CounterMetricFamily("oprm_document_cache_hits", "questions on a document already encoded",
                                      value=cache.hits)
            yield CounterMetricFamily("oprm_document_cache_misses", "documents encoded for a question",
                                      value=cache.misses)
            extended = getattr(cache, "extensions", None)
            if extended is not None:
                yield CounterMetricFamily("oprm_document_cache_extensions",
                                          "documents encoded from a cached shorter one (only new chunks)",
                                          value=extended)


class Metrics:
    def __init__(self, worker=None, engine=None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("oprm_requests", "finished requests by outcome and error code",
                                ["outcome", "code"], registry=r)
        self.ttft = Histogram("oprm_time_to_first_token_seconds", "from arrival to the first decoded token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("oprm_request_latency_seconds", "from arrival to the whole answer",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("oprm_queue_wait_seconds", "from arrival to the start of the work",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.output_tokens = Counter("oprm_output_tokens", "tokens decoded into answers", registry=r)
        self.prompt_tokens = Counter("oprm_prompt_tokens", "prompt tokens of answered requests", registry=r)
        self.forward_seconds = Histogram("oprm_forward_seconds", "seconds of one scheduled forward",
                                         ["kind"], buckets=STEP_BUCKETS, registry=r)
        self.forward_rows = Histogram("oprm_forward_rows", "rows in one scheduled forward (a decode step of "
                                      "several requests has one row per request)", ["kind"], buckets=ROW_BUCKETS,
                                      registry=r)
        self.started = time.time()
        if worker is not None:
            self.attach(worker, engine)

    def attach(self, worker, engine) -> None:
        self.registry.register(_Live(worker, engine))

    # --- events -----------------------------------------------------------------------------------------------------
    def finished(self, outcome: str, code: str | None) -> None:
        self.requests.labels(outcome, code or "").inc()

    def answered(self, job, outcome) -> None:
        now = time.perf_counter()
        self.latency.observe(now - job.enqueued)
        if job.started is not None:
            self.queue_wait.observe(job.started - job.enqueued)
        if job.first_token is not None:
            self.ttft.observe(job.first_token - job.enqueued)
        result = outcome.result
        self.output_tokens.inc(len(result.token_ids))
        self.prompt_tokens.inc(int(sum(result.prompt_tokens.values())))

    def observe_forward(self, kind: str, rows: int, seconds: float) -> None:
        self.forward_seconds.labels(kind).observe(seconds)
        self.forward_rows.labels(kind).observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
