"""Who may talk to the server: the Host header, the API key and the body's media type, checked before any route.

* Host: a server bound to a loopback address answers only requests whose ``Host`` is a loopback name (localhost,
  127.0.0.1, [::1], ``*.localhost``) or one of ``--allowed-hosts``. A web page that rebinds its own DNS name to
  127.0.0.1 ("DNS rebinding") sends its own name as ``Host`` and is refused (403).
* Key: with ``--api-key`` (or ``OPRM_API_KEY``) every ``/v1/*`` route needs ``Authorization: Bearer <key>``,
  compared in constant time (401 otherwise). ``/health`` stays open.
* Media type: a POST body must be ``application/json`` (415 otherwise): the "simple" cross-site requests a browser
  sends without asking (form posts, ``text/plain``) are refused before they are read.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which buffers streamed responses).
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from .plan import APIError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
JSON_TYPES = ("application/json",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is a loopback one."""
    name = host.strip("[]").rstrip(".").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """A Host header's name without its port: ``[::1]:8000`` -> ``::1``, ``Example.com.:80`` -> ``example.com``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


class Guard:
    """The ASGI middleware. ``allowed_hosts``: None to accept any Host (a server bound to a public address without
    ``--allowed-hosts``), else the names accepted besides the loopback ones (``"*"``: any)."""

    def __init__(self, app, *, api_keys: list[str] | tuple[str, ...] = (), allowed_hosts: list[str] | None = None):
        self.app = app
        self.keys = [k.encode("utf-8") for k in api_keys]
        self.allowed = None if allowed_hosts is None else {host_name(h) for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            error = self.check(scope)
            if error is not None:
                data = json.dumps(error.body()).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
                await send({"type": "http.response.start", "status": error.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return
        await self.app(scope, receive, send)

    def check(self, scope) -> APIError | None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.lower(), value)
        if self.allowed is not None and "*" not in self.allowed:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host and not is_loopback(host) and host not in self.allowed:
                return APIError(403, f"the Host {host[:100]!r} is not allowed: this server answers loopback names "
                                     "(oprm serve --allowed-hosts adds others)", code="host_not_allowed")
        path = scope.get("path", "")
        if not path.startswith("/v1"):
            return None
        if self.keys and not self._key_ok(headers.get(b"authorization", b"")):
            return APIError(401, "a valid API key is required: send the header 'Authorization: Bearer <key>' "
                                 "(oprm serve --api-key)", code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if media not in JSON_TYPES:
                return APIError(415, f"the request body must be application/json, got {media[:100] or 'no type'!r}",
                                code="unsupported_media_type")
        return None

    def _key_ok(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        ok = False
        for key in self.keys:  # every key compared, each in constant time
            ok |= hmac.compare_digest(token, key)
        return ok
