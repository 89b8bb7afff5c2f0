"""thaw's endpoints in a running `vllm serve`: an ASGI middleware, enabled with

    vllm serve MODEL --middleware thaw.adapters.vllm.server.ThawMiddleware

It answers under ``/thaw/`` and passes every other request to vLLM untouched:

- ``GET /thaw/status``: the engine's identity and block counts (read-only);
- ``POST /thaw/snapshot`` ``{"path", "weights"?, "weights_format"?, "strict"?}``;
- ``POST /thaw/restore`` ``{"path", "weights"?, "trust_unknown_weights"?}``;
- ``POST /thaw/prepare`` ``{"path"}``.

Snapshot, restore and prepare read or write server-side files, so they are off unless the
operator names a directory in the environment variable ``THAW_SNAPSHOT_DIR``; paths are
taken relative to it and must resolve inside it. URLs (``s3://...``) are taken only under
the prefixes the operator lists in ``THAW_SNAPSHOT_URLS`` (separated by spaces or commas;
none by default), with no ``..`` segment. The server's own API keys (``--api-key``
or ``VLLM_API_KEY``) are required here too. In-flight requests are never carried through
the server: they belong to its HTTP clients. Each call runs in the EngineCore between
scheduler steps (`core_service`); a refusal or failure comes back as an HTTP error whose
body is ``{"error": {"type": "<ThawError type>", "message": "..."}}``, and the server
keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any, Awaitable, Callable

SNAPSHOT_DIR_ENV = "THAW_SNAPSHOT_DIR"
SNAPSHOT_URLS_ENV = "THAW_SNAPSHOT_URLS"
STATUS_OF = {"IdentityMismatch": 409, "SnapshotIncomplete": 409, "ChecksumError": 422, "FormatError": 422,
             "SchemaError": 422, "EngineUnsupported": 501, "FileNotFoundError": 404, "NotADirectoryError": 404,
             "PermissionError": 403, "IsADirectoryError": 409}
FIELDS = {"snapshot": {"path", "weights", "weights_format", "strict"},
          "restore": {"path", "weights", "trust_unknown_weights"},
          "prepare": {"path"}}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HTTPRefusal(Exception):
    def __init__(self, status: int, type_name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type_name = status, type_name


def resolve_url(requested: str, allowed: str | None) -> str:
    """`requested`, a URL, if it lies under one of the `allowed` prefixes (see the module
    docstring)."""
    prefixes = [p.rstrip("/") + "/" for p in (allowed or "").replace(",", " ").split()]
    if not prefixes:
        raise HTTPRefusal(403, "EndpointDisabled",
                          f"snapshot URLs are off: start the server with {SNAPSHOT_URLS_ENV}='s3://BUCKET/PREFIX' "
                          "to allow snapshots to be written and read under it")
    scheme, _, rest = requested.partition("://")
    if any(part in ("..", ".") for part in rest.split("/")) or not any(requested.startswith(p) for p in prefixes):
        raise HTTPRefusal(403, "PathOutsideSnapshotDir",
                          f"{requested!r} is not under the allowed snapshot URLs {prefixes}")
    return requested


def resolve_path(requested: Any, root: str | None, allowed_urls: str | None = None) -> str:
    """`requested` (relative to `root`, or absolute inside it) as a real path inside
    `root`; a URL only under `allowed_urls` (`resolve_url`)."""
    from thaw.core.object_store import is_url

    if is_url(requested):
        return resolve_url(requested, allowed_urls)
    if root is None:
        raise HTTPRefusal(403, "EndpointDisabled",
                          f"thaw's snapshot endpoints are off: start the server with {SNAPSHOT_DIR_ENV}=DIR "
                          "to allow snapshots to be written and read under DIR")
    if not isinstance(requested, str) or not requested:
        raise HTTPRefusal(400, "BadRequest", "'path' must be a non-empty string")
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, requested))
    if os.path.commonpath([base, target]) != base:
        raise HTTPRefusal(403, "PathOutsideSnapshotDir",
                          f"{requested!r} resolves outside the snapshot directory {base}")
    return target


def _tokens(app: Any) -> list[bytes]:
    args = getattr(getattr(app, "state", None), "args", None)
    keys = [k for k in (getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")]) if k]
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def _authorized(scope: Scope, tokens: list[bytes]) -> bool:
    if not tokens:
        return True
    headers = dict(scope.get("headers") or [])
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    digest = hashlib.sha256(value.encode()).digest()
    return scheme.lower() == "bearer" and any(secrets.compare_digest(digest, t) for t in tokens)


async def _body(receive: Receive) -> dict[str, Any]:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise HTTPRefusal(400, "BadRequest", f"the body must be a JSON object ({exc.msg})") from None
    if not isinstance(body, dict):
        raise HTTPRefusal(400, "BadRequest", "the body must be a JSON object")
    return body


class ThawMiddleware:
    """The ASGI middleware (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not scope.get("path", "").startswith("/thaw/"):
            await self.app(scope, receive, send)
            return
        try:
            status, payload = 200, await self._serve(scope, receive)
        except HTTPRefusal as exc:
            status, payload = exc.status, {"error": {"type": exc.type_name, "message": str(exc)}}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _serve(self, scope: Scope, receive: Receive) -> Any:
        app = scope.get("app")
        if not _authorized(scope, _tokens(app)):
            raise HTTPRefusal(401, "Unauthorized", "this server requires its API key (Authorization: Bearer KEY)")
        op, method = scope["path"][len("/thaw/"):], scope.get("method")
        if op == "status" and method == "GET":
            result = await _call_core(app, "status", {})
            return {**result, "snapshot_dir": os.environ.get(SNAPSHOT_DIR_ENV),
                    "snapshot_urls": os.environ.get(SNAPSHOT_URLS_ENV)}
        if op not in FIELDS:
            raise HTTPRefusal(404, "NotFound", f"no thaw endpoint {scope['path']!r}; known: /thaw/status, "
                              + ", ".join(f"/thaw/{k}" for k in FIELDS))
        if method != "POST":
            raise HTTPRefusal(405, "MethodNotAllowed", f"/thaw/{op} takes POST")
        body = await _body(receive)
        unknown = set(body) - FIELDS[op]
        if unknown:
            raise HTTPRefusal(400, "BadRequest", f"unknown fields {sorted(unknown)}; /thaw/{op} takes {sorted(FIELDS[op])}")
        body["path"] = resolve_path(body.get("path"), os.environ.get(SNAPSHOT_DIR_ENV),
                                    os.environ.get(SNAPSHOT_URLS_ENV))
        if op != "prepare":
            body["requests"] = False  # the server's in-flight requests belong to its clients
        return await _call_core(app, op, body)


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
    if not isinstance(reply, dict) or "ok" not in reply:
        raise HTTPRefusal(500, "ThawError", f"unexpected reply from the engine core: {reply!r:.200}")
    if reply["ok"]:
        return reply["result"]
    raise HTTPRefusal(STATUS_OF.get(reply["type"], 400 if reply.get("traceback") is None else 500),
                      reply["type"], reply["message"])
