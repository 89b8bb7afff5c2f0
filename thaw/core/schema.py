"""The engine-neutral StateSnapshot: identity, weights, paged KV, prefix index, requests."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional

from .errors import IdentityMismatch, SchemaError
from .format import MAX_DEPTH
from .kv_layout import KVLayout
from .prefix import PrefixTree
from .tensor_data import TensorData

if TYPE_CHECKING:
    import torch


CHECKPOINT_WEIGHTS = "checkpoint"
WEIGHTS_FORMAT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


# Identity fields a restore compares before touching anything (`thaw.core.restore`).
MATCH_FIELDS = ("model_architecture", "model_config_digest", "dtype", "num_layers",
                "num_kv_heads", "head_dim", "page_size", "tp_size", "extra.quantization")


def check_weights_format(snap: "StateSnapshot", accepted: tuple[str, ...]) -> None:
    """Raises IdentityMismatch, before anything changes, when an engine that accepts only
    the `accepted` weight formats is asked to load `snap`'s weights."""
    if snap.weights and snap.weights_format not in accepted:
        raise IdentityMismatch("weights_format", snap.weights_format, " or ".join(accepted))


def check_kv_weights(snapshot_digest: str, engine_digest: str, *, trust_unknown: bool = False) -> None:
    """For a restore that keeps the engine's weights: the KV was computed with the
    snapshot's weights, so both digests must be known and equal. An empty digest (dummy
    weights, a hub id, a checkpoint thaw cannot read) is unknown, never a match; only
    `trust_unknown=True` (the caller vouches the weights are the same) lets it pass."""
    if snapshot_digest and engine_digest and snapshot_digest == engine_digest:
        return
    if trust_unknown and (not snapshot_digest or not engine_digest):
        return
    raise IdentityMismatch("weights_digest", snapshot_digest or "(unknown)",
                           engine_digest or "(unknown: dummy or unreadable weights; pass "
                           "trust_unknown_weights=True to vouch they equal the snapshot's)")


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a model config in canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# Where metadata sits in a file's header, {"meta": {"identity": ..., "extras": ...,
# "requests": [{"sampling": ...}]}}, counted as the header parser counts nesting.
META_FIELD_DEPTH = 2  # identity, extras
REQUEST_FIELD_DEPTH = 4  # a request's fields


