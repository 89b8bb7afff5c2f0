"""thaw's endpoints in a running SGLang HTTP server (`python -m sglang.launch_server`,
`sglang serve`): added by thaw's SGLang plugin when thaw is installed, no extra flag.

- ``GET /thaw/status``: ``"engine": "sglang"``, the identity, the radix tree's size and the
  pool's free and evictable slots (read-only);
- ``POST /thaw/snapshot`` ``{"path", "weights"?, "weights_from"?, "direct"?, "recycle"?}``:
  tree, KV pages and weights (or, with ``weights_from``, a reference to a snapshot holding
  them), with ``direct`` written past the page cache, with ``recycle`` into a retired
  snapshot's file (in the same directory);
- ``POST /thaw/restore`` ``{"path", "weights"?, "trust_unknown_weights"?}``.

The rules are `thaw.endpoints`' (the same as for `vllm serve`): snapshot and restore are
off unless the operator sets ``THAW_SNAPSHOT_DIR`` (paths resolve inside it) or lists URL
prefixes in ``THAW_SNAPSHOT_URLS``; in-flight requests are never carried (they belong to
the server's HTTP clients). The endpoints sit under SGLang's own API-key check at its
admin-optional level (``--admin-api-key`` where set, else ``--api-key``). Each call runs
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

from thaw.endpoints import HTTPRefusal, checked_request, parse_body, refusal_of, status_extras

from . import engine_access
from .rpc import PLUGIN_HINT, RPCFailed, call_thaw

FIELDS = {"snapshot": {"path", "weights", "weights_from", "direct", "recycle"}, "restore": {"path", "weights", "trust_unknown_weights"}}
log = logging.getLogger("thaw.sglang")


class SchedulerEndpoints:
    """The endpoints' work, given the scheduler's RPC address (`port_args`)."""

    def __init__(self, port_args: Any) -> None:
        self.rpc = engine_access.SchedulerRPC(port_args)

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        try:
            reply = call_thaw(self.rpc.send, op, args)
        except RPCFailed as exc:
            if exc.plugin_missing:
                raise HTTPRefusal(501, "EngineUnsupported", f"{PLUGIN_HINT} ({exc})") from None
            raise HTTPRefusal(500, "SchedulerError", f"SGLang's RPC thaw_call({op}) failed: {exc}") from None
        return refusal_of(reply, "from SGLang's scheduler")

    async def serve(self, op: str, raw_body: bytes) -> Any:
        if op == "status":
            return {**await asyncio.to_thread(self._call, "status", {}), **status_extras()}
        args = checked_request(op, parse_body(raw_body), FIELDS)
        return await asyncio.to_thread(self._call, op, args)


def install_routes(app: Any, server_args: Any, port_args: Any) -> None:
    """Adds the routes to SGLang's FastAPI `app` (see the module docstring)."""
    if not engine_access.single_tokenizer(server_args):
        log.error("thaw: SGLang serves HTTP from several tokenizer workers here (--tokenizer-worker-num > 1); "
                  "thaw's /thaw/ endpoints are not added")
        return
    endpoints = SchedulerEndpoints(port_args)

    def route(op: str) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                return JSONResponse(await endpoints.serve(op, await request.body()))
            except HTTPRefusal as exc:
                return JSONResponse(exc.body(), status_code=exc.status)

        endpoint.__name__ = f"thaw_{op}"
        return engine_access.admin_endpoint(endpoint)

    app.add_api_route("/thaw/status", route("status"), methods=["GET"])
    for op in FIELDS:
        app.add_api_route(f"/thaw/{op}", route(op), methods=["POST"])
