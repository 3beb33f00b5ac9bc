"""``oprm serve``: an OpenAI-compatible HTTP server for one OPRM engine.

    oprm serve --model oprm-ar-mamba2 --port 8000 --chunk-size 128

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (JSON or server-sent events), ``POST /v1/completions``,
``GET /health``, ``GET /metrics`` (Prometheus). Up to ``--max-running`` requests are answered at once with their
decode steps batched (``scheduler.py``); SIGTERM stops admitting (503) and lets them finish. The long context travels in the request extension ``"oprm": {"context": ..., <options>}`` or in a
``<document>...</document>`` block of the messages (see :mod:`oprm.serve.protocol` and the README's "Serving").

This module only defines the command; the web stack (starlette, uvicorn: ``pip install 'oprm[serve]'``) is
imported when the server starts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys

from ..errors import OPRMUsageError
from .guard import Guard, is_loopback
from .plan import Limits

API_KEY_ENV = "OPRM_API_KEY"
DEFAULT_MAX_RUNNING = 8

__all__ = ["add_parser", "run_serve"]


def _require_stack() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise OPRMUsageError(f"oprm serve needs its web stack ({e.name} is missing): "
                             "pip install 'oprm[serve]'") from None


def add_parser(sub) -> None:
    from ..cli import MEASURED_CHUNK_SIZE, add_model_arguments
    from ..config import add_config_arguments, add_generation_arguments

    p = sub.add_parser("serve", help="serve a model with OPRM over an OpenAI-compatible HTTP API",
                       description="An OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models, "
                                   "/health). The engine flags below are the server's defaults; a request may override "
                                   "the per-question ones in its \"oprm\" extension, never a path or a server-wide "
                                   "option (cache, threads, device, limits, keys).")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for every one)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", action="append", default=None,
                   help="a key clients must send as 'Authorization: Bearer <key>' on /v1/* (repeatable; default: "
                        "$OPRM_API_KEY, else none)")
    p.add_argument("--allowed-hosts", action="append", default=None,
                   help="Host header names answered besides the loopback ones (comma-separated, repeatable; '*' for "
                        "any). Default: loopback names only when bound to a loopback address, any otherwise")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send and /v1/models shows (default: --model, or its last part "
                        "when it is a local path)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for the engine; more are answered 503 (default 64)")
    p.add_argument("--max-running", type=int, default=DEFAULT_MAX_RUNNING,
                   help=f"requests answered at once, their decode steps batched in one forward and their prefills "
                        f"taken in turn (default {DEFAULT_MAX_RUNNING}; 1: one request at a time, no batching)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM/SIGINT: seconds the running and queued requests get to finish before they are "
                        "cancelled (default 30); new ones get 503 meanwhile")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    limits = p.add_argument_group("limits of one request")
    limits.add_argument("--max-tokens-limit", type=int, default=Limits.max_tokens,
                        help=f"most tokens one answer may decode; a larger max_tokens is a 400 (default "
                             f"{Limits.max_tokens})")
    limits.add_argument("--max-document-bytes", type=int, default=Limits.max_document_bytes,
                        help=f"largest document (UTF-8 bytes); a larger one is a 413 (default "
                             f"{Limits.max_document_bytes})")
    limits.add_argument("--max-template-chars", type=int, default=Limits.max_template_chars,
                        help=f"longest oprm.template / oprm.answer_prefix (default {Limits.max_template_chars})")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default warning)")
    add_config_arguments(p, later={"chunk_size": MEASURED_CHUNK_SIZE})
    add_generation_arguments(p)
    p.set_defaults(func=run_serve)


def model_names(model: str, served: str | None) -> list[str]:
    """The id clients send first, then aliases (the --model string and its folder name). The first is what
    /v1/models, /health and error messages show: --served-model-name, else --model's last part when it names a local
    path (a client never learns the server's folders), else --model as given (a hub id, a shipped model's name)."""
    expanded = os.path.expanduser(model)
    local = model.startswith((".", "/", "~")) or os.path.isabs(expanded) or os.path.exists(expanded)
    base = os.path.basename(os.path.normpath(expanded))
    names = [served] if served else []
    names += [base, model] if local else [model, base]
    return list(dict.fromkeys(n for n in names if n))


def api_keys(flags: list[str] | None) -> list[str]:
    """The keys of --api-key (repeatable), else of $OPRM_API_KEY (comma-separated), else none."""
    keys = flags if flags else [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    if any(not k or any(c.isspace() for c in k) for k in keys):
        raise OPRMUsageError(f"{'--api-key' if flags else '$' + API_KEY_ENV} must be a non-empty text without spaces "
                             "(several keys: repeat --api-key, or separate them by commas in $OPRM_API_KEY)")
    return keys


def run_serve(args) -> int:
    from ..cli import engine_from_args
    from ..config import generation_from_args
    from ..heap import limit_malloc_arenas

    _require_stack()
    if not 0 <= args.port <= 65535:
        raise OPRMUsageError(f"--port must be within 0..65535, got {args.port}")
    if args.max_queue < 1:
        raise OPRMUsageError(f"--max-queue must be positive, got {args.max_queue}")
    if args.max_running < 1:
        raise OPRMUsageError(f"--max-running must be positive, got {args.max_running}")
    if args.shutdown_timeout < 0:
        raise OPRMUsageError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    if args.max_body_mb <= 0:
        raise OPRMUsageError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    for flag in ("max_tokens_limit", "max_document_bytes", "max_template_chars"):
        if getattr(args, flag) < 1:
            raise OPRMUsageError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    limits = Limits(args.max_tokens_limit, args.max_document_bytes, args.max_template_chars)
    generation = generation_from_args(args)
    if generation.get("max_new_tokens", 0) > limits.max_tokens:
        raise OPRMUsageError(f"--max-new-tokens {generation['max_new_tokens']} is above --max-tokens-limit "
                             f"{limits.max_tokens}")
    if args.cache_dir:  # an unusable folder fails here, in one line, not in every request
        try:
            os.makedirs(os.path.expanduser(args.cache_dir), exist_ok=True)
        except OSError as e:
            raise OPRMUsageError(f"--cache-dir {args.cache_dir}: {e.strerror or e}") from None
    keys = api_keys(args.api_key)
    hosts = [h.strip() for item in args.allowed_hosts or () for h in item.split(",") if h.strip()]
    sock = _bind(args.host, args.port)  # before the model loads: a taken port fails at once, before any URL
    loopback = is_loopback(sock.getsockname()[0])
    if not loopback and not keys:
        print(f"oprm serve: warning: listening on {args.host} (not only this machine) without --api-key: anyone who "
              "can reach this port can use the model", file=sys.stderr, flush=True)
    limit_malloc_arenas()  # before any request thread: their freed memory is shared, not kept per thread
    engine = engine_from_args(args)
    import uvicorn

    from .app import create_app as make

    names = model_names(args.model, args.served_model_name)
    app = make(engine, model_names=names, default_generation=generation, max_queue=args.max_queue,
               max_body_bytes=int(args.max_body_mb * (1 << 20)), limits=limits, max_running=args.max_running,
               shutdown_timeout=args.shutdown_timeout)
    worker = app.state.worker
    app = Guard(app, api_keys=keys, allowed_hosts=hosts if loopback or hosts else None)
    port = sock.getsockname()[1]
    print(f"oprm serve: {names[0]} on http://{args.host}:{port}/v1 (chunk size {engine.config.chunk_size}, "
          f"queue {args.max_queue}, {args.max_running} at once{', API key required' if keys else ''})",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug"),
                            timeout_graceful_shutdown=args.shutdown_timeout)
    _Server(config, worker).run(sockets=[sock])
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which on SIGTERM/SIGINT first stops admitting (503 with Retry-After for a request that
        still arrives on an open connection), then closes the listening socket and waits for running requests
        (``--shutdown-timeout``); the worker cancels what is left and the process exits 0."""

        def __init__(self, config, worker):
            super().__init__(config)
            self.worker = worker

        def handle_exit(self, sig, frame) -> None:
            if not self.worker.draining:
                print(f"oprm serve: shutting down: finishing {len(self.worker.running)} running and "
                      f"{self.worker.queue.qsize()} queued requests (at most {self.worker.shutdown_timeout:g} s)",
                      file=sys.stderr, flush=True)
            self.worker.drain()
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a graceful stop is a clean exit (0): uvicorn would re-raise the signal
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    return Server


def _Server(config, worker):
    return _server_class()(config, worker)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses a TIME_WAIT port
        sock.bind(address)
    except socket.gaierror as e:
        raise OPRMUsageError(f"--host {host}: {e.strerror}") from None
    except OSError as e:
        raise OPRMUsageError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                             + (" (another process uses this port: pick another with --port)"
                                if e.errno == errno.EADDRINUSE else "")) from None
    sock.set_inheritable(True)
    return sock