def check_plain_json(value: Any, where: str, depth: int) -> None:
    """Refuses (SchemaError, naming the place) what would not read back as written: keys
    that are not strings, numbers that are not finite, strings that are not valid Unicode
    (lone surrogates), types JSON lacks, nesting past the header parser's MAX_DEPTH when
    `value` sits at `depth` in the header."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested deeper than the {MAX_DEPTH} levels a header may use")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"{where}: {value} is not a finite number")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SchemaError(f"{where}: string {value[:40]!r} is not valid Unicode (lone surrogate)") from None
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain_json(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SchemaError(f"{where}: key {key!r} must be a string, found {type(key).__name__}")
            check_plain_json(key, f"{where}: key", depth + 1)
            check_plain_json(item, f"{where}.{key}", depth + 1)
    else:
        raise SchemaError(f"{where}: a {type(value).__name__} is not a JSON value")


@dataclass
class Identity:
    """What a snapshot was taken from. Restores compare these fields before touching anything.

    ``weights_digest`` is filled in by :func:`thaw.save` from the weights' CRC32Cs when the
    snapshot carries weights; it detects accidental mismatches, it is not a security hash.
    """

    model_architecture: str = "unknown"
    model_config_digest: str = ""
    weights_digest: str = ""
    dtype: str = ""
    num_layers: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    page_size: int = 0
    kv_layout: str = ""
    tokenizer: Optional[str] = None
    engine: str = "none"
    engine_version: str = ""
    tp_rank: int = 0
    tp_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> "Identity":
        if not isinstance(obj, dict):
            raise SchemaError("identity: must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = set(obj) - set(known)
        if unknown:
            raise SchemaError(f"identity: unknown fields {sorted(unknown)}")
        ident = cls(**obj)
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_size", "tp_rank", "tp_size"):
            if type(getattr(ident, name)) is not int or getattr(ident, name) < 0:
                raise SchemaError(f"identity: {name} must be a non-negative integer")
        for name in ("model_architecture", "model_config_digest", "weights_digest", "dtype", "kv_layout",
                     "engine", "engine_version"):
            if not isinstance(getattr(ident, name), str):
                raise SchemaError(f"identity: {name} must be a string, found {type(getattr(ident, name)).__name__}")
        if ident.tokenizer is not None and not isinstance(ident.tokenizer, str):
            raise SchemaError("identity: tokenizer must be a string or null")
        if ident.tp_size < 1 or ident.tp_rank >= ident.tp_size:
            raise SchemaError(f"identity: tp_rank {ident.tp_rank} must be below tp_size {ident.tp_size} (>= 1)")
        if not isinstance(ident.extra, dict):
            raise SchemaError("identity: extra must be a JSON object")
        return ident

    def differences(self, other: "Identity") -> dict[str, list[Any]]:
        """Every field that differs, as [mine, theirs] (for reports, not for refusals)."""
        return {f.name: [getattr(self, f.name), getattr(other, f.name)] for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}

    def field(self, name: str) -> Any:
        """A field by name; ``extra.KEY`` reads `extra` (None where the key is absent)."""
        if name.startswith("extra."):
            return self.extra.get(name[len("extra."):])
        return getattr(self, name)

    def check_matches(self, engine: "Identity", fields_to_check: tuple[str, ...]) -> None:
        """Raises IdentityMismatch on the first listed field (or ``extra.KEY``) that differs."""
        for name in fields_to_check:
            mine, theirs = self.field(name), engine.field(name)
            if mine != theirs:
                raise IdentityMismatch(name, mine, theirs)


@dataclass
class RequestState:
    """An in-flight request. `pages` are snapshot page ids holding its KV, in token order."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    num_computed_tokens: int = 0
    pages: list[int] = field(default_factory=list)
    status: str = "waiting"
    extra: dict[str, Any] = field(default_factory=dict)

    STATUSES = ("waiting", "running", "preempted")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> "RequestState":
        if not isinstance(obj, dict):
            raise SchemaError("request: each entry must be a JSON object")
        try:
            req = cls(**obj)
        except TypeError as exc:
            raise SchemaError(f"request: malformed entry ({exc})") from None
        if not isinstance(req.request_id, str):
            raise SchemaError(f"request: request_id must be a string, found {type(req.request_id).__name__}")
        for name in ("prompt_token_ids", "output_token_ids", "pages"):
            value = getattr(req, name)
            if not isinstance(value, list) or any(type(v) is not int or v < 0 for v in value):
                raise SchemaError(f"request {req.request_id!r}: {name} must be a list of non-negative integers")
        if type(req.num_computed_tokens) is not int:
            raise SchemaError(f"request {req.request_id!r}: num_computed_tokens must be an integer")
        if not isinstance(req.sampling, dict) or not isinstance(req.extra, dict):
            raise SchemaError(f"request {req.request_id!r}: sampling and extra must be JSON objects")
        if req.status not in cls.STATUSES:
            raise SchemaError(f"request {req.request_id!r}: status {req.status!r} not in {cls.STATUSES}")
        total = len(req.prompt_token_ids) + len(req.output_token_ids)
        if not 0 <= req.num_computed_tokens <= total:
            raise SchemaError(
                f"request {req.request_id!r}: num_computed_tokens {req.num_computed_tokens} "
                f"outside [0, {total}]")
        return req


@dataclass
class PagedKV:
    """KV pages of every layer: layer i is a [num_pages, layout.page_elems] tensor."""

    layout: KVLayout
    layers: list[TensorData]

    @property
    def num_pages(self) -> int:
        return self.layers[0].shape[0] if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def validate(self) -> None:
        self.layout.validate()
        for i, layer in enumerate(self.layers):
            expected = (self.num_pages, self.layout.page_elems)
            if layer.shape != expected or layer.dtype_name != self.layout.dtype:
                raise SchemaError(
                    f"kv layer {i}: {layer.dtype_name}{list(layer.shape)}, layout needs "
                    f"{self.layout.dtype}{list(expected)}")


