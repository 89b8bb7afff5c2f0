"""What a server's thaw endpoints accept, engine-neutral: who may write, the directory and
URL restriction, request bodies, and how a thaw error becomes an HTTP error.

Each engine's server module (`thaw.adapters.vllm.server`, `thaw.adapters.sglang.server`)
serves the same endpoints with these rules, so `thaw snapshot/restore/status --url` speaks
to either:

- ``GET /thaw/status``: the engine (``"engine": "vllm"`` or ``"sglang"``), its identity and
  cache state (read-only);
- ``POST /thaw/snapshot``, ``/thaw/restore`` (and on vLLM ``/thaw/prepare``) with a JSON
  body naming ``path``: these change the server's state (files, weights, cache).

Who may call the endpoints that change state (`require_write_access`): a client with the
server's API key; on a server without a key nobody, unless the operator sets
``THAW_ALLOW_UNAUTHENTICATED=1`` (logged at start as unauthenticated). A POST must be
``Content-Type: application/json`` (else 415: a web page cannot send it without a CORS
preflight) and at most `MAX_BODY` bytes (else 413); a body that is not a JSON object of the
known fields, of their types, is a 400.

Endpoints that write or read server-side files are off unless the operator names a
directory in ``THAW_SNAPSHOT_DIR``; paths are taken relative to it and must resolve inside
it, and every file the engine then opens for the request is checked against it as it is
opened (`thaw.core.confine`: the request carries ``confine_to``). URLs (``s3://...``) are
taken only under the prefixes listed in ``THAW_SNAPSHOT_URLS`` (separated by spaces or
commas; none by default), with no ``.`` or ``..`` segment. Errors have the body
``{"error": {"type": "<ThawError type>", "message": "..."}}``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from thaw.core.object_store import is_url

SNAPSHOT_DIR_ENV = "THAW_SNAPSHOT_DIR"
SNAPSHOT_URLS_ENV = "THAW_SNAPSHOT_URLS"
ALLOW_UNAUTHENTICATED_ENV = "THAW_ALLOW_UNAUTHENTICATED"  # "1": state-changing endpoints open without a key
MAX_BODY = 64 * 1024  # bytes of a request body; a thaw request is a few hundred
STATUS_OF = {"IdentityMismatch": 409, "SnapshotIncomplete": 409, "ChecksumError": 422, "FormatError": 422,
             "SchemaError": 422, "EngineUnsupported": 501, "FileNotFoundError": 404, "NotADirectoryError": 404,
             "PermissionError": 403, "IsADirectoryError": 409, "PathOutsideSnapshotDir": 403,
             "WeightsInconsistent": 503}


class HTTPRefusal(Exception):
    """A request the endpoint answers with `status` and the error body of `type_name`."""

    def __init__(self, status: int, type_name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type_name = status, type_name

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type_name, "message": str(self)}}


def unauthenticated_writes_allowed(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the operator opted in to state-changing endpoints without an API key."""
    return environ.get(ALLOW_UNAUTHENTICATED_ENV) == "1"


def write_access_notice(has_key: bool, environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(logging level, line) a server logs at start about its state-changing endpoints."""
    import logging

    if has_key:
        return logging.INFO, "thaw: /thaw/ endpoints that change state require the server's API key"
    if unauthenticated_writes_allowed(environ):
        return logging.WARNING, (f"thaw: {ALLOW_UNAUTHENTICATED_ENV}=1 and no API key: /thaw/ endpoints that "
                                 "change state (snapshot, restore, prepare) are UNAUTHENTICATED; anyone who "
                                 "reaches this port can replace the weights it serves")
    return logging.WARNING, ("thaw: this server has no API key: /thaw/ endpoints that change state are refused "
                             f"(start it with an API key, or set {ALLOW_UNAUTHENTICATED_ENV}=1 to accept them "
                             "unauthenticated)")


def require_write_access(has_key: bool, environ: Mapping[str, str] = os.environ) -> None:
    """Refuses a state-changing request on a server without an API key, unless the operator
    opted in (a server with a key has already checked it)."""
    if not has_key and not unauthenticated_writes_allowed(environ):
        raise HTTPRefusal(403, "KeyRequired",
                          "this server has no API key, so thaw's endpoints that change state are off: start it "
                          f"with an API key (and send it as Authorization: Bearer KEY), or set "
                          f"{ALLOW_UNAUTHENTICATED_ENV}=1 to accept them unauthenticated")


def check_post_headers(content_type: Optional[str], content_length: Optional[str]) -> None:
    """415 unless the body is declared JSON; 413 when its declared length is over `MAX_BODY`."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise HTTPRefusal(415, "UnsupportedMediaType",
                          f"thaw's endpoints take Content-Type: application/json, not {content_type!r}")
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise HTTPRefusal(400, "BadRequest", f"Content-Length {content_length!r} is not a number") from None
        check_body_size(declared)


