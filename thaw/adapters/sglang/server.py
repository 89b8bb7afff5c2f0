"""thaw's endpoints in a running SGLang HTTP server (`python -m sglang.launch_server`,
`sglang serve`): added by thaw's SGLang plugin when thaw is installed, no extra flag.

- ``GET /thaw/status``: ``"engine": "sglang"``, the identity, the radix tree's size and the
  pool's free and evictable slots (read-only);
- ``POST /thaw/snapshot`` ``{"path", "weights"?, "weights_from"?, "direct"?, "recycle"?}``:
  tree, KV pages and weights (or, with ``weights_from``, a reference to a snapshot holding
  them), with ``direct`` written past the page cache, with ``recycle`` into a retired
  snapshot's file (in the same directory);
- ``POST /thaw/restore`` ``{"path", "weights"?, "trust_unknown_weights"?}``.

The rules are `thaw.adapters.endpoints`' (the same as for `vllm serve`): snapshot and restore are
off unless the operator sets ``THAW_SNAPSHOT_DIR`` (paths resolve inside it) or lists URL
prefixes in ``THAW_SNAPSHOT_URLS``; in-flight requests are never carried (they belong to
the server's HTTP clients). The endpoints sit under SGLang's own API-key check at its
admin-optional level (``--admin-api-key`` where set, else ``--api-key``); a server with
neither refuses snapshot and restore unless the operator sets ``THAW_ALLOW_UNAUTHENTICATED=1``
(logged at start). POSTs must be JSON (415) of at most `thaw.adapters.endpoints.MAX_BODY` bytes (413).
After a restore whose weights failed to load partway, every other request is answered 503
until a restore with weights succeeds (`thaw.adapters.endpoints.ServiceGate`). Each call runs
in the scheduler between batches (`plugin.thaw_call`, through `engine_access.SchedulerRPC`,
off the server's event loop); a refusal or failure is an HTTP error with body
``{"error": {"type", "message"}}``, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here
from fastapi.responses import JSONResponse

from thaw.adapters.endpoints import (HTTPRefusal, ServiceGate, check_body_size, check_post_headers, checked_request,
                            parse_body, refusal_of, require_write_access, status_extras, write_access_notice)

from . import engine_access
from .rpc import PLUGIN_HINT, RPCFailed, call_thaw

FIELDS = {"snapshot": {"path", "weights", "weights_from", "direct", "recycle"}, "restore": {"path", "weights", "trust_unknown_weights"}}
log = logging.getLogger("thaw.sglang")


class SchedulerEndpoints:
    """The endpoints' work, given the scheduler's RPC address (`port_args`)."""

    def __init__(self, port_args: Any, has_key: bool) -> None:
        self.rpc = engine_access.SchedulerRPC(port_args)
        self.has_key = has_key

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        try:
            reply = call_thaw(self.rpc.send, op, args)
        except RPCFailed as exc:
            if exc.plugin_missing:
                raise HTTPRefusal(501, "EngineUnsupported", f"{PLUGIN_HINT} ({exc})") from None
            raise HTTPRefusal(500, "SchedulerError", f"SGLang's RPC thaw_call({op}) failed: {exc}") from None
        return refusal_of(reply, "from SGLang's scheduler")

    async def serve(self, op: str, request: Request) -> Any:
        if op == "status":
            return {**await asyncio.to_thread(self._call, "status", {}), **status_extras()}
        require_write_access(self.has_key)  # every POST changes state
        check_post_headers(request.headers.get("content-type"), request.headers.get("content-length"))
        raw, size = [], 0
        async for chunk in request.stream():  # read no further than the cap
            size += len(chunk)
            check_body_size(size)
            raw.append(chunk)
        args = checked_request(op, parse_body(b"".join(raw)), FIELDS)
        return await asyncio.to_thread(self._call, op, args)


def install_routes(app: Any, server_args: Any, port_args: Any) -> None:
    """Adds the routes to SGLang's FastAPI `app` (see the module docstring)."""
    if not engine_access.single_tokenizer(server_args):
        log.error("thaw: SGLang serves HTTP from several tokenizer workers here (--tokenizer-worker-num > 1); "
                  "thaw's /thaw/ endpoints are not added")
        return
    has_key = bool(getattr(server_args, "api_key", None) or getattr(server_args, "admin_api_key", None))
    level, line = write_access_notice(has_key)
    log.log(level, line)
    endpoints = SchedulerEndpoints(port_args, has_key)

    gate = ServiceGate()

    @app.middleware("http")
    async def refuse_while_inconsistent(request: Request, call_next: Any) -> Any:
        if gate.refusing and not request.url.path.startswith("/thaw/"):
            status, payload = gate.refusal()
            return JSONResponse(payload, status_code=status)
        return await call_next(request)

    def route(op: str) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                status, payload = 200, await endpoints.serve(op, request)
            except HTTPRefusal as exc:
                status, payload = exc.status, exc.body()
            gate.after(op, payload)
            return JSONResponse(payload, status_code=status)

        endpoint.__name__ = f"thaw_{op}"
        return engine_access.admin_endpoint(endpoint)

    app.add_api_route("/thaw/status", route("status"), methods=["GET"])
    for op in FIELDS:
        app.add_api_route(f"/thaw/{op}", route(op), methods=["POST"])
