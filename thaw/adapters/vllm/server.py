"""thaw's endpoints in a running `vllm serve`: an ASGI middleware, enabled with

    vllm serve MODEL --middleware thaw.adapters.vllm.server.ThawMiddleware

It answers under ``/thaw/`` and passes every other request to vLLM untouched:

- ``GET /thaw/status``: the engine's identity and block counts (read-only);
- ``POST /thaw/snapshot`` ``{"path", "weights"?, "weights_format"?, "strict"?, "weights_from"?,
  "direct"?, "recycle"?}`` (``direct``: written past the page cache; ``recycle``: into a
  retired snapshot's file in the same directory);
- ``POST /thaw/restore`` ``{"path", "weights"?, "trust_unknown_weights"?}``;
- ``POST /thaw/prepare`` ``{"path"}``.

Snapshot, restore and prepare read or write server-side files only where the operator
allowed it (``THAW_SNAPSHOT_DIR``, ``THAW_SNAPSHOT_URLS``: see `thaw.adapters.endpoints`, whose rules
every engine's server shares). The server's own API keys (``--api-key``, one or several, or
``VLLM_API_KEY``) are required here too; a server without one refuses snapshot, restore and
prepare unless the operator sets ``THAW_ALLOW_UNAUTHENTICATED=1`` (logged at start). After a
restore whose weights failed to load partway, every other request is answered 503 until a
restore with weights succeeds (`thaw.adapters.endpoints.ServiceGate`). In-flight requests are never
carried through the server: they belong to its HTTP clients. Each call runs in the EngineCore between
scheduler steps (`core_ops`); a refusal or failure comes back as an HTTP error whose
body is ``{"error": {"type": "<ThawError type>", "message": "..."}}``, and the server
keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from typing import Any, Awaitable, Callable, Optional

from thaw.adapters.endpoints import (HTTPRefusal, ServiceGate, check_body_size, check_post_headers, checked_request,
                            parse_body, refusal_of, require_write_access, resolve_path, status_extras,
                            write_access_notice)

__all__ = ["ThawMiddleware", "resolve_path"]
FIELDS = {"snapshot": {"path", "weights", "weights_format", "strict", "weights_from", "direct", "recycle"},
          "restore": {"path", "weights", "trust_unknown_weights"},
          "prepare": {"path"}}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
log = logging.getLogger("thaw.vllm")
Send = Callable[[dict[str, Any]], Awaitable[None]]


def api_keys(app: Any) -> list[str]:
    """The server's API keys: ``--api-key`` (vLLM takes one or several), else ``VLLM_API_KEY``."""
    args = getattr(getattr(app, "state", None), "args", None)
    configured = getattr(args, "api_key", None) or os.environ.get("VLLM_API_KEY")
    keys = [configured] if isinstance(configured, str) else list(configured or [])
    return [k for k in keys if isinstance(k, str) and k]


def _tokens(app: Any) -> list[bytes]:
    return [hashlib.sha256(k.encode()).digest() for k in api_keys(app)]


def _authorized(scope: Scope, tokens: list[bytes]) -> bool:
    if not tokens:
        return True
    headers = dict(scope.get("headers") or [])
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    digest = hashlib.sha256(value.encode()).digest()
    return scheme.lower() == "bearer" and any(secrets.compare_digest(digest, t) for t in tokens)


async def _body(receive: Receive) -> dict[str, Any]:
    """The request body as a JSON object, read no further than `MAX_BODY` bytes (413)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        check_body_size(size)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return parse_body(b"".join(chunks))


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ThawMiddleware:
    """The ASGI middleware (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.announced = False
        self.gate = ServiceGate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "lifespan" and not self.announced:  # the server starts: say who may write
            self.announced = True
            level, line = write_access_notice(bool(api_keys(scope.get("app"))))
            log.log(level, line)
        if scope.get("type") != "http" or not scope.get("path", "").startswith("/thaw/"):
            if scope.get("type") == "http" and self.gate.refusing:
                await _respond(send, *self.gate.refusal())
                return
            await self.app(scope, receive, send)
            return
        try:
            status, payload = 200, await self._serve(scope, receive)
        except HTTPRefusal as exc:
            status, payload = exc.status, exc.body()
        self.gate.after(scope.get("path", "")[len("/thaw/"):], payload)
        await _respond(send, status, payload)

    async def _serve(self, scope: Scope, receive: Receive) -> Any:
        app = scope.get("app")
        if not _authorized(scope, _tokens(app)):
            raise HTTPRefusal(401, "Unauthorized", "this server requires its API key (Authorization: Bearer KEY)")
        op, method = scope["path"][len("/thaw/"):], scope.get("method")
        if op == "status" and method == "GET":
            return {**await _call_core(app, "status", {}), **status_extras()}
        if op in FIELDS and method != "POST":
            raise HTTPRefusal(405, "MethodNotAllowed", f"/thaw/{op} takes POST")
        if op in FIELDS:  # every POST changes state
            require_write_access(bool(api_keys(app)))
            check_post_headers(_header(scope, b"content-type"), _header(scope, b"content-length"))
        body = checked_request(op, await _body(receive) if op in FIELDS else {}, FIELDS)
        return await _call_core(app, op, body)


async def _respond(send: Send, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _call_core(app: Any, op: str, args: dict[str, Any]) -> Any:
    client = getattr(getattr(getattr(app, "state", None), "engine_client", None), "engine_core", None)
    if client is None or not hasattr(client, "call_utility_async"):
        raise HTTPRefusal(501, "EngineUnsupported", "this server's engine client has no utility calls to reach "
                          "vLLM's engine core through")
    try:
        reply = await client.call_utility_async("thaw_call", op, args)
    except Exception as exc:  # vLLM's own failure of the call (e.g. thaw not installed where the core runs)
        raise HTTPRefusal(500, "EngineCoreError", f"vLLM's utility call thaw_call failed: {exc}; thaw's vLLM "
                          "plugin must be installed where the engine core runs") from None
    return refusal_of(reply, "from the engine core")
