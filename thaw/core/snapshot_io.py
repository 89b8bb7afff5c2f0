"""StateSnapshot <-> snapshot file: which sections hold what, and the JSON metadata.

Loading needs no torch (``thaw inspect`` reads and checks a file without it); tensors are
made only when their data is asked for, and saving takes torch tensors.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

import numpy as np

from . import format as fmt
from . import weights_ref
from .container import Container, write_container
from .object_store import open_container
from .dtypes import check_dtype_name, dtype_name
from .errors import SchemaError, ThawError
from .kv_layout import KVLayout
from .movers import movers
from .prefix import PrefixNode, PrefixTree
from .schema import CHECKPOINT_WEIGHTS, Identity, PagedKV, RequestState, StateSnapshot
from .tensor_data import TensorData

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1


def weights_digest(weights: dict[str, TensorData]) -> str:
    """sha256 over (name, dtype, shape, CRC32C of bytes) of every weight, by name."""
    crc = movers().crc32c
    return digest_of((name, w.dtype, w.shape, crc(_bytes(w.raw_bytes_view()))) for name, w in weights.items())


def digest_of(entries: Iterable[tuple[str, "torch.dtype | str", Sequence[int], int]]) -> str:
    """The weights digest from (name, dtype, shape, CRC32C of the bytes) of each tensor, in
    any order: for engines that compute the CRCs where the tensors are (e.g. on a GPU)."""
    h = hashlib.sha256()
    for name, dtype, shape, crc in sorted(entries, key=lambda e: e[0]):
        h.update(f"{name}|{dtype_name(dtype)}|{list(shape)}|{crc:08x};".encode())
    return h.hexdigest()


def _bytes(t: "torch.Tensor") -> "torch.Tensor":
    import torch

    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def _tensor_entry(name: str, section: str, data: TensorData) -> dict[str, Any]:
    return {"name": name, "section": section, "dtype": dtype_name(data.dtype), "shape": list(data.shape)}


def _prefix_arrays(tree: PrefixTree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nodes = np.empty((len(tree.nodes), 3), dtype=np.int64)
    tokens: list[int] = []
    pages: list[int] = []
    for i, n in enumerate(tree.nodes):
        nodes[i] = n.parent, len(tokens), len(n.tokens)
        tokens.extend(n.tokens)
        pages.extend(n.pages)
    return nodes, np.array(tokens, dtype=np.int64), np.array(pages, dtype=np.int64)


def save(snapshot: StateSnapshot, path: str | os.PathLike, *, chunk_size: int = fmt.DEFAULT_CHUNK,
         timings: Optional[dict[str, float]] = None, direct: bool = False,
         recycle: Optional[str | os.PathLike] = None) -> None:
    """Validates `snapshot` and writes it atomically to `path` (one file, or an object at a
    URL: written locally, then uploaded, see `object_store`). With `snapshot.weights_from`
    set, the weights are referenced from that file instead of copied (`weights_ref`). With
    `timings`, records the seconds of each phase of a local write (``write``, ``flush``:
    see `write_container`). `direct`: a local file's payloads are written past the page
    cache (`write_container`). `recycle`: a retired snapshot in the same directory whose
    page-cache pages the new file overwrites (`write_container`)."""
    from .object_store import is_url, save_to_url

    if is_url(path) and recycle is not None:
        raise ThawError(f"a recycled file is a local file's page cache: {path} is written locally and uploaded")
    if is_url(path):
        snapshot.validate()  # before anything is written or sent
        if snapshot.weights_from:
            raise ThawError(f"weights referenced between snapshots are local files only: {path} cannot "
                            f"reference {snapshot.weights_from}; save the weights into it")
        save_to_url(lambda local: save(snapshot, local, chunk_size=chunk_size, direct=direct), path)
        return
    snapshot.validate()
    if snapshot.weights and not snapshot.identity.weights_digest and not snapshot.weights_from:
        if any(w.in_memory and w.tensor().device.type != "cpu" for w in snapshot.weights.values()):
            raise SchemaError("weights held in device memory must come with their digest "
                              "(identity.weights_digest, computed where they are)")
        t0 = time.perf_counter()
        snapshot.identity.weights_digest = weights_digest(snapshot.weights)
        if timings is not None:
            timings["digest"] = time.perf_counter() - t0
    payloads: list[tuple[str, Any]] = []
    meta: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "identity": snapshot.identity.to_json(),
        "weights": [],
        "weights_format": snapshot.weights_format,
        "kv": None,
        "prefix": None,
        "requests": [r.to_json() for r in snapshot.requests],
        "extras": snapshot.extras,
        "extra_tensors": [],
    }
    if snapshot.weights_from:  # referenced, not copied: checked against the target first
        meta[weights_ref.REF_KEY] = weights_ref.entry_for(snapshot.weights_from, path, snapshot.identity.weights_digest,
                                                          snapshot.weights_format)
    for name, data in ({} if snapshot.weights_from else snapshot.weights).items():
        section = f"weights/{name}"
        meta["weights"].append(_tensor_entry(name, section, data))
        payloads.append((section, _bytes(data.raw_bytes_view())))
    if snapshot.kv is not None:
        layers = []
        for i, layer in enumerate(snapshot.kv.layers):
            layers.append(f"kv/layer/{i}")
            payloads.append((layers[-1], _bytes(layer.raw_bytes_view())))
        meta["kv"] = {"layout": snapshot.kv.layout.to_json(), "num_pages": snapshot.kv.num_pages,
                      "layers": layers}
    if snapshot.prefix is not None:
        nodes, tokens, pages = _prefix_arrays(snapshot.prefix)
        meta["prefix"] = {
            "page_size": snapshot.prefix.page_size,
            "num_nodes": len(snapshot.prefix.nodes),
            "extra_keys": {str(i): n.extra_key for i, n in enumerate(snapshot.prefix.nodes)
                           if n.extra_key is not None},
        }
        payloads += [("prefix/nodes", nodes), ("prefix/tokens", tokens), ("prefix/pages", pages)]
    for name, data in snapshot.extra_tensors.items():
        section = f"extra/{name}"
        meta["extra_tensors"].append(_tensor_entry(name, section, data))
        payloads.append((section, _bytes(data.raw_bytes_view())))
    write_container(path, meta, payloads, chunk_size=chunk_size, timings=timings, direct=direct, recycle=recycle)


def _field(meta: dict[str, Any], key: str, kind: type, where: str = "meta") -> Any:
    value = meta.get(key)
    if not isinstance(value, kind):
        raise SchemaError(f"{where}: field {key!r} must be {kind.__name__}, found {type(value).__name__}")
    return value


def _file_tensor(c: Container, entry: Any, where: str) -> tuple[str, TensorData]:
    if not isinstance(entry, dict):
        raise SchemaError(f"{where}: entry must be an object")
    name = _field(entry, "name", str, where)
    shape = _field(entry, "shape", list, where)
    if not all(type(s) is int and s >= 0 for s in shape):
        raise SchemaError(f"{where} {name!r}: shape {shape!r} must list non-negative integers")
    data = TensorData(check_dtype_name(entry.get("dtype")), tuple(shape), container=c,
                      section=_field(entry, "section", str, where))
    sec = c.section(data._section)
    if data.nbytes != sec.length:
        raise SchemaError(f"{where} {name!r}: {data.nbytes} bytes by dtype/shape, section holds {sec.length}")
    return name, data


def _read_int64(c: Container, section: str, count: int) -> np.ndarray:
    sec = c.section(section)
    if sec.length != count * 8:
        raise SchemaError(f"section {section!r}: {sec.length} bytes, expected {count} int64 values")
    out = np.empty(count, dtype="<i8")
    c.read_into(section, out.view(np.uint8))
    return out


def _load_prefix(c: Container, meta: dict[str, Any]) -> PrefixTree:
    n = _field(meta, "num_nodes", int, "prefix")
    nodes = _read_int64(c, "prefix/nodes", 3 * n).reshape(n, 3).tolist()
    total_tokens = sum(max(0, row[2]) for row in nodes)
    tokens = _read_int64(c, "prefix/tokens", total_tokens).tolist()
    page_size = _field(meta, "page_size", int, "prefix")
    if page_size <= 0:
        raise SchemaError(f"prefix: page_size must be positive, found {page_size}")
    pages = _read_int64(c, "prefix/pages", total_tokens // page_size).tolist()
    keys = _field(meta, "extra_keys", dict, "prefix")
    tree = PrefixTree(page_size)
    for i, (parent, start, count) in enumerate(nodes):
        if count < 0 or start < 0 or start + count > len(tokens) or start % page_size:
            raise SchemaError(f"prefix node {i}: token range [{start}, {start + count}) is invalid")
        tree.nodes.append(PrefixNode(parent, tokens[start:start + count],
                                     pages[start // page_size:(start + count) // page_size],
                                     keys.get(str(i))))
    return tree


def _check_weights_digest(c: Container, snap: StateSnapshot) -> None:
    """The identity's weights digest must be the digest of the weights the file holds (from
    the recorded CRCs, which every read of the weights checks): a restore that trusts the
    digest to pair KV with weights must get the weights it names."""
    if not snap.weights:
        return
    combine = movers().crc32c_combine
    actual = digest_of((name, w.dtype_name, w.shape, c.section(w._section).payload_crc32c(combine))
                       for name, w in snap.weights.items())
    claimed = snap.identity.weights_digest
    if claimed != actual:
        raise SchemaError(f"identity.weights_digest {claimed or '(empty)'!r} is not the digest of the "
                          f"{len(snap.weights)} weights this file holds ({actual!r})")


def load(path: str | os.PathLike, *, verify: bool = True,
         progress: Optional[Callable[[int, int], None]] = None) -> StateSnapshot:
    """Opens a snapshot. With `verify`, every byte's CRC32C is checked before returning.

    Tensor payloads stay in the file and are read (and checked again) on demand, through
    ``TensorData.tensor()`` or ``TensorData.read_into(buffer)``.
    """
    c = open_container(path)
    if verify:
        c.verify(progress=progress)
    meta = c.meta
    if meta.get("schema") != SCHEMA_VERSION:
        raise SchemaError(f"meta: schema {meta.get('schema')!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        snap = StateSnapshot(identity=Identity.from_json(meta.get("identity")),
                             weights_format=meta.get("weights_format", CHECKPOINT_WEIGHTS))
        owners: dict[str, str] = {}  # section -> what uses it: each section means one thing

        def claim(section: str, user: str) -> None:
            if section in owners:
                raise SchemaError(f"{user}: section {section!r} is already used by {owners[section]}")
            owners[section] = user

        for group, into in (("weights", snap.weights), ("extra_tensors", snap.extra_tensors)):
            for entry in _field(meta, group, list):
                name, data = _file_tensor(c, entry, group)
                if name in into:
                    raise SchemaError(f"{group}: the name {name!r} appears twice")
                claim(data._section, f"{group} {name!r}")
                into[name] = data
        kv = meta.get("kv")
        if kv is not None:
            layout = KVLayout.from_json(_field(kv, "layout", dict, "kv"))
            num_pages = _field(kv, "num_pages", int, "kv")
            layers = []
            for i, section in enumerate(_field(kv, "layers", list, "kv")):
                if isinstance(section, str):
                    claim(section, f"kv layer {i}")
                layers.append(_file_tensor(c, {"name": f"layer {i}", "section": section,
                                               "dtype": layout.dtype,
                                               "shape": [num_pages, layout.page_elems]}, "kv")[1])
            snap.kv = PagedKV(layout, layers)
        if meta.get("prefix") is not None:
            for section in ("prefix/nodes", "prefix/tokens", "prefix/pages"):
                claim(section, "the prefix tree")
            snap.prefix = _load_prefix(c, _field(meta, "prefix", dict))
        snap.requests = [RequestState.from_json(r) for r in _field(meta, "requests", list)]
        snap.extras = _field(meta, "extras", dict)
        snap.validate()
        _check_weights_digest(c, snap)
        entry = weights_ref.read_entry(meta)
    except ThawError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SchemaError(f"meta: malformed snapshot metadata ({type(exc).__name__}: {exc})") from None
    snap.source = c
    if entry is not None:
        _take_referenced_weights(snap, entry, str(path), verify=verify)
    return snap


def _take_referenced_weights(snap: StateSnapshot, entry: dict[str, str], path: str, *, verify: bool) -> None:
    """Gives `snap` (loaded from `path`) the weights of the snapshot its entry names,
    refusing one whose weights are not the digest both files claim."""
    if snap.weights:
        raise SchemaError(f"{path}: holds weights and also references {entry['path']!r} for them")
    if entry["weights_digest"] != snap.identity.weights_digest:
        raise SchemaError(f"{path}: references weights of digest {entry['weights_digest']!r} but its "
                          f"identity names {snap.identity.weights_digest!r}")
    if entry["weights_format"] != snap.weights_format:
        raise SchemaError(f"{path}: references weights in format {entry['weights_format']!r} but "
                          f"declares {snap.weights_format!r}")
    target = weights_ref.resolve(entry["path"], path)
    try:
        weights_ref.check_target(target, entry["weights_digest"], entry["weights_format"], path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, f"snapshot {path} takes its weights from {target}, which is missing",
                                target) from None
    held = load(target, verify=verify)  # its own digest check: the weights are what it claims
    snap.weights, snap.weights_from = held.weights, target