def check_body_size(size: int) -> None:
    if size > MAX_BODY:
        raise HTTPRefusal(413, "BodyTooLarge", f"a thaw request body is at most {MAX_BODY} bytes")


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
    if isinstance(requested, str) and "\x00" in requested:
        raise HTTPRefusal(400, "BadRequest", "a path must not contain a NUL byte")
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
    if target == base:
        raise HTTPRefusal(400, "BadRequest", f"{requested!r} is the snapshot directory itself; name a "
                          "snapshot inside it")
    return target


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (empty: `{}`)."""
    check_body_size(len(raw))
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, RecursionError) as exc:  # malformed, not UTF-8, or nested past Python's limit
        raise HTTPRefusal(400, "BadRequest", f"the body must be a JSON object ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise HTTPRefusal(400, "BadRequest", "the body must be a JSON object")
    return body


FLAGS = {"weights", "strict", "direct", "trust_unknown_weights"}  # fields that take true or false
TEXTS = {"weights_format"}  # fields that take a string (besides the paths below)
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
    texts = sorted(k for k in TEXTS & set(body) if not isinstance(body[k], str))
    if texts:
        raise HTTPRefusal(400, "BadRequest", f"fields {texts} must be strings")
    out = dict(body)
    root = environ.get(SNAPSHOT_DIR_ENV)
    out["path"] = resolve_path(body.get("path"), root, environ.get(SNAPSHOT_URLS_ENV))
    for name, why in LOCAL_FILE_FIELDS.items():
        if body.get(name) is not None:
            if not isinstance(body[name], str) or is_url(body[name]):
                raise HTTPRefusal(400, "BadRequest", f"'{name}' must name a snapshot file under the snapshot "
                                  f"directory ({why})")
            out[name] = resolve_path(body[name], root)
    if op == "snapshot" and not is_url(out["path"]):
        folder = os.path.dirname(out["path"])
        if not os.path.isdir(folder):
            missing = os.path.relpath(folder, os.path.realpath(root))
            raise HTTPRefusal(404, "DirectoryNotFound", f"no folder {missing!r} under the snapshot directory to write "
                              "into; create it first")
    if op in ("snapshot", "restore"):
        out["requests"] = False
    if root is not None:
        out["confine_to"] = os.path.realpath(root)  # every file the engine opens for it (`thaw.core.confine`)
    return out


class ServiceGate:
    """Whether a server answers its engine's own requests: not after a restore answered
    ``WeightsInconsistent`` (the weights failed to load partway), until a restore succeeds.
    `after(op, payload)` is told each thaw endpoint's outcome; while `refusing`, the server
    answers other requests with `refusal()` (503)."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None

    @property
    def refusing(self) -> bool:
        return self.reason is not None

    def after(self, op: str, payload: Any) -> None:
        if op != "restore" or not isinstance(payload, dict):
            return
        error = payload.get("error")
        if isinstance(error, dict) and error.get("type") == "WeightsInconsistent":
            self.reason = str(error.get("message"))
        elif error is None and payload.get("weights_restored"):
            self.reason = None

    def refusal(self) -> tuple[int, dict[str, Any]]:
        return 503, {"error": {"type": "WeightsInconsistent", "message": f"{self.reason}; thaw refuses "
                               "this server's requests until a restore with weights succeeds"}}


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
