"""Where each K and V element of a KV page sits, and conversion between layouts.

A page holds ``page_size`` tokens of one layer. Its elements are stored as one flat run of
``2 * page_size * num_kv_heads * head_dim`` elements; for K and for V a :class:`KVPlane`
gives the element offset of (token t, head h, dim d) within the page as
``offset + t*token_stride + h*head_stride + d*dim_stride``. This affine map expresses
vLLM's CPU block layout (K transposed inside each head, V row-major), token-major NHD
pages such as SGLang's pool rows gathered page by page, and head-major HND pages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .dtypes import dtype_from_name
from .errors import SchemaError


@dataclass(frozen=True)
class KVPlane:
    offset: int
    token_stride: int
    head_stride: int
    dim_stride: int


@dataclass(frozen=True)
class KVLayout:
    """Element placement of one KV page; `name` says which engine layout it describes."""

    name: str
    page_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    k: KVPlane
    v: KVPlane

    @property
    def page_elems(self) -> int:
        return 2 * self.page_size * self.num_kv_heads * self.head_dim

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def page_bytes(self) -> int:
        return self.page_elems * self.torch_dtype.itemsize

    def validate(self) -> None:
        """Checks that K and V together cover every element of a page exactly once."""
        for field in ("page_size", "num_kv_heads", "head_dim"):
            if getattr(self, field) <= 0:
                raise SchemaError(f"kv layout {self.name!r}: {field} must be positive")
        self.torch_dtype  # unknown dtype raises
        flat = torch.arange(self.page_elems, dtype=torch.int64).reshape(1, -1)
        try:
            k, v = self.planes(flat)
        except RuntimeError as exc:
            raise SchemaError(f"kv layout {self.name!r}: planes fall outside the page ({exc})") from None
        seen = torch.cat([k.reshape(-1), v.reshape(-1)]).sort().values
        if not torch.equal(seen, flat.reshape(-1)):
            raise SchemaError(f"kv layout {self.name!r}: K and V planes do not cover each page element exactly once")

    def planes(self, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views K and V of `pages` ([num_pages, page_elems], contiguous) as [N, P, H, D]."""
        if pages.dim() != 2 or pages.shape[1] != self.page_elems or not pages.is_contiguous():
            raise SchemaError(
                f"kv layout {self.name!r}: pages must be a contiguous [num_pages, {self.page_elems}] "
                f"tensor, found {tuple(pages.shape)}"
            )
        n = pages.shape[0]
        shape = (n, self.page_size, self.num_kv_heads, self.head_dim)

        def view(p: KVPlane) -> torch.Tensor:
            strides = (self.page_elems, p.token_stride, p.head_stride, p.dim_stride)
            return pages.as_strided(shape, strides, pages.storage_offset() + p.offset)

        return view(self.k), view(self.v)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> "KVLayout":
        try:
            layout = cls(
                name=str(obj["name"]),
                page_size=int(obj["page_size"]),
                num_kv_heads=int(obj["num_kv_heads"]),
                head_dim=int(obj["head_dim"]),
                dtype=str(obj["dtype"]),
                k=KVPlane(**{f: int(obj["k"][f]) for f in KVPlane.__dataclass_fields__}),
                v=KVPlane(**{f: int(obj["v"][f]) for f in KVPlane.__dataclass_fields__}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"kv layout: malformed descriptor ({type(exc).__name__}: {exc})") from None
        layout.validate()
        return layout

    def same_shape(self, other: "KVLayout") -> bool:
        return (self.page_size, self.num_kv_heads, self.head_dim, self.dtype) == (
            other.page_size, other.num_kv_heads, other.head_dim, other.dtype)


def nhd_layout(page_size: int, num_kv_heads: int, head_dim: int, dtype: str,
               name: str = "thaw.nhd") -> KVLayout:
    """Token-major pages: all K rows [P, H, D], then all V rows [P, H, D]."""
    plane = page_size * num_kv_heads * head_dim
    return KVLayout(name, page_size, num_kv_heads, head_dim, dtype,
                    KVPlane(0, num_kv_heads * head_dim, head_dim, 1),
                    KVPlane(plane, num_kv_heads * head_dim, head_dim, 1))


def convert_pages(pages: torch.Tensor, src: KVLayout, dst: KVLayout) -> torch.Tensor:
    """Re-lays `pages` ([N, src.page_elems]) out as `dst` pages; exact, element by element."""
    if src == dst:
        return pages
    if not src.same_shape(dst):
        raise SchemaError(
            f"cannot convert kv pages from {src.name!r} to {dst.name!r}: page size, heads, "
            f"head_dim or dtype differ ({src.page_size},{src.num_kv_heads},{src.head_dim},{src.dtype}) "
            f"vs ({dst.page_size},{dst.num_kv_heads},{dst.head_dim},{dst.dtype})"
        )
    out = torch.empty((pages.shape[0], dst.page_elems), dtype=pages.dtype)
    sk, sv = src.planes(pages)
    dk, dv = dst.planes(out)
    dk.copy_(sk)
    dv.copy_(sv)
    return out
