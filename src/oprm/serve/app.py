"""The ASGI app (Starlette): ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/health``.

Starlette rather than FastAPI: the request bodies are pydantic models (``protocol.py``) validated straight from the
body's bytes, and every failure must become an OpenAI error object with the parameter named; FastAPI would add a
dependency and its own 422 error shape to override, and would remove only the two ``parse`` calls. The streaming,
disconnect and queue handling is ours either way. ``benchmarks/serve_overhead.py`` measures both on an empty
endpoint, and the cost of the models per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .plan import APIError, Limits, Plan, bad
from .parser import Parser
from .responses import (chat_logprobs, chat_response, chunk_event, completion_logprobs, completion_response,
                        oprm_details, usage_event)
from .worker import EngineWorker, Job, JobCancelled

log = logging.getLogger("oprm.serve")
DEFAULT_MAX_BODY = 32 << 20  # a 1M-token document is ~4-8 MB of JSON
DRAIN_FACTOR = 4  # an oversize body up to 4x the limit is read and dropped, so the client sees the 413


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return Response(data, status_code=status, headers=headers, media_type="application/json")


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def _wait_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStream(Response):
    """Server-sent events for one streamed job. The response starts when the first piece (or the end) arrives, so
    an error found by the worker before any token is still answered as a 4xx/5xx JSON error object. A client that
    disconnects cancels the job (the decode stops at its next token)."""

    def __init__(self, job: Job):
        super().__init__(status_code=200, media_type="text/event-stream")
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        job, plan = self.job, self.job.plan
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        watcher.add_done_callback(lambda t: t.cancelled() or job.cancel())
        try:
            first = await job.events.get()
            if first[0] == "end" and job.future.exception() is not None:
                error = job.future.exception()
                if isinstance(error, APIError):
                    await _json(error.body(), error.status, error.headers)(scope, receive, send)
                else:  # cancelled before any piece: nobody is listening, but the response must start
                    await Response(status_code=499)(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                    (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})

            async def body(data: bytes, more: bool = True):
                await send({"type": "http.response.body", "body": data, "more_body": more})

            await body(_sse(chunk_event(plan, "", role=True)))
            event = first
            while event[0] == "delta":
                await body(_sse(chunk_event(plan, event[1])))
                event = await job.events.get()
            error = job.future.exception()
            if error is None:
                outcome = job.future.result()
                if outcome.final_delta:
                    await body(_sse(chunk_event(plan, outcome.final_delta)))
                last = chunk_event(plan, None, reason=outcome.reason)
                if plan.explain:
                    last["oprm"] = oprm_details(outcome.result, plan)
                await body(_sse(last))
                if plan.include_usage:
                    await body(_sse(usage_event(plan, outcome.result)))
                await body(b"data: [DONE]\n\n", more=False)
            elif isinstance(error, APIError):  # after the first piece: the error travels as an event
                await body(_sse(error.body()), more=False)
            else:
                await body(b"", more=False)
        except OSError:  # the client's socket is gone
            job.cancel()
        finally:
            watcher.cancel()
            if not job.future.done():
                job.cancel()


def _metrics():
    try:
        from .metrics import Metrics
    except ImportError:  # prometheus-client missing: the server runs, /metrics says what to install
        log.warning("prometheus-client is not installed: /metrics is off")
        return None
    return Metrics()


def create_app(engine, *, model_names: list[str], default_generation: dict | None = None, max_queue: int = 64,
               max_body_bytes: int = DEFAULT_MAX_BODY, limits: Limits | None = None, max_running: int = 1,
               shutdown_timeout: float = 30.0) -> Starlette:
    """The server for one loaded ``OPRM`` engine. ``model_names``: the id clients send (first) and its aliases.
    ``max_running`` > 1 answers that many requests at once with their forwards batched (``scheduler.py``)."""
    metrics = _metrics()
    worker = EngineWorker(engine, max_queue, max_running=max_running, metrics=metrics,
                          shutdown_timeout=shutdown_timeout)
    if metrics is not None:
        metrics.attach(worker, engine)
    parser = Parser(model_names, engine.config, default_generation or {}, limits)

    async def read_body(request: Request):
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise bad("invalid Content-Length header", None, "invalid_header")
            if int(length) > max_body_bytes:
                if int(length) <= DRAIN_FACTOR * max_body_bytes:
                    async for _ in request.stream():
                        pass
                raise APIError(413, f"the request body is {int(length)} bytes; this server takes at most "
                                    f"{max_body_bytes} (oprm serve --max-body-mb)", code="request_too_large")
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > max_body_bytes:
                raise APIError(413, f"the request body exceeds {max_body_bytes} bytes (oprm serve --max-body-mb)",
                               code="request_too_large")
        if not data.strip():
            raise bad("the request body is empty; send a JSON object", None, "invalid_json")
        return bytes(data)  # parsed and checked in one step by the request models (protocol.py)

    async def answer(request: Request, plan: Plan) -> Response:
        job = Job(plan, asyncio.get_running_loop())
        worker.submit(job)
        if plan.stream:
            return EventStream(job)
        watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not job.future.done():  # the client left while waiting: stop its decode
                job.cancel()
                await asyncio.wait({job.future})
            outcome = job.future.result()
        except JobCancelled:
            return Response(status_code=499)  # nobody reads it
        finally:
            watcher.cancel()
        result = outcome.result
        if plan.kind == "chat":
            body = chat_response(plan, outcome.text, outcome.reason, result, chat_logprobs(outcome.logprobs)
                                 if plan.logprobs else None)
        else:
            body = completion_response(plan, outcome.text, outcome.reason, result,
                                       completion_logprobs(outcome.logprobs) if plan.logprobs else None)
        if plan.explain:
            body["oprm"] = oprm_details(result, plan)
        return _json(body)

    async def chat_completions(request: Request) -> Response:
        return await answer(request, parser.chat(await read_body(request)))

    async def completions(request: Request) -> Response:
        return await answer(request, parser.completion(await read_body(request)))

    def model_card(name: str) -> dict:
        # a name only: never engine.name (the model's folder on this machine)
        return {"id": name, "object": "model", "created": int(worker.started_at), "owned_by": "oprm",
                "root": model_names[0]}

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": [model_card(model_names[0])]})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in model_names:
            raise APIError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
        return _json(model_card(name))

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "model": model_names[0], **worker.status()})

    async def metrics_page(request: Request) -> Response:
        if metrics is None:
            raise APIError(404, "/metrics needs prometheus-client: pip install 'oprm[serve]'", code="not_found")
        from .metrics import CONTENT_TYPE

        return Response(metrics.render(), media_type=None, headers={"Content-Type": CONTENT_TYPE})

    async def api_error(request: Request, exc: APIError) -> Response:
        return _json(exc.body(), exc.status, exc.headers)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return _json(APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=kind).body(),
                     exc.status_code, exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _json(APIError(500, f"internal error ({type(exc).__name__})", type="server_error",
                              code="internal_error").body(), 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        # uvicorn has waited for the open responses (--shutdown-timeout): what still runs has no client left
        await asyncio.get_running_loop().run_in_executor(None, worker.stop, min(2.0, shutdown_timeout))

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", model, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics_page, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.worker = worker
    app.state.metrics = metrics
    app.state.started = time.time()
    return app
