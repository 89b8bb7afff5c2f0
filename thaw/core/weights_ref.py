"""Weights referenced from another snapshot file instead of copied into this one.

A session's snapshot then costs its KV, prefix and requests only: the weights stay in a
snapshot taken once (the trunk's), and every restore reads them from there at the same
speed. The referencing file's meta holds

    "weights_from": {"path": "...", "weights_digest": "<sha256 hex>", "weights_format": "..."}

and no weight sections. Contracts (each refusal names the two files):
- the target is a local snapshot file that holds the weights itself (no chains, no URLs);
- its `weights_format` and `identity.weights_digest` equal the entry's, and the entry's
  digest equals the referencing file's `identity.weights_digest`: checked when the
  reference is written and again when it is loaded (the target may have been replaced);
- `path` is stored relative to the referencing file's directory when the target lies
  under it (so a directory of snapshots can move as one), else absolute.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from .errors import IdentityMismatch, SchemaError, ThawError
from .head import read_meta
from .urls import absolute, is_url

REF_KEY = "weights_from"
_FIELDS = ("path", "weights_digest", "weights_format")


def stored_path(target: str | os.PathLike, referencing: str | os.PathLike) -> str:
    """How `target` is written into the snapshot at `referencing` (see the module docstring)."""
    target_abs = os.path.abspath(target)
    base = os.path.dirname(os.path.abspath(referencing))
    if os.path.commonpath([base, target_abs]) == base:
        return os.path.relpath(target_abs, base)
    return target_abs


def resolve(entry_path: str, referencing: str | os.PathLike) -> str:
    """The target's path: `entry_path` as stored, relative to the referencing file's directory."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(referencing)), entry_path))


def read_entry(meta: dict[str, Any]) -> Optional[dict[str, str]]:
    """The meta's ``weights_from`` entry, its fields checked; None when there is none."""
    entry = meta.get(REF_KEY)
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) != set(_FIELDS) or \
            not all(isinstance(entry[k], str) and entry[k] for k in _FIELDS):
        raise SchemaError(f"meta: {REF_KEY!r} must be an object of the non-empty strings {list(_FIELDS)}, "
                          f"found {entry!r:.200}")
    return dict(entry)


def check_target(target: str | os.PathLike, weights_digest: str, weights_format: str,
                 referencing: str | os.PathLike) -> None:
    """Refuses a reference from `referencing` to `target` that would not give exactly the
    weights of `weights_digest` in `weights_format`; reads the target's header only."""
    if is_url(target) or is_url(referencing):
        raise ThawError(f"weights referenced between snapshots are local files only: {referencing} -> {target}")
    if not weights_digest:
        raise SchemaError(f"{referencing}: a snapshot that references its weights must name their digest "
                          "(identity.weights_digest is empty)")
    if os.path.isdir(target):
        raise ThawError(f"{target} is a directory: reference the snapshot file that holds the weights "
                        "(of a tensor-parallel set, rank 0's file)")
    meta = read_meta(target)  # FileNotFoundError names the missing path
    if read_entry(meta) is not None:
        raise ThawError(f"{target} references its own weights elsewhere; {referencing} must reference "
                        "the file that holds them")
    if not meta.get("weights"):
        raise ThawError(f"{target} holds no weights for {referencing} to reference")
    fmt = meta.get("weights_format", "checkpoint")
    if fmt != weights_format:
        raise IdentityMismatch(f"weights_format of {target}", fmt, weights_format)
    digest = (meta.get("identity") or {}).get("weights_digest")
    if digest != weights_digest:
        raise IdentityMismatch(f"weights_digest of {target}", digest, weights_digest)


def reference_for_snapshot(weights_from: str | os.PathLike | None, path: str | os.PathLike, *, weights: bool,
                           weights_digest: Callable[[], str], weights_format: str) -> str | None:
    """What an engine's snapshot to `path` references its weights from: `weights_from` as an
    absolute path, once it is shown to hold the engine's weights (`weights_digest()`, asked
    only then: "" when unknown; in `weights_format`: `check_target`); None without it.
    Refuses `weights=False` beside it, and weights the engine does not know."""
    if weights_from is None:
        return None
    if not weights:
        raise ThawError("weights=False leaves the weights out; weights_from references them: pass one")
    digest = weights_digest()
    if not digest:
        raise ThawError("the engine runs dummy weights and was not restored: its weights are unknown, so "
                        f"they cannot be shown to equal those of {weights_from}")
    ref = absolute(weights_from)
    check_target(ref, digest, weights_format, absolute(path))
    return ref


def entry_for(target: str | os.PathLike, referencing: str | os.PathLike, weights_digest: str,
              weights_format: str) -> dict[str, str]:
    """The checked ``weights_from`` entry of a snapshot about to be written at `referencing`."""
    check_target(target, weights_digest, weights_format, referencing)
    return {"path": stored_path(target, referencing), "weights_digest": weights_digest,
            "weights_format": weights_format}


def referenced_file(path: str | os.PathLike) -> Optional[str]:
    """The file whose weights the snapshot at `path` references (header read only), or None.
    For a caller that must vet every file a restore will read (a server's endpoint)."""
    entry = read_entry(read_meta(path))
    return None if entry is None else resolve(entry["path"], path)
