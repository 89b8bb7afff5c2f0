"""CUDA movers. These need a CUDA device and the thaw._cuda extension; on machines without
them they are skipped with that reason and run on the GPU box (see the issue notes)."""

import pytest
import torch

import thaw
from thaw.core.container import Container
from thaw.core.movers import movers

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device: CPU-only machine; these run on the GPU box")]

if HAS_CUDA:
    from thaw.core.gpu import PagePlan, device_crc32c, device_crc32c_chunks, page_segments, upload_and_scatter
    from thaw.core.gpu_files import RegisteredFile, copy_sections_to_gpu, stream_sections_to_gpu

LAYOUTS = {
    # name: (shape builder, block dim)
    "vllm-cpu-like [blocks, heads, bs, 2*hd]": (lambda nb: (nb, 8, 16, 256), 0),
    "flash-attn planes [2, blocks, bs, heads, hd]": (lambda nb: (2, nb, 16, 8, 128), 1),
    "blocks first [blocks, 2, bs, heads, hd]": (lambda nb: (nb, 2, 16, 8, 128), 0),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("pages", ["empty", "single", "all", "unsorted"])
def test_gather_scatter_round_trip(layout, dtype, pages):
    shape_of, block_dim = LAYOUTS[layout]
    nb, g = 64, torch.Generator(device="cuda").manual_seed(0)
    layers = [torch.randn(shape_of(nb), device="cuda", dtype=torch.float32, generator=g).to(dtype) for _ in range(3)]
    ids = {"empty": [], "single": [5], "all": list(range(nb)), "unsorted": [9, 3, 40, 1, 63, 0]}[pages]
    ids = torch.tensor(ids, dtype=torch.int64, device="cuda")
    plan = PagePlan(layers, ids, block_dim)
    packed = torch.empty(plan.packed_bytes, dtype=torch.uint8, device="cuda")
    plan.gather(packed)
    seg = page_segments(layers[0], block_dim)
    # packed holds, per layer and page, each segment's bytes: compare against torch indexing
    per_page = packed.view(3, len(ids), len(seg.segment_offsets), seg.segment_bytes)
    for li, t in enumerate(layers):
        for pi, b in enumerate(ids.tolist()):
            block = t.select(block_dim, b)
            segs = block.reshape(len(seg.segment_offsets), -1) if block_dim else block.reshape(1, -1)
            assert torch.equal(per_page[li, pi].view(dtype).reshape(segs.shape), segs)
    targets = [torch.zeros_like(t) for t in layers]
    PagePlan(targets, ids, block_dim).scatter(packed)
    for t, back in zip(layers, targets):
        assert torch.equal(t.index_select(block_dim, ids), back.index_select(block_dim, ids))
    torch.cuda.synchronize()


def test_duplicate_block_ids_refused():
    t = torch.zeros(8, 4, 16, device="cuda")
    with pytest.raises(thaw.SchemaError, match="repeat"):
        PagePlan([t], torch.tensor([1, 1], device="cuda"))
    with pytest.raises(thaw.SchemaError, match="outside"):
        PagePlan([t], torch.tensor([8], device="cuda"))


def test_gather_into_pinned_host_memory():
    t = torch.randn(32, 4, 16, 64, device="cuda")
    ids = torch.tensor([3, 7, 11], device="cuda")
    plan = PagePlan([t], ids)
    host = torch.empty(plan.packed_bytes, dtype=torch.uint8, pin_memory=True)
    plan.gather(host)
    torch.cuda.synchronize()
    assert torch.equal(host.view(torch.float32).view(3, -1), t[ids].reshape(3, -1).cpu())


@pytest.mark.parametrize("nbytes", [1, 4095, 4096, 1 << 20, (4 << 20) + 12345, 9 << 20])
def test_gpu_crc_equals_cpu(nbytes):
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    padded = -(-nbytes // 4096) * 4096
    cpu_bytes = torch.cat([data, torch.zeros(padded - nbytes, dtype=torch.uint8)])
    expected = movers().crc32c_chunks(cpu_bytes.numpy(), 4 << 20, 1)
    assert device_crc32c_chunks(data.cuda(), 4 << 20) == expected
    flipped = data.clone()
    flipped[nbytes // 2] ^= 1
    assert device_crc32c_chunks(flipped.cuda(), 4 << 20) != expected


def test_verifier_scratch_grows_with_the_items_and_catches_a_bad_one():
    """One verifier checks items of rising sizes (its scratch grows) and a smaller one after
    them (reusing it), in order on one stream; only the changed item fails, by name."""
    from thaw.core.errors import ChecksumError
    from thaw.core.gpu import DeviceVerifier

    sizes = [4096, 9 << 20, 1 << 20, (4 << 20) + 12345]
    items = [torch.randint(0, 256, (n,), dtype=torch.uint8) for n in sizes]
    padded = [torch.cat([t, torch.zeros(-len(t) % 4096, dtype=torch.uint8)]) for t in items]
    expected = [movers().crc32c_chunks(p.numpy(), 4 << 20, 1) for p in padded]
    on_gpu = [t.cuda() for t in items]
    s = torch.cuda.current_stream()
    verifier = DeviceVerifier([f"item {i}" for i in range(4)], expected, on_gpu[0].device, stream=s)
    for i, t in enumerate(on_gpu):
        verifier.check(i, t, 4 << 20)
    verifier.raise_if_failed()
    on_gpu[2][12345] ^= 1
    verifier = DeviceVerifier([f"item {i}" for i in range(4)], expected, on_gpu[0].device, stream=s)
    for i, t in enumerate(on_gpu):
        verifier.check(i, t, 4 << 20)
    with pytest.raises(ChecksumError, match="item 2 chunk 0"):
        verifier.raise_if_failed()


def test_crc_with_too_little_scratch_is_refused():
    from thaw.core.gpu import cuda_movers

    mod = cuda_movers()
    data = torch.zeros(8192, dtype=torch.uint8, device="cuda")
    need = mod.crc32c_scratch_bytes(8192)
    assert need == 8192 // 512 * 4
    scratch = torch.empty(need - 4, dtype=torch.uint8, device="cuda")
    out = torch.empty(1, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=f"scratch holds {need - 4} bytes, {need} needed"):
        mod.crc32c_chunks_async(data.data_ptr(), 8192, 8192, 4 << 20, scratch.data_ptr(), need - 4,
                                out.data_ptr(), 0, 0, torch.cuda.current_stream().cuda_stream)


@pytest.mark.parametrize("nbytes", [0, 1, 4095, 4096, 4097, (4 << 20) + 12345, 9 << 20])
def test_whole_tensor_gpu_crc_equals_cpu(nbytes):
    """The weights digest's CRC of a tensor, computed on the device, equals the CPU's."""
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    assert device_crc32c(data.cuda()) == movers().crc32c(data)
    if nbytes % 2 == 0 and nbytes:
        assert device_crc32c(data.cuda().view(torch.bfloat16)) == movers().crc32c(data)


@pytest.mark.parametrize("verify", ["cpu", "gpu"])
def test_weights_from_registered_file(tmp_path, verify):
    weights = {f"w{i}": torch.randn(1000 + i, 77, dtype=torch.bfloat16) for i in range(5)}
    thaw.save(thaw.StateSnapshot.from_tensors(weights), tmp_path / "w.thaw")
    c = Container(tmp_path / "w.thaw")
    reg = RegisteredFile(c)
    targets = {f"weights/{k}": torch.empty(v.shape, dtype=v.dtype, device="cuda") for k, v in weights.items()}
    timeline: dict = {}
    copy_sections_to_gpu(reg, targets, verify=verify, timeline=timeline)
    for k, v in weights.items():
        assert torch.equal(targets[f"weights/{k}"].cpu(), v)
    if verify == "gpu":  # the device's times, for benchmarks: every check runs after its section lands
        assert 0 <= timeline["last_landed_ms"] <= timeline["checked_ms"]
    reg.close()


def test_cold_stream_and_corruption(tmp_path):
    weights = {f"w{i}": torch.randn(3000, 512) for i in range(4)}
    path = tmp_path / "w.thaw"
    thaw.save(thaw.StateSnapshot.from_tensors(weights), path)
    c = Container(path)
    targets = {f"weights/{k}": torch.empty(v.shape, device="cuda") for k, v in weights.items()}
    stream_sections_to_gpu(c, targets, staging_bytes=4 << 20)
    for k, v in weights.items():
        assert torch.equal(targets[f"weights/{k}"].cpu(), v)
    with open(path, "r+b") as f:
        f.seek(c.sections["weights/w2"].offset + 999)
        f.write(b"\x00\x01")
    with pytest.raises(thaw.ChecksumError, match="weights/w2"):
        stream_sections_to_gpu(Container(path), targets, staging_bytes=4 << 20)
    reg = RegisteredFile(Container(path))
    with pytest.raises(thaw.ChecksumError, match="weights/w2"):
        copy_sections_to_gpu(reg, targets, verify="gpu")
    reg.close()


@pytest.mark.parametrize("slots", [1, 2, 8])
def test_ring_hands_each_section_on_as_it_is_checked_and_the_error_after_all(tmp_path, slots):
    """stream_checked_sections hands over each section in order through the ring's slots,
    on the current stream; what the hook copies out is the file's bytes even where a slot
    is reused; a bad chunk is raised once every section and hook has run, naming it."""
    from thaw.core.gpu_files import staging_ring, stream_checked_sections

    weights = {f"w{i}": torch.randn(2000 + 64 * i, 256) for i in range(6)}
    path = tmp_path / "w.thaw"
    thaw.save(thaw.StateSnapshot.from_tensors(weights), path)
    names = [f"weights/{k}" for k in weights]
    copies = {name: torch.empty(w.numel() * 4, dtype=torch.uint8, device="cuda")
              for name, w in zip(names, weights.values())}
    seen = []

    def landed(name, data):
        seen.append(name)
        copies[name].copy_(data)  # queued on the current stream, before the slot is reused

    reg = RegisteredFile(Container(path))
    ring = staging_ring(reg, names, torch.device("cuda"), slots=slots)
    assert ring.shape[0] == min(slots, len(names)) and ring.shape[1] % 4096 == 0
    assert staging_ring(reg, names, torch.device("cuda"), slots=slots, ring=ring) is ring  # kept when it fits
    stream_checked_sections(reg, names, ring, landed)
    assert seen == names
    for name, v in zip(names, weights.values()):
        assert torch.equal(copies[name].cpu().view(torch.float32).view(v.shape), v)
    reg.close()
    with open(path, "r+b") as f:
        f.seek(Container(path).sections["weights/w1"].offset + 5)
        f.write(b"\x07\x07")
    seen.clear()
    reg = RegisteredFile(Container(path))
    with pytest.raises(thaw.ChecksumError, match="weights/w1"):
        stream_checked_sections(reg, names, ring, landed)
    assert seen == names
    with pytest.raises(thaw.SchemaError, match="larger than a staging slot"):
        stream_checked_sections(reg, names, ring[:, :4096], landed)
    reg.close()


def test_registered_files_keep_the_two_used_last(tmp_path):
    from thaw.core.gpu_files import RegisteredFiles

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"s{i}.thaw")
        thaw.save(thaw.StateSnapshot.from_tensors({"w": torch.full((64,), float(i))}), paths[-1])
    files = RegisteredFiles(keep=2)
    a, b = files.get(Container(paths[0])), files.get(Container(paths[1]))
    assert files.get(Container(paths[0])) is a  # the same file again: the same registration
    files.get(Container(paths[2]))  # b, used least recently, is released
    assert b._ptr == 0 and a._ptr != 0
    files.close()
    assert a._ptr == 0


def test_upload_and_scatter_checks_each_layer():
    layers = [torch.randn(2, 40, 16, 4, 32, device="cuda") for _ in range(4)]
    ids = torch.tensor([7, 2, 30, 11], device="cuda")
    plan = PagePlan(layers, ids, block_dim=1)
    staging = torch.empty(plan.packed_bytes, dtype=torch.uint8, device="cuda")
    plan.gather(staging)
    host = staging.cpu().pin_memory()
    per = plan.packed_bytes // 4
    expected = [movers().crc32c_chunks(host[i * per:(i + 1) * per].numpy(), 4 << 20, 2) for i in range(4)]
    targets = [torch.zeros_like(t) for t in layers]
    upload_and_scatter(targets, ids, host, torch.empty_like(staging), block_dim=1, expected_crcs=expected)
    for t, back in zip(layers, targets):
        assert torch.equal(t[:, ids], back[:, ids])
    host[2 * per + 5] ^= 1
    fresh = [torch.zeros_like(t) for t in layers]
    with pytest.raises(thaw.ChecksumError, match="kv layer 2"):
        upload_and_scatter(fresh, ids, host, torch.empty_like(staging), block_dim=1, expected_crcs=expected)
    torch.cuda.synchronize()
    assert not any(f.any() for f in fresh)  # every layer is checked before any block is written


RFC3720_ZEROS_32 = 0x8A9136AA  # RFC 3720 B.4: CRC32C of 32 bytes of 0x00


def test_gpu_crc_on_every_device():
    """The CRC tables live in each device's constant memory: every device computes the
    same (RFC 3720 known-answer) CRC, whichever device ran first. With one GPU this checks
    that a second stream on it agrees and the table upload survived an earlier use."""
    assert movers().crc32c(torch.zeros(32, dtype=torch.uint8)) == RFC3720_ZEROS_32
    zeros = torch.zeros(8192, dtype=torch.uint8)
    big = torch.randint(0, 256, ((4 << 20) + 777,), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    want_zeros, want = movers().crc32c(zeros), movers().crc32c(big)
    for dev in reversed(range(torch.cuda.device_count())):  # the highest device first
        with torch.cuda.device(dev):
            assert device_crc32c(zeros.cuda()) == want_zeros, dev
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                assert device_crc32c(big.cuda()) == want, dev


def test_gpu_checked_section_refuses_nonzero_padding(tmp_path):
    """A GPU check sees only a section's payload; the padding it counts as zeros is checked
    in the file, so a file whose padding is not zero is refused as the CPU path refuses it."""
    path = tmp_path / "w.thaw"
    thaw.save(thaw.StateSnapshot.from_tensors({"w": torch.arange(1000, dtype=torch.float32)}), path)
    sec = Container(path).section("weights/w")
    with open(path, "r+b") as f:
        f.seek(sec.offset + sec.length + 7)
        f.write(b"\x01")
    reg = RegisteredFile(Container(path))
    with pytest.raises(thaw.FormatError, match="padding"):
        copy_sections_to_gpu(reg, {"weights/w": torch.empty(1000, device="cuda")}, verify="gpu")
    reg.close()
