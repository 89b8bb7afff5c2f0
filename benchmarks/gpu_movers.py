"""GPU movers against the link ceilings and the baselines a user would reach for (one run, one card).

Weights (a snapshot of bf16 tensors, and a safetensors file of the same tensors):
  ceiling   pinned host->GPU memcpy of the same byte count
  baseline  safetensors.load_file(device="cuda"), page cache warm
  thaw      registered page-cache mapping -> GPU, CRC32C on CPU (overlapped) / on GPU / off
  cold      page cache dropped: raw O_DIRECT read (dd) vs thaw's O_DIRECT stream to GPU
KV (32 layers, FlashAttention-style [2, blocks, 16, 8, 128] bf16, scattered pages):
  ceiling   pinned memcpy of the packed bytes, each direction
  baseline  one cudaMemcpyAsync per page segment (a naive loop), and what a torch user
            would write: per layer one index_select of the pages + one copy to pinned
            host memory (snapshot), one copy to the GPU + one index_copy_ (restore)
  thaw      one gather kernel into device staging + one D2H copy, or one gather kernel
            writing straight into mapped pinned host memory (snapshot); H2D copies queued
            per layer, each layer checked on the GPU against its CRCs as it lands, then
            scattered (restore)
Every figure is the median of --reps runs timed with CUDA events or wall clock around a sync.
Usage: python benchmarks/gpu_movers.py [--weights-gib 8] [--kv-pages 4096] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

import torch

import thaw
from thaw.core.container import Container
from thaw.core.gpu import PagePlan, upload_and_scatter
from thaw.core.gpu_files import RegisteredFile, copy_sections_to_gpu, stream_sections_to_gpu
from thaw.core.movers import movers

from receipt import write_receipt


def timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def bench_weights(gib: float, reps: int, work: str) -> dict:
    from safetensors.torch import load_file, save_file

    n = 64
    per = int(gib * 2**30 / n / 2)
    g = torch.Generator().manual_seed(0)
    weights = {f"layer.{i}.weight": torch.randn(per, generator=g).to(torch.bfloat16) for i in range(n)}
    nbytes = sum(v.numel() * 2 for v in weights.values())
    path, st_path = os.path.join(work, "w.thaw"), os.path.join(work, "w.safetensors")
    thaw.save(thaw.StateSnapshot.from_tensors(weights), path)
    save_file(weights, st_path)
    del weights
    c = Container(path)
    targets = {f"weights/layer.{i}.weight": torch.empty(per, dtype=torch.bfloat16, device="cuda") for i in range(n)}
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    r = {"bytes": nbytes}
    r["pinned_h2d_s"] = timed(lambda: dev.copy_(pinned, non_blocking=True), reps)
    del dev, pinned
    r["safetensors_load_file_s"] = timed(lambda: load_file(st_path, device="cuda"), reps)
    t0 = time.perf_counter()
    reg = RegisteredFile(c)
    r["register_s"] = time.perf_counter() - t0
    for mode in ("none", "cpu", "gpu"):
        r[f"thaw_registered_verify_{mode}_s"] = timed(lambda: copy_sections_to_gpu(reg, targets, verify=mode), reps)
    reg.close()
    r["thaw_pinned_stream_warm_s"] = timed(lambda: stream_sections_to_gpu(c, targets, direct=False), reps)
    cold = {"dropped": drop_caches()}
    if cold["dropped"]:
        t0 = time.perf_counter()
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"], check=True,
                       capture_output=True)
        cold["raw_odirect_read_s"] = time.perf_counter() - t0
        drop_caches()
        t0 = time.perf_counter()
        cold["used_direct"] = stream_sections_to_gpu(c, targets, direct=True)
        torch.cuda.synchronize()
        cold["thaw_odirect_stream_s"] = time.perf_counter() - t0
        cold["ratio_thaw_vs_raw_odirect"] = cold["raw_odirect_read_s"] / cold["thaw_odirect_stream_s"]
    r["cold"] = cold
    gb = lambda s: nbytes / s / 1e9  # noqa: E731
    r["gb_per_s"] = {k[:-2]: gb(v) for k, v in r.items() if k.endswith("_s") and k != "register_s"}
    best = r["thaw_registered_verify_cpu_s"]
    r["ratio_verified_vs_pinned_memcpy"] = r["pinned_h2d_s"] / min(best, r["thaw_registered_verify_gpu_s"])
    r["ratio_verified_vs_safetensors"] = r["safetensors_load_file_s"] / min(best, r["thaw_registered_verify_gpu_s"])
    r["verification_cost_cpu"] = 1 - r["thaw_registered_verify_none_s"] / r["thaw_registered_verify_cpu_s"]
    r["verification_cost_gpu"] = 1 - r["thaw_registered_verify_none_s"] / r["thaw_registered_verify_gpu_s"]
    os.remove(path)
    os.remove(st_path)
    return r


def bench_kv(num_pages: int, reps: int) -> dict:
    layers_n, nb = 32, 4 * num_pages
    layers = [torch.empty((2, nb, 16, 8, 128), dtype=torch.bfloat16, device="cuda").normal_() for _ in range(layers_n)]
    ids = torch.randperm(nb, device="cuda")[:num_pages]
    plan = PagePlan(layers, ids, block_dim=1)
    nbytes = plan.packed_bytes
    staging = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    r = {"bytes": nbytes, "layers": layers_n, "pages": num_pages, "page_bytes_per_layer": plan.segments.page_bytes}
    r["pinned_d2h_s"] = timed(lambda: host.copy_(staging, non_blocking=True), reps)
    r["pinned_h2d_s"] = timed(lambda: staging.copy_(host, non_blocking=True), reps)

    def snapshot():
        plan.gather(staging)
        host.copy_(staging, non_blocking=True)

    def snapshot_mapped():
        plan.gather(host)

    def restore(verify: bool):
        upload_and_scatter(layers, ids, host, staging, block_dim=1,
                           expected_crcs=expected if verify else None)

    plan.gather(staging)
    host.copy_(staging)
    per_layer = nbytes // layers_n
    # the CRCs a snapshot file would record for each layer's section (checked on the CPU)
    expected = [movers().crc32c_chunks(host[i * per_layer:(i + 1) * per_layer].numpy(), 4 << 20, 16)
                for i in range(layers_n)]
    seg = plan.segments
    host_view = host.view(layers_n, num_pages, len(seg.segment_offsets), seg.segment_bytes)
    id_list = ids.tolist()

    def per_block(d2h: bool):
        for li, t in enumerate(layers):
            for pi, b in enumerate(id_list):
                for si in range(2):
                    if d2h:
                        host_view[li, pi, si].copy_(t[si, b].view(-1).view(torch.uint8), non_blocking=True)
                    else:
                        t[si, b].view(-1).view(torch.uint8).copy_(host_view[li, pi, si], non_blocking=True)

    per_layer_elems = per_layer // 2  # bf16
    torch_host = host.view(torch.bfloat16).view(layers_n, per_layer_elems)

    def torch_batched(d2h: bool):
        for li, t in enumerate(layers):
            if d2h:
                torch_host[li].copy_(t.index_select(1, ids).view(-1), non_blocking=True)
            else:
                dev = torch_host[li].to("cuda", non_blocking=True)
                t.index_copy_(1, ids, dev.view(2, num_pages, *t.shape[2:]))

    r["thaw_snapshot_staged_s"] = timed(snapshot, reps)
    r["thaw_snapshot_mapped_s"] = timed(snapshot_mapped, reps)
    r["thaw_restore_s"] = timed(lambda: restore(False), reps)
    r["thaw_restore_verified_s"] = timed(lambda: restore(True), reps)
    r["per_block_d2h_s"] = timed(lambda: per_block(True), 1)
    r["per_block_h2d_s"] = timed(lambda: per_block(False), 1)
    r["torch_batched_d2h_s"] = timed(lambda: torch_batched(True), reps)
    r["torch_batched_h2d_s"] = timed(lambda: torch_batched(False), reps)
    r["gb_per_s"] = {k[:-2]: nbytes / v / 1e9 for k, v in r.items() if k.endswith("_s")}
    snap_best = min(r["thaw_snapshot_staged_s"], r["thaw_snapshot_mapped_s"])
    r["ratio_snapshot_vs_link"] = r["pinned_d2h_s"] / snap_best
    r["ratio_restore_verified_vs_link"] = r["pinned_h2d_s"] / r["thaw_restore_verified_s"]
    r["ratio_snapshot_vs_per_block"] = r["per_block_d2h_s"] / snap_best
    r["ratio_restore_verified_vs_per_block"] = r["per_block_h2d_s"] / r["thaw_restore_verified_s"]
    r["ratio_snapshot_vs_torch_batched"] = r["torch_batched_d2h_s"] / snap_best
    r["ratio_restore_verified_vs_torch_batched"] = r["torch_batched_h2d_s"] / r["thaw_restore_verified_s"]
    r["verification_cost_kv_restore"] = 1 - r["thaw_restore_s"] / r["thaw_restore_verified_s"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights-gib", type=float, default=8.0)
    ap.add_argument("--kv-pages", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thaw-gpu-bench-", dir=os.environ.get("THAW_BENCH_DIR"))
    results = {"kv": bench_kv(args.kv_pages, args.reps)}
    torch.cuda.empty_cache()
    results["weights"] = bench_weights(args.weights_gib, args.reps, work)
    for part in ("weights", "kv"):
        print(part)
        for k, v in results[part].items():
            if k != "gb_per_s":
                print(f"  {k}: {v}")
        for k, v in results[part]["gb_per_s"].items():
            print(f"  {k:34s} {v:7.2f} GB/s")
    print(f"receipt: {write_receipt('gpu_movers', results)}")


if __name__ == "__main__":
    main()
