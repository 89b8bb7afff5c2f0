"""The built-in example: a synthetic engine state through save -> verify -> inspect -> load.

It needs no engine: a tiny model's weights, KV pages for two conversations that share a
system prompt, the prefix tree over them and one in-flight request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import torch

from .core import (ChecksumError, Identity, PrefixTree, RequestState, StateSnapshot, TensorData,
                   load, nhd_layout, save)
from .core.container import Container
from .core.schema import PagedKV
from .core.summary import inspect_snapshot
from .demo_workdir import demo_workdir


def example_snapshot(page_size: int = 16, layers: int = 4, heads: int = 2, head_dim: int = 32) -> StateSnapshot:
    g = torch.Generator().manual_seed(0)
    hidden = heads * head_dim * 2
    weights = {"embed.weight": torch.randn(512, hidden, generator=g)}
    for i in range(layers):
        weights[f"layers.{i}.qkv.weight"] = torch.randn(hidden + 2 * heads * head_dim, hidden, generator=g)
        weights[f"layers.{i}.o.weight"] = torch.randn(hidden, hidden, generator=g)
    system = torch.randint(4, 512, (4 * page_size,), generator=g).tolist()
    turn_a = system + torch.randint(4, 512, (2 * page_size,), generator=g).tolist()
    turn_b = system + torch.randint(4, 512, (3 * page_size,), generator=g).tolist()
    tree = PrefixTree(page_size)
    tree.add_path(turn_a, list(range(6)))
    tree.add_path(turn_b, list(range(4)) + [6, 7, 8])
    layout = nhd_layout(page_size, heads, head_dim, "float32")
    kv = PagedKV(layout, [TensorData.of(torch.randn(9, layout.page_elems, generator=g)) for _ in range(layers)])
    ident = Identity(model_architecture="ExampleForCausalLM", dtype="float32", num_layers=layers,
                     num_kv_heads=heads, head_dim=head_dim, page_size=page_size,
                     kv_layout=layout.name, engine="thaw-demo", engine_version="1")
    req = RequestState("demo-0", turn_b + [7, 8], [42], {"temperature": 0.0, "max_tokens": 16},
                       num_computed_tokens=len(turn_b), pages=list(range(4)) + [6, 7, 8], status="running")
    return StateSnapshot(identity=ident, weights={k: TensorData.of(v) for k, v in weights.items()},
                         kv=kv, prefix=tree, requests=[req])


def run_demo(args: argparse.Namespace) -> int:
    with demo_workdir(args.workdir, args.keep, "thaw-demo-",
                      kept="kept {workdir}: try `thaw inspect {workdir}/example.thaw`",
                      removed="removed {workdir} (--keep keeps the snapshot and its corrupted copy)") as workdir:
        ok = _run(workdir)
    return 0 if ok else 1


def _run(workdir: str) -> bool:
    path = os.path.join(workdir, "example.thaw")
    snap = example_snapshot()
    t0 = time.perf_counter()
    save(snap, path)
    t1 = time.perf_counter()
    back = load(path, verify=True)
    t2 = time.perf_counter()
    info = inspect_snapshot(back)
    print(f"saved   {path} ({info['file_bytes']:,} bytes) in {1e3 * (t1 - t0):.1f} ms")
    print(f"loaded  with every byte verified in {1e3 * (t2 - t1):.1f} ms")
    same = all(torch.equal(back.weights[k].tensor(), v.tensor()) for k, v in snap.weights.items())
    same &= all(torch.equal(a.tensor(), b.tensor()) for a, b in zip(back.kv.layers, snap.kv.layers))
    print(f"tensors identical after the round trip: {same}")
    p = info["prefix"]
    print(f"prefix  {p['nodes']} nodes, {p['tokens']} tokens, longest prefix {p['longest_prefix']}")
    matched, pages = back.prefix.match(snap.requests[0].prompt_token_ids)
    print(f"request demo-0: {matched} of {len(snap.requests[0].prompt_token_ids)} prompt tokens cached in pages {pages}")
    bad = os.path.join(workdir, "corrupted.thaw")
    shutil.copyfile(path, bad)
    with open(bad, "r+b") as f:
        f.seek(Container(bad).sections["kv/layer/2"].offset + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    try:
        Container(bad).verify()
        print("corrupted copy: NOT detected")
        return False
    except ChecksumError as exc:
        print(f"corrupted copy refused: {exc}")
    return same
