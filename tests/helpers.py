"""Shared test helpers: small snapshots and a forger of files with valid checksums."""

import json
import struct

import crc32c
import torch

from thaw.core import Identity, PrefixTree, RequestState, StateSnapshot, TensorData, nhd_layout
from thaw.core.schema import PagedKV


def small_snapshot(seed: int = 0, pages: int = 5, page_size: int = 4) -> StateSnapshot:
    g = torch.Generator().manual_seed(seed)
    layout = nhd_layout(page_size, 2, 32, "float32")
    tree = PrefixTree(page_size)
    tokens = torch.randint(0, 100, (3 * page_size,), generator=g).tolist()
    tree.add_path(tokens, [0, 1, 2])
    tree.add_path(tokens[:page_size] + [7] * page_size, [0, 3])
    return StateSnapshot(
        identity=Identity(model_architecture="Tiny", dtype="float32", num_layers=2, num_kv_heads=2,
                          head_dim=32, page_size=page_size, kv_layout=layout.name),
        weights={"w": TensorData.of(torch.randn(8, 16, generator=g)),
                 "b": TensorData.of(torch.arange(6, dtype=torch.bfloat16))},
        kv=PagedKV(layout, [TensorData.of(torch.randn(pages, layout.page_elems, generator=g)) for _ in range(2)]),
        prefix=tree,
        requests=[RequestState("r0", tokens + [1], [2, 3], {"temperature": 0.0}, len(tokens), [0, 1, 2], "running")],
        extras={"note": "test"},
    )


def forge(path, header: dict, body: bytes = b"", hlen: int | None = None, version: int = 1) -> None:
    """Writes a file with a valid preamble and header CRC around an arbitrary header."""
    text = json.dumps(header).encode()
    if hlen is None:
        hlen = -(-(32 + len(text)) // 4096) * 4096 - 32
    raw = text + b" " * max(0, hlen - len(text))
    head = struct.pack("<8sIIQI", b"THAWSNAP", version, 0, hlen, crc32c.crc32c(raw))
    with open(path, "wb") as f:
        f.write(head + struct.pack("<I", crc32c.crc32c(head)) + raw + body)