@dataclass
class StateSnapshot:
    """Everything needed to re-create an engine's live state, with no engine types inside."""

    identity: Identity = field(default_factory=Identity)
    weights: dict[str, TensorData] = field(default_factory=dict)
    # How `weights` are named and laid out: CHECKPOINT_WEIGHTS (as in the model's checkpoint
    # files, readable by any engine) or an engine's own form (e.g. "vllm.parameters": the
    # engine's parameters as loaded), which only that engine kind accepts.
    weights_format: str = "checkpoint"
    kv: Optional[PagedKV] = None
    prefix: Optional[PrefixTree] = None
    requests: list[RequestState] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    extra_tensors: dict[str, TensorData] = field(default_factory=dict)
    source: Any = field(default=None, repr=False, compare=False)  # open Container when loaded
    # A snapshot file whose weights `save` references instead of copying (`weights_ref`);
    # set by `load` on a snapshot that references its weights, which then come from there.
    weights_from: Optional[str] = field(default=None, compare=False)

    @property
    def weights_source(self) -> Any:
        """The open container every weight is read from (`source`, or the referenced
        snapshot's); None when any weight is in memory or there are none."""
        containers = {id(d._container): d._container for d in self.weights.values()}
        return next(iter(containers.values())) if len(containers) == 1 and None not in containers.values() else None

    @classmethod
    def from_tensors(cls, weights: dict[str, torch.Tensor],
                     identity: Optional[Identity] = None) -> "StateSnapshot":
        """A weights-only snapshot built from plain tensors (the embedding path)."""
        import torch

        if not isinstance(weights, dict):
            raise SchemaError("from_tensors: weights must be a dict of name -> torch.Tensor")
        data = {}
        for name, t in weights.items():
            if not isinstance(name, str) or not isinstance(t, torch.Tensor):
                raise SchemaError(f"from_tensors: entry {name!r} must map a str to a torch.Tensor")
            data[name] = TensorData.of(t)
        return cls(identity=identity or Identity(), weights=data)

    @classmethod
    def from_kv(cls, layout: KVLayout, layers: list[torch.Tensor], prefix: PrefixTree,
                identity: Optional[Identity] = None,
                requests: Optional[list[RequestState]] = None) -> "StateSnapshot":
        """A KV + prefix snapshot built from plain tensors ([num_pages, page_elems] per layer)."""
        snap = cls(identity=identity or Identity(), kv=PagedKV(layout, [TensorData.of(t) for t in layers]),
                   prefix=prefix, requests=list(requests or []))
        snap.validate()
        return snap

    def validate(self) -> None:
        """Cross-checks the parts against each other; raises SchemaError naming the field."""
        check_plain_json(self.identity.to_json(), "identity", META_FIELD_DEPTH)
        check_plain_json(self.extras, "extras", META_FIELD_DEPTH)
        for req in self.requests:
            check_plain_json(req.request_id, "request id", REQUEST_FIELD_DEPTH)
            check_plain_json(req.sampling, f"request {req.request_id!r}: sampling", REQUEST_FIELD_DEPTH)
            check_plain_json(req.extra, f"request {req.request_id!r}: extra", REQUEST_FIELD_DEPTH)
        if not isinstance(self.weights_format, str) or not WEIGHTS_FORMAT_NAME.fullmatch(self.weights_format):
            raise SchemaError(f"weights_format: {self.weights_format!r} is not a format name "
                              "(lowercase letters, digits, '.', '_' and '-')")
        num_pages = 0
        if self.kv is not None:
            self.kv.validate()
            num_pages = self.kv.num_pages
        if self.prefix is not None:
            if self.kv is not None and self.prefix.page_size != self.kv.layout.page_size:
                raise SchemaError(
                    f"prefix: page_size {self.prefix.page_size} differs from the kv layout's "
                    f"{self.kv.layout.page_size}")
            self.prefix.validate(num_pages)
        if self.kv is not None and self.identity.num_layers and self.identity.num_layers != len(self.kv.layers):
            raise SchemaError(f"identity: num_layers {self.identity.num_layers} but the kv holds "
                              f"{len(self.kv.layers)} layers")
        seen: set[str] = set()
        for req in self.requests:
            if req.request_id in seen:
                raise SchemaError(f"request {req.request_id!r}: the id appears twice")
            seen.add(req.request_id)
            bad = [p for p in req.pages if not 0 <= p < num_pages]
            if bad:
                raise SchemaError(f"request {req.request_id!r}: pages {bad[:5]} outside the {num_pages} pages")
