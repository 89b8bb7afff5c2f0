"""Snapshots written past the page cache (`write_container(direct=True)`): the same bytes as
a buffered write, on both movers, from aligned and unaligned host buffers, and no cached
pages left behind."""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import thaw
from thaw.core import StateSnapshot, residency
from thaw.core.container import Container, write_container
from thaw.core.errors import MoverUnavailable

CHUNK = 64 << 10


def _payloads(sizes: list[int], seed: int, unaligned: bool) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(sizes):
        raw = rng.integers(0, 256, n + 1, dtype=np.uint8)
        out.append((f"s/{i}", raw[1:] if unaligned else raw[:n].copy()))  # [1:]: one byte off its allocation
    return out


def _write_both(tmp_path, payloads, chunk=CHUNK) -> tuple[bytes, bytes]:
    write_container(tmp_path / "buffered.thaw", {"k": 1}, payloads, chunk_size=chunk)
    write_container(tmp_path / "direct.thaw", {"k": 1}, payloads, chunk_size=chunk, direct=True)
    return (tmp_path / "buffered.thaw").read_bytes(), (tmp_path / "direct.thaw").read_bytes()


@pytest.mark.parametrize("unaligned", [False, True])
def test_direct_file_equals_buffered_file(tmp_path, backend, unaligned):
    sizes = [0, 1, 4095, 4096, 4097, CHUNK, CHUNK + 123, 3 * CHUNK, 12345]
    payloads = _payloads(sizes, 0, unaligned)
    buffered, direct = _write_both(tmp_path, payloads)
    assert direct == buffered
    c = Container(tmp_path / "direct.thaw")
    c.verify()
    for name, data in payloads:
        assert np.array_equal(c.read(name), data), name
    assert sorted(os.listdir(tmp_path)) == ["buffered.thaw", "direct.thaw"]


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * CHUNK + 5000), max_size=6), seed=st.integers(0, 2**16),
       unaligned=st.booleans())
def test_direct_equals_buffered_for_any_sizes(tmp_path_factory, sizes, seed, unaligned):
    tmp = tmp_path_factory.mktemp("direct")
    buffered, direct = _write_both(tmp, _payloads(sizes, seed, unaligned))
    assert direct == buffered


def test_direct_snapshot_leaves_its_payloads_out_of_the_page_cache(tmp_path):
    """What a buffered write leaves cached, a direct one does not (the header and preamble,
    written buffered, are a few pages of the file)."""
    payloads = _payloads([32 << 20], 1, False)
    write_container(tmp_path / "d.thaw", {}, payloads, direct=True)
    write_container(tmp_path / "b.thaw", {}, payloads)
    assert residency.resident_fraction(tmp_path / "b.thaw") > 0.9
    assert residency.resident_fraction(tmp_path / "d.thaw") < 0.1
    assert np.array_equal(Container(tmp_path / "d.thaw").read("s/0"), payloads[0][1])


def test_save_and_load_a_direct_snapshot(tmp_path):
    weights = {"w": torch.arange(100_003, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int8)}
    snap = StateSnapshot.from_tensors(weights)
    timings: dict[str, float] = {}
    thaw.save(snap, tmp_path / "s.thaw", direct=True, timings=timings)
    assert set(timings) >= {"write", "flush"}
    back = thaw.load(tmp_path / "s.thaw", verify=True)
    for name, t in weights.items():
        assert torch.equal(back.weights[name].tensor(), t)


def _refuses_direct(directory: str) -> bool:
    probe = os.path.join(directory, f".thaw-direct-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
        return False
    except OSError:
        return True
    finally:
        if os.path.exists(probe):
            os.unlink(probe)


SHM = "/dev/shm"


@pytest.mark.skipif(not os.path.isdir(SHM) or not _refuses_direct(SHM),
                    reason=f"{SHM} accepts O_DIRECT on this kernel (tmpfs does since Linux 6.6)")
def test_a_file_system_refusing_direct_writes_is_named_and_nothing_is_left(tmp_path):
    directory = os.path.join(SHM, f"thaw-test-{os.getpid()}")
    os.mkdir(directory)
    try:
        target = os.path.join(directory, "s.thaw")
        with pytest.raises(MoverUnavailable, match="refuses O_DIRECT"):
            write_container(target, {}, _payloads([5000], 2, False), direct=True)
        assert os.listdir(directory) == []
    finally:
        os.rmdir(directory)
