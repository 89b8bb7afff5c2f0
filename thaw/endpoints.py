"""What a server's thaw endpoints accept, engine-neutral: the opt-in, the directory and URL
restriction, request bodies, and how a thaw error becomes an HTTP error.

Each engine's server module (`thaw.adapters.vllm.server`, `thaw.adapters.sglang.server`)
serves the same endpoints with these rules, so `thaw snapshot/restore/status --url` speaks
to either:

- ``GET /thaw/status``: the engine (``"engine": "vllm"`` or ``"sglang"``), its identity and
  cache state (read-only);
- ``POST /thaw/snapshot`` and ``POST /thaw/restore`` with a JSON body naming ``path``.

Endpoints that write or read server-side files are off unless the operator names a
directory in ``THAW_SNAPSHOT_DIR``; paths are taken relative to it and must resolve inside
it. URLs (``s3://...``) are taken only under the prefixes listed in ``THAW_SNAPSHOT_URLS``
(separated by spaces or commas; none by default), with no ``.`` or ``..`` segment. Errors
have the body ``{"error": {"type": "<ThawError type>", "message": "..."}}``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from thaw.core.errors import ThawError
from thaw.core.object_store import is_url

SNAPSHOT_DIR_ENV = "THAW_SNAPSHOT_DIR"
SNAPSHOT_URLS_ENV = "THAW_SNAPSHOT_URLS"
STATUS_OF = {"IdentityMismatch": 409, "SnapshotIncomplete": 409, "ChecksumError": 422, "FormatError": 422,
             "SchemaError": 422, "EngineUnsupported": 501, "FileNotFoundError": 404, "NotADirectoryError": 404,
             "PermissionError": 403, "IsADirectoryError": 409}


class HTTPRefusal(Exception):
    """A request the endpoint answers with `status` and the error body of `type_name`."""

    def __init__(self, status: int, type_name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type_name = status, type_name

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type_name, "message": str(self)}}


def resolve_url(requested: str, allowed: Optional[str]) -> str:
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


def resolve_path(requested: Any, root: Optional[str], allowed_urls: Optional[str] = None) -> str:
    """`requested` (relative to `root`, or absolute inside it) as a real path inside
    `root`; a URL only under `allowed_urls` (`resolve_url`)."""
    if isinstance(requested, str) and is_url(requested):
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


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (empty: `{}`)."""
    try:
        body = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPRefusal(400, "BadRequest", f"the body must be a JSON object ({exc})") from None
    if not isinstance(body, dict):
        raise HTTPRefusal(400, "BadRequest", "the body must be a JSON object")
    return body


FLAGS = {"weights", "strict", "direct", "trust_unknown_weights"}  # fields that take true or false
# Fields naming a second file the request reads or replaces: inside the directory, never a URL.
LOCAL_FILE_FIELDS = {"weights_from": "weights are referenced between local files only",
                     "recycle": "a retired snapshot whose file the new one reuses, in the same directory"}


def checked_request(op: str, body: dict[str, Any], fields: Mapping[str, set[str]],
                    environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """`body` of POST /thaw/`op` with its path resolved under the operator's directory or
    URL prefixes, and `requests=False` for snapshot and restore (a server's in-flight
    requests belong to its HTTP clients, which a restored engine could not answer)."""
    if op not in fields:
        raise HTTPRefusal(404, "NotFound", f"no thaw endpoint '/thaw/{op}'; known: /thaw/status, "
                          + ", ".join(f"/thaw/{k}" for k in fields))
    unknown = set(body) - fields[op]
    if unknown:
        raise HTTPRefusal(400, "BadRequest", f"unknown fields {sorted(unknown)}; /thaw/{op} takes {sorted(fields[op])}")
    flags = sorted(k for k in FLAGS & set(body) if not isinstance(body[k], bool))
    if flags:
        raise HTTPRefusal(400, "BadRequest", f"fields {flags} must be true or false")
    out = dict(body)
    root = environ.get(SNAPSHOT_DIR_ENV)
    out["path"] = resolve_path(body.get("path"), root, environ.get(SNAPSHOT_URLS_ENV))
    for name, why in LOCAL_FILE_FIELDS.items():
        if body.get(name) is not None:
            if not isinstance(body[name], str) or is_url(body[name]):
                raise HTTPRefusal(400, "BadRequest", f"'{name}' must name a snapshot file under the snapshot "
                                  f"directory ({why})")
            out[name] = resolve_path(body[name], root)
    if op == "restore" and not is_url(out["path"]):
        check_reference_inside(out["path"], root)
    if op in ("snapshot", "restore"):
        out["requests"] = False
    return out


def check_reference_inside(path: str, root: Optional[str]) -> None:
    """Refuses a restore of the snapshot at `path` (inside `root`) whose weights are
    referenced from a file outside `root`: the endpoint would read where the operator did
    not allow. A file that cannot be opened is left to the engine's restore to report."""
    from thaw.core.weights_ref import referenced_file

    if root is None or not os.path.isfile(path):
        return
    try:
        target = referenced_file(path)
    except ThawError as exc:
        raise HTTPRefusal(STATUS_OF.get(type(exc).__name__, 400), type(exc).__name__, str(exc)) from None
    if target is None:
        return
    base, real = os.path.realpath(root), os.path.realpath(target)
    if os.path.commonpath([base, real]) != base:
        raise HTTPRefusal(403, "PathOutsideSnapshotDir",
                          f"{os.path.relpath(path, base)!r} references its weights from {target!r}, outside "
                          f"the snapshot directory {base}")


def status_extras(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What /thaw/status adds to the engine's status: where snapshots may go."""
    return {"snapshot_dir": environ.get(SNAPSHOT_DIR_ENV), "snapshot_urls": environ.get(SNAPSHOT_URLS_ENV)}


def refusal_of(reply: Any, where: str) -> Any:
    """The result of an engine's ``{"ok", "result"}`` reply, or the `HTTPRefusal` its
    ``{"ok": False, "type", "message"}`` stands for (a thaw error or a bad argument: 4xx;
    anything that came with a traceback: 500)."""
    if not isinstance(reply, dict) or "ok" not in reply:
        raise HTTPRefusal(500, "ThawError", f"unexpected reply {where}: {reply!r:.200}")
    if reply["ok"]:
        return reply["result"]
    raise HTTPRefusal(STATUS_OF.get(reply["type"], 400 if reply.get("traceback") is None else 500),
                      reply["type"], reply["message"])
