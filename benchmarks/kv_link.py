"""Where a KV restore's time over the link goes, measured on a snapshot's own KV sections.

In this process, on the same card and the same bytes (every KV section of one snapshot
file, back to back in one device buffer), median of `reps` each:
  pinned           one copy from a pinned host buffer of that size (the link's ceiling)
  registered       the sections copied from the file mapped and registered with CUDA
                   (page cache), unchecked: what the page cache as a DMA source costs
  gpu_check_only   the checks alone: every section's CRC32C computed and compared on the
                   GPU over bytes already there (the kernels' own rate, no copy)
  registered_gpu_checked  the same with every chunk's CRC32C checked on the GPU as it
                   lands (`upload_sections`, the SGLang restore's upload)
  checked_timeline the checked upload once more, with the device's milliseconds from its start
                   to the last section landed and to the last check done, and the wall time:
                   where a check's cost falls (during the copies, or after the last one);
                   each section's times from the run of median wall time
  registered_gpu_checked_written  the SGLang restore's route: each layer uploaded into a
                   staging ring of 8 layers (`stream_checked_sections`), checked, and copied
                   on into a second device buffer, every page's K rows into one contiguous
                   half and its V rows into the other (the pool writes when the slots are
                   one run of whole pages); until 79a486a's receipt, one buffer for every
                   layer and contiguous halves
The engine's `kv` phase is the last of these plus SGLang's pool; set side by side, they
say which step keeps a restore under the link.

The check's cost (`check_cost`) is measured in pairs: `pairs` times an unchecked and a
checked upload of the same sections, one after the other in alternating order, each timed
from the call to its return (the unchecked one also on the device, start to last section
landed), so that a drift of the card's clocks or the link over the run falls on both sides
alike. The checked side records no device events: their reads would add to its time. Each side also
records the calling thread's CPU time (`host_cpu_ms`), and the SM clock is sampled over the
pairs (`sm_mhz_during`); `check_cost_by_sections` repeats the pairs over the first 1 and 8
sections, which separates what a check costs once per restore from what it costs per section;
`fixed_costs` times each once-per-restore step alone.

Alone (no engine): `python benchmarks/kv_link.py [--layers 32 --pages 254]` writes a
snapshot of that many layers of SGLang-shaped KV pages (16 tokens x 8 heads x 128, bf16,
K and V: 16.6 MB a layer at 254 pages, as the 4k trunk's) and writes a `kv_link` receipt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def kv_upload_rates(path: str, reps: int = 5, pairs: int = 40) -> dict:
    import torch

    from thaw.core import load
    from thaw.core.container import Container
    from thaw.core.gpu import DeviceVerifier
    from thaw.core.gpu_files import (RegisteredFile, copy_sections_to_gpu, staging_ring, stream_checked_sections,
                                     upload_sections)

    from gpu_movers import timed

    c = Container(path)
    layers = load(path, verify=False).kv.layers
    names = [layer.section_name for layer in layers]
    pages = {layer.section_name: layer.shape[0] for layer in layers}
    nbytes = sum(c.section(n).length for n in names)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    reg = RegisteredFile(c)
    pool = torch.empty_like(dev)
    views, pool_views, at = {}, {}, 0
    for n in names:
        length = c.section(n).length
        views[n], pool_views[n], at = dev[at:at + length], pool[at:at + length], at + length

    def write(name: str, data: torch.Tensor) -> None:
        halves, into = data.view(pages[name], 2, -1), pool_views[name].view(2, pages[name], -1)
        into[0].copy_(halves[:, 0])  # a strided read of every page's K rows, as the pool's K buffer gets
        into[1].copy_(halves[:, 1])

    ring = staging_ring(reg, names, dev.device)
    secs = [c.section(n) for n in names]

    def check_only() -> None:  # over `dev`, which the registered copy filled with the sections
        verifier = DeviceVerifier(names, [list(sec.chunk_crcs) for sec in secs], dev.device,
                                  stream=torch.cuda.current_stream())
        for i, (n, sec) in enumerate(zip(names, secs)):
            verifier.check(i, views[n], sec.chunk_size, sec.padded_length)
        verifier.raise_if_failed()

    def timed_run(fn) -> dict:
        """`fn(times)` after a sync, with its wall time and the calling thread's CPU time
        (`host_cpu_ms`: launching, queuing, waiting in a spin) added to what it put in `times`."""
        times: dict = {}
        torch.cuda.synchronize()
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(times)
        times["wall_ms"] = (time.perf_counter() - t0) * 1e3
        times["host_cpu_ms"] = (time.thread_time() - c0) * 1e3
        return times

    def checked_timeline() -> dict:
        runs = [timed_run(lambda tl: copy_sections_to_gpu(reg, views, verify="gpu", timeline=tl))
                for _ in range(reps + 1)][1:]  # the first is a warm-up
        out = {k: statistics.median(r[k] for r in runs) for k in ("last_landed_ms", "checked_ms", "wall_ms")}
        middle = sorted(runs, key=lambda r: r["wall_ms"])[reps // 2]  # each section's times, one run
        return {**out, **{k: [round(x, 3) for x in middle[k]] for k in ("landed_each_ms", "checked_each_ms")}}

    def check_cost(count: int = len(names), pairs: int = pairs) -> dict:
        # The card's clocks and power state as each side runs (sampled after a few runs of
        # it, and the SM clock every 20 ms over the whole measure): a copy-only side can
        # leave the SMs at a low clock that the checked side's kernels then start from, a
        # difference between cards, drivers and settings that a ratio alone does not show.
        clocks: dict = {"before": device_state()}
        sampler = SmClockSampler()
        some = {n: views[n] for n in names[:count]}

        def unchecked(tl: dict) -> None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            copy_sections_to_gpu(reg, some, verify="none")
            end.record()
            end.synchronize()
            tl["last_landed_ms"] = start.elapsed_time(end)

        def checked(tl: dict) -> None:  # untimed on the device: the events' reads would add to its wall time
            copy_sections_to_gpu(reg, some, verify="gpu")

        sides: dict = {"unchecked": [], "checked": []}
        for i in range(pairs + 1):  # the first pair is a warm-up
            order = (("unchecked", unchecked), ("checked", checked))
            for side, fn in (order if i % 2 else order[::-1]):
                times = timed_run(fn)
                if i:
                    sides[side].append(times)
                if i == 3:
                    clocks[f"after_{side}"] = device_state()
        clocks["sm_mhz_during"] = sampler.stop()
        med = {side: {k: statistics.median(t[k] for t in runs) for k in runs[0]} for side, runs in sides.items()}
        return {"pairs": pairs, "sections": count, **med, "device_state": clocks,
                "extra_ms": med["checked"]["wall_ms"] - med["unchecked"]["wall_ms"],
                "cost_wall": med["checked"]["wall_ms"] / med["unchecked"]["wall_ms"] - 1,
                "cost_pairwise_median": statistics.median(
                    c["wall_ms"] / u["wall_ms"] - 1 for u, c in zip(sides["unchecked"], sides["checked"]))}

    def fixed_costs(reps: int = 20) -> dict:
        """Host milliseconds of each step a checked upload pays once per restore (or per
        section), each alone after a sync, median of `reps`: where a fixed cost of about
        0.6 ms (kv_link at d8b44c4: the same extra over 1, 8 and 32 sections) could come from."""
        s = torch.cuda.current_stream()
        expected = [list(sec.chunk_crcs) for sec in secs]

        def host_ms(fn) -> float:
            out = []
            for _ in range(reps + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
            return statistics.median(out[1:])

        verifier = DeviceVerifier(names, expected, dev.device, stream=s)

        def two_checks() -> None:  # the first after a sync (the stream-ordered pool may have been trimmed)
            for i in (0, 1):
                verifier.check(i, views[names[i]], secs[i].chunk_size, secs[i].padded_length)

        def one_check() -> None:
            verifier.check(0, views[names[0]], secs[0].chunk_size, secs[0].padded_length)

        return {"verifier_setup_ms": host_ms(lambda: DeviceVerifier(names, expected, dev.device, stream=s)),
                "check_after_sync_ms": host_ms(one_check), "two_checks_after_sync_ms": host_ms(two_checks),
                "flags_read_ms": host_ms(verifier.raise_if_failed),
                "padding_checks_all_sections_ms": host_ms(lambda: [reg.check_padding(n) for n in names]),
                "copy_stream_ms": host_ms(lambda: torch.cuda.Stream(dev.device)),
                "event_pair_ms": host_ms(lambda: torch.cuda.Event().record(s)),
                "queue_all_copies_ms": host_ms(lambda: [views[n].copy_(reg.section(n), non_blocking=True)
                                                        for n in names])}

    def rate(fn) -> float:
        return nbytes / timed(fn, reps) / 1e9  # one warm-up run, then the median of reps

    try:
        out = {"kv_sections": len(names), "kv_bytes": nbytes,
               "pinned_gb_s": rate(lambda: dev.copy_(host, non_blocking=True)),
               "registered_gb_s": rate(lambda: copy_sections_to_gpu(reg, views, verify="none")),
               "gpu_check_only_gb_s": rate(check_only),
               "registered_gpu_checked_gb_s": rate(lambda: upload_sections(reg, names, dev.device)),
               "checked_timeline": checked_timeline(),
               "check_cost": check_cost(),
               # What part of the check's cost is paid once per restore and what per section:
               # the same pairs over the first 1 and 8 sections (a small KV, as a session's).
               "check_cost_by_sections": [check_cost(k, max(10, pairs // 2)) for k in (1, 8)],
               "fixed_costs": fixed_costs(),
               "registered_gpu_checked_written_gb_s": rate(
                   lambda: stream_checked_sections(reg, names, ring, write))}
    finally:
        reg.close()
        c.close()
    out["ratio_registered_vs_pinned"] = out["registered_gb_s"] / out["pinned_gb_s"]
    out["ratio_checked_vs_registered"] = out["registered_gpu_checked_gb_s"] / out["registered_gb_s"]
    out["ratio_written_vs_pinned"] = out["registered_gpu_checked_written_gb_s"] / out["pinned_gb_s"]
    return out


def device_state() -> dict:
    """The card's SM and memory clocks, performance state, power draw and persistence mode
    now (`nvidia-smi`), or why they could not be read."""
    import subprocess

    fields = "clocks.sm,clocks.max.sm,clocks.mem,pstate,power.draw,persistence_mode,clocks.applications.graphics"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    return dict(zip(fields.split(","), (v.strip() for v in out.splitlines()[0].split(","))))


class SmClockSampler:
    """The SM clock (MHz) every 20 ms from now until `stop()` (`nvidia-smi -lms`), reported
    as its minimum, median and maximum, or why it could not be read."""

    def __init__(self) -> None:
        import subprocess

        try:
            self._proc: "subprocess.Popen | None" = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits", "-lms", "20"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._error = ""
        except OSError as exc:
            self._proc, self._error = None, f"{type(exc).__name__}: {exc}"

    def stop(self) -> dict:
        if self._proc is None:
            return {"unavailable": self._error}
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        mhz = sorted(int(v) for v in out.split() if v.strip().isdigit())
        if not mhz:
            return {"unavailable": "no samples"}
        return {"samples": len(mhz), "min": mhz[0], "median": mhz[len(mhz) // 2], "max": mhz[-1]}


def synthetic_snapshot(path: str, layers: int, pages: int) -> None:
    """A KV-only snapshot of `layers` layers of `pages` random SGLang-shaped pages."""
    import torch

    from thaw.core import Identity, PagedKV, StateSnapshot, TensorData, nhd_layout, save

    layout = nhd_layout(16, 8, 128, "bfloat16")
    g = torch.Generator().manual_seed(0)
    kv = [TensorData.of(torch.randn(pages, layout.page_elems, generator=g).to(torch.bfloat16)) for _ in range(layers)]
    save(StateSnapshot(identity=Identity(model_architecture="synthetic", dtype="bfloat16", num_layers=layers,
                                         num_kv_heads=8, head_dim=128, page_size=16, kv_layout=layout.name),
                       kv=PagedKV(layout, kv)), path)


def main() -> None:
    from receipt import write_receipt

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--pages", type=int, default=254)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    path = os.path.join(args.dir, f"kv_link-{args.layers}x{args.pages}.thaw")
    synthetic_snapshot(path, args.layers, args.pages)
    try:
        r = {"kv": f"synthetic: {args.layers} layers x {args.pages} pages of 16 tokens x 8 heads x 128, bf16, K+V",
             **kv_upload_rates(path, pairs=args.pairs)}
    finally:
        os.unlink(path)
    print(r)
    print(f"receipt: {write_receipt('kv_link', r)}")


if __name__ == "__main__":
    main()
