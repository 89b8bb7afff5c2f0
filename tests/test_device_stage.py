"""Snapshots whose payloads are CUDA tensors, written through pinned staging buffers
(`thaw.core.device_stage`). These need a CUDA device; elsewhere they are skipped with that
reason and run on the GPU box."""

import pytest
import torch

import thaw
from thaw.core import StateSnapshot, TensorData, device_stage
from thaw.core.container import Container, write_container

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (no GPU on this machine; the GPU box runs these)")]


@pytest.mark.parametrize("route", ["buffered", "direct", "recycled"])
@pytest.mark.parametrize("stage", [4096, 1 << 20, device_stage.STAGE_BYTES])
def test_device_payloads_land_byte_for_byte_beside_host_ones(tmp_path, monkeypatch, stage, route):
    """Sizes around piece and chunk boundaries, empty and one-byte sections, host sections
    in between: the file reads back to the same bytes and every CRC checks, also written
    past the page cache (`direct`) and copied into a retired snapshot's mapped file
    (`recycle`)."""
    monkeypatch.setattr(device_stage, "STAGE_BYTES", stage)
    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = [0, 1, 4095, 4096, 4097, 3 * stage + 5, 2 * stage, 12345]
    payloads = []
    for i, n in enumerate(sizes):
        t = torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda", generator=g)
        payloads.append((f"dev/{i}", t))
        payloads.append((f"host/{i}", torch.arange(i + 3, dtype=torch.int32)))
    path, retired = tmp_path / "mixed.thaw", None
    if route == "recycled":  # a cached snapshot file, smaller than the new one
        retired = tmp_path / "retired.thaw"
        write_container(retired, {"x": 0}, [("old", torch.ones(3 * stage, dtype=torch.uint8))])
    write_container(path, {"x": 1}, payloads, chunk_size=4096 if stage == 4096 else 1 << 20,
                    direct=route == "direct", recycle=retired)
    c = Container(path)
    c.verify()
    for name, t in payloads:
        out = torch.empty(t.numel() * t.element_size(), dtype=torch.uint8)
        c.read_into(name, out.numpy())
        assert torch.equal(out, t.reshape(-1).view(torch.uint8).cpu()), name


def test_weights_held_in_place_on_the_device_save_like_host_ones(tmp_path):
    weights = {"w": torch.randn(64, 33), "b": torch.arange(7, dtype=torch.bfloat16)}
    host = StateSnapshot.from_tensors(weights)
    dev = StateSnapshot.from_tensors(weights)
    dev.weights = {k: TensorData.in_place(v.cuda()) for k, v in weights.items()}
    with pytest.raises(thaw.SchemaError, match="device memory must come with their digest"):
        thaw.save(dev, tmp_path / "d.thaw")
    thaw.save(host, tmp_path / "h.thaw")
    dev.identity.weights_digest = thaw.load(tmp_path / "h.thaw").identity.weights_digest
    thaw.save(dev, tmp_path / "d.thaw")
    back = thaw.load(tmp_path / "d.thaw", verify=True)
    for name, t in weights.items():
        assert torch.equal(back.weights[name].tensor(), t)
