"""Where each K and V element of a KV page sits, and conversion between layouts.

A page holds ``page_size`` tokens of one layer. Its elements are stored as one flat run of
``2 * page_size * num_kv_heads * head_dim`` elements; for K and for V a :class:`KVPlane`
gives the element offset of (token t, head h, dim d) within the page as

    offset + (t // tg) * token_group_stride + (t % tg) * token_stride + h * head_stride
           + (d // dg) * dim_group_stride + (d % dg) * dim_stride

where ``tg = token_group`` and ``dg = dim_group``; a group of 0 means "no grouping" (the
whole axis is one group). Without grouping this is an affine map: vLLM's CPU 'vec' blocks
(K transposed inside each head, V row-major), token-major NHD pages such as SGLang's pool
rows gathered page by page, head-major HND pages. Grouping expresses tiled layouts such as
vLLM's CPU AMX blocks, where K is packed in pairs of dims for 16-token groups and V in
pairs of tokens for 16-dim groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .dtypes import ITEMSIZE, check_dtype_name, dtype_from_name
from .errors import SchemaError

if TYPE_CHECKING:
    import numpy as np
    import torch

MAX_PAGE_ELEMS = 1 << 24
"""Largest page a layout may describe (elements); far above any engine's page, small
enough that checking a layout allocates at most a few hundred MiB."""

@dataclass(frozen=True)
class KVPlane:
    """Element offsets of one of K or V inside a page (see the module docstring)."""

    offset: int
    token_stride: int
    head_stride: int
    dim_stride: int
    token_group: int = 0
    token_group_stride: int = 0
    dim_group: int = 0
    dim_group_stride: int = 0

    def groups(self, page_size: int, head_dim: int) -> tuple[int, int]:
        """(tokens per group, dims per group), 0 read as the whole axis."""
        return self.token_group or page_size, self.dim_group or head_dim


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
    def torch_dtype(self) -> "torch.dtype":
        return dtype_from_name(self.dtype)

    @property
    def page_bytes(self) -> int:
        return self.page_elems * ITEMSIZE[check_dtype_name(self.dtype)]

    def _element_offsets(self, p: KVPlane) -> np.ndarray:
        """Offset within a page of every (token, head, dim) element of plane `p`."""
        import numpy as np

        tg, dg = p.groups(self.page_size, self.head_dim)
        t = np.arange(self.page_size, dtype=np.int64).reshape(-1, 1, 1)
        h = np.arange(self.num_kv_heads, dtype=np.int64).reshape(1, -1, 1)
        d = np.arange(self.head_dim, dtype=np.int64).reshape(1, 1, -1)
        return (p.offset + (t // tg) * p.token_group_stride + (t % tg) * p.token_stride + h * p.head_stride
                + (d // dg) * p.dim_group_stride + (d % dg) * p.dim_stride)

    def validate(self) -> None:
        """Checks field ranges, and that K and V together cover every element of a page
        exactly once. Allocates at most a few index tensors of one page."""
        for field in ("page_size", "num_kv_heads", "head_dim"):
            value = getattr(self, field)
            if type(value) is not int or value <= 0:
                raise SchemaError(f"kv layout {self.name!r}: {field} must be a positive integer, found {value!r}")
        check_dtype_name(self.dtype)
        if self.page_elems > MAX_PAGE_ELEMS:
            raise SchemaError(f"kv layout {self.name!r}: a page of {self.page_elems} elements is larger "
                              f"than the {MAX_PAGE_ELEMS} thaw accepts")
        for which, plane in (("k", self.k), ("v", self.v)):
            for field in KVPlane.__dataclass_fields__:
                value = getattr(plane, field)
                if type(value) is not int:
                    raise SchemaError(f"kv layout {self.name!r}: {which}.{field} must be an integer, found {value!r}")
                if not 0 <= value <= MAX_PAGE_ELEMS:  # also keeps the offset arithmetic below exact
                    raise SchemaError(f"kv layout {self.name!r}: {which}.{field} = {value} is outside "
                                      f"[0, {MAX_PAGE_ELEMS}]")
            for group, axis, size in (("token_group", "page_size", self.page_size),
                                      ("dim_group", "head_dim", self.head_dim)):
                g = getattr(plane, group)
                if g and size % g:
                    raise SchemaError(f"kv layout {self.name!r}: {which}.{group} {g} does not divide "
                                      f"{axis} {size}")
        import numpy as np

        seen = np.concatenate([self._element_offsets(self.k).reshape(-1),
                               self._element_offsets(self.v).reshape(-1)])
        if seen.min() < 0 or seen.max() >= self.page_elems:
            raise SchemaError(f"kv layout {self.name!r}: planes fall outside the page of {self.page_elems} elements")
        seen.sort()
        if not np.array_equal(seen, np.arange(self.page_elems, dtype=np.int64)):
            raise SchemaError(f"kv layout {self.name!r}: K and V planes do not cover each page element exactly once")

    def _check_pages(self, pages: torch.Tensor) -> None:
        if pages.dim() != 2 or pages.shape[1] != self.page_elems or not pages.is_contiguous():
            raise SchemaError(
                f"kv layout {self.name!r}: pages must be a contiguous [num_pages, {self.page_elems}] "
                f"tensor, found {tuple(pages.shape)}"
            )

    def _views(self, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of `pages` as 6-D views [N, P/tg, tg, H, D/dg, dg] (no copy)."""
        n = pages.shape[0]

        def view(p: KVPlane) -> torch.Tensor:
            tg, dg = p.groups(self.page_size, self.head_dim)
            shape = (n, self.page_size // tg, tg, self.num_kv_heads, self.head_dim // dg, dg)
            strides = (self.page_elems, p.token_group_stride, p.token_stride, p.head_stride,
                       p.dim_group_stride, p.dim_stride)
            return pages.as_strided(shape, strides, pages.storage_offset() + p.offset)

        return view(self.k), view(self.v)

    def planes(self, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of `pages` ([num_pages, page_elems], contiguous) as [N, P, H, D].

        Views of `pages` where the layout has no grouping, copies otherwise: write through
        :meth:`write_planes`, never into what this returns."""
        self._check_pages(pages)
        shape = (pages.shape[0], self.page_size, self.num_kv_heads, self.head_dim)
        k, v = self._views(pages)
        return k.reshape(shape), v.reshape(shape)

    def write_planes(self, pages: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores K and V ([N, P, H, D] each) into `pages` ([N, page_elems], contiguous)."""
        self._check_pages(pages)
        dk, dv = self._views(pages)
        dk.copy_(k.reshape(dk.shape))
        dv.copy_(v.reshape(dv.shape))

    def to_json(self) -> dict[str, Any]:
        """Descriptor as stored in a file; planes without grouping omit the group fields, so
        files of layouts that need none read the same as before grouping existed."""
        out = asdict(self)
        for which in ("k", "v"):
            for field in ("token_group", "token_group_stride", "dim_group", "dim_group_stride"):
                if out[which][field] == 0:
                    del out[which][field]
        return out

    @classmethod
    def from_json(cls, obj: Any) -> "KVLayout":
        if not isinstance(obj, dict) or not isinstance(obj.get("k"), dict) or not isinstance(obj.get("v"), dict):
            raise SchemaError("kv layout: malformed descriptor (expected an object with 'k' and 'v' objects)")
        required = ("offset", "token_stride", "head_stride", "dim_stride")
        try:
            planes = {}
            for which in ("k", "v"):
                fields = obj[which]
                unknown = set(fields) - set(KVPlane.__dataclass_fields__)
                if unknown:
                    raise SchemaError(f"kv layout: unknown field(s) {sorted(unknown)} in {which!r}")
                missing = [f for f in required if f not in fields]
                if missing:
                    raise KeyError(f"{which}.{missing[0]}")
                planes[which] = KVPlane(**fields)
            name, dtype = obj["name"], obj["dtype"]
            if not isinstance(name, str) or not isinstance(dtype, str):
                raise SchemaError("kv layout: 'name' and 'dtype' must be strings")
            layout = cls(name=name, page_size=obj["page_size"], num_kv_heads=obj["num_kv_heads"],
                         head_dim=obj["head_dim"], dtype=dtype, k=planes["k"], v=planes["v"])
        except (KeyError, TypeError) as exc:
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


def convert_pages(pages: "torch.Tensor", src: KVLayout, dst: KVLayout) -> "torch.Tensor":
    """Re-lays `pages` ([N, src.page_elems]) out as `dst` pages; exact, element by element."""
    if src == dst:
        return pages
    if not src.same_shape(dst):
        raise SchemaError(
            f"cannot convert kv pages from {src.name!r} to {dst.name!r}: page size, heads, "
            f"head_dim or dtype differ ({src.page_size},{src.num_kv_heads},{src.head_dim},{src.dtype}) "
            f"vs ({dst.page_size},{dst.num_kv_heads},{dst.head_dim},{dst.dtype})"
        )
    out = pages.new_empty((pages.shape[0], dst.page_elems))
    dst.write_planes(out, *src.planes(pages))
    return out
