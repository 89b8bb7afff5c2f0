"""The file format: spec conformance, atomic writes, hostile files."""

import os
import subprocess
import sys

import pytest
import torch

import thaw
from thaw.core import FormatError, SchemaError, ThawError
from thaw.core.container import Container, write_container
from thaw.core.movers import movers

from .helpers import forge, small_snapshot
from .spec_reader import read_spec


def test_spec_reader_reads_what_we_write(tmp_path):
    snap = small_snapshot()
    path = tmp_path / "s.thaw"
    thaw.save(snap, path, chunk_size=4096)
    meta, sections = read_spec(path)
    assert meta["identity"]["model_architecture"] == "Tiny"
    w = torch.frombuffer(bytearray(sections["weights/w"]), dtype=torch.float32).reshape(8, 16)
    assert torch.equal(w, snap.weights["w"].tensor())
    kv0 = torch.frombuffer(bytearray(sections["kv/layer/0"]), dtype=torch.float32)
    assert torch.equal(kv0, snap.kv.layers[0].tensor().reshape(-1))
    tokens = torch.frombuffer(bytearray(sections["prefix/tokens"]), dtype=torch.int64).tolist()
    assert tokens[:4] == snap.prefix.nodes[0].tokens


def test_round_trip_every_part(tmp_path, backend):
    snap = small_snapshot()
    thaw.save(snap, tmp_path / "s.thaw", chunk_size=8192)
    back = thaw.load(tmp_path / "s.thaw")
    assert back.identity == snap.identity
    for name in snap.weights:
        assert torch.equal(back.weights[name].tensor(), snap.weights[name].tensor())
        assert back.weights[name].dtype == snap.weights[name].dtype
    for a, b in zip(back.kv.layers, snap.kv.layers):
        assert torch.equal(a.tensor(), b.tensor())
    assert back.prefix == snap.prefix
    assert back.requests == snap.requests
    assert back.extras == snap.extras


def test_lazy_read_into_caller_buffer(tmp_path):
    snap = small_snapshot()
    thaw.save(snap, tmp_path / "s.thaw")
    back = thaw.load(tmp_path / "s.thaw")
    buf = torch.empty(8, 16)
    back.weights["w"].read_into(buf)
    assert torch.equal(buf, snap.weights["w"].tensor())
    with pytest.raises(SchemaError, match="weights/w"):
        back.weights["w"].read_into(torch.empty(8, 15))


def test_empty_and_multi_chunk_sections(tmp_path):
    big = torch.arange(3 * 4096 + 5, dtype=torch.uint8)
    write_container(tmp_path / "c.thaw", {"x": 1}, [("empty", b""), ("big", big), ("tail", b"abc")], chunk_size=4096)
    c = Container(tmp_path / "c.thaw")
    c.verify()
    assert c.sections["big"].num_chunks == 4
    assert bytes(c.read("tail")) == b"abc" and len(c.read("empty")) == 0
    assert torch.equal(torch.from_numpy(c.read("big")), big)
    read_spec(tmp_path / "c.thaw")


@pytest.mark.parametrize("direct", [False, True])
def test_pipelined_reader_buffered_and_direct(tmp_path, direct):
    """O_DIRECT where the filesystem allows it; otherwise a buffered read, and it says so."""
    data = torch.arange(5 * 4096 + 100, dtype=torch.uint8)
    write_container(tmp_path / "d.thaw", {}, [("a", data)], chunk_size=8192)
    c = Container(tmp_path / "d.thaw")
    sec = c.sections["a"]
    dest = torch.empty(sec.length, dtype=torch.uint8)
    crcs, used_direct = movers().read_section(c.path, sec.offset, dest, sec.padded_length,
                                              sec.chunk_size, 2, direct)
    assert torch.equal(dest, data) and tuple(crcs) == sec.chunk_crcs
    assert used_direct is False if not direct else isinstance(used_direct, bool)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "s.thaw"
    thaw.save(small_snapshot(0), path)
    thaw.save(small_snapshot(1), path)
    assert os.listdir(tmp_path) == ["s.thaw"]
    assert torch.equal(thaw.load(path).weights["w"].tensor(), small_snapshot(1).weights["w"].tensor())


CRASH_CHILD = r"""
import os, sys, torch, thaw
from thaw.core import movers
real = movers.movers().write_section
calls = []
def crashing(*a, **k):
    calls.append(1)
    if len(calls) == 3:
        os._exit(17)   # the process dies mid-write: no cleanup runs
    return real(*a, **k)
m = movers.movers()
import dataclasses
movers._selected = dataclasses.replace(m, write_section=crashing)
thaw.save(thaw.StateSnapshot.from_tensors({f"t{i}": torch.randn(1000) for i in range(6)}), sys.argv[1])
"""


def test_crash_mid_write_leaves_nothing_loadable(tmp_path):
    target = tmp_path / "s.thaw"
    proc = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(target)], cwd=tmp_path)
    assert proc.returncode == 17
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers, "the crash should leave the temporary file behind"
    for f in leftovers:
        assert f.name.startswith(".s.thaw.tmp-")
        with pytest.raises(FormatError):
            Container(f)


def _valid_header(length=10, chunk=4096, crc="00000000", offset=4096):
    return {"meta": {}, "sections": [{"name": "a", "offset": offset, "length": length,
                                      "chunk_size": chunk, "crc32c": crc}]}


@pytest.mark.parametrize("mutate,match", [
    (lambda h: h["sections"][0].update(length=2**61), "past the end"),
    (lambda h: h["sections"][0].update(offset=0), "overlaps"),
    (lambda h: h["sections"][0].update(offset=8192), "hole"),
    (lambda h: h["sections"][0].update(length=-1), "outside"),
    (lambda h: h["sections"][0].update(length=1.5), "integer"),
    (lambda h: h["sections"][0].update(length=True), "integer"),
    (lambda h: h["sections"][0].update(chunk_size=1000), "outside"),
    (lambda h: h["sections"][0].update(chunk_size=6000), "multiple"),
    (lambda h: h["sections"][0].update(crc32c="zz"), "checksums"),
    (lambda h: h["sections"][0].update(crc32c="0000000G"), "hexadecimal"),
    (lambda h: h["sections"].append(dict(h["sections"][0], offset=8192)), "twice"),
    (lambda h: h.update(sections={}), "list"),
    (lambda h: h.update(extra=1), "unknown top-level"),
])
def test_hostile_section_tables(tmp_path, mutate, match):
    header = _valid_header()
    mutate(header)
    forge(tmp_path / "h.thaw", header, body=bytes(4096))
    with pytest.raises(FormatError, match=match):
        Container(tmp_path / "h.thaw")


def test_trailing_bytes_and_wrong_version(tmp_path):
    forge(tmp_path / "t.thaw", _valid_header(), body=bytes(4096 + 1))
    with pytest.raises(FormatError, match="trail"):
        Container(tmp_path / "t.thaw")
    forge(tmp_path / "v.thaw", _valid_header(), body=bytes(4096), version=2)
    with pytest.raises(FormatError, match="version 2"):
        Container(tmp_path / "v.thaw")


def test_header_over_cap_and_short_files(tmp_path):
    forge(tmp_path / "big.thaw", {"meta": {}, "sections": []}, hlen=65 * 2**20 - 32)
    with pytest.raises(FormatError, match="cap"):
        Container(tmp_path / "big.thaw")
    (tmp_path / "short").write_bytes(b"THAWSNAP\x01")
    with pytest.raises(FormatError, match="shorter"):
        Container(tmp_path / "short")
    (tmp_path / "other").write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="magic"):
        Container(tmp_path / "other")


def test_json_tricks_refused(tmp_path):
    for text in ('{"meta": {}, "sections": [], "sections": []}', '{"meta": NaN, "sections": []}',
                 "[" * 100000 + "]" * 100000, '"just a string"'):
        raw = text.encode()
        hlen = -(-(32 + len(raw)) // 4096) * 4096 - 32
        import crc32c, struct
        body = raw + b" " * (hlen - len(raw))
        head = struct.pack("<8sIIQI", b"THAWSNAP", 1, 0, hlen, crc32c.crc32c(body))
        (tmp_path / "j").write_bytes(head + struct.pack("<I", crc32c.crc32c(head)) + body)
        with pytest.raises(FormatError):
            Container(tmp_path / "j")


def test_meta_claims_refused_without_big_allocation(tmp_path):
    snap = small_snapshot()
    thaw.save(snap, tmp_path / "s.thaw")
    c = Container(tmp_path / "s.thaw")
    sections = {"meta": dict(c.meta), "sections": [s.to_json() for s in c.sections.values()]}
    sections["meta"]["weights"][0]["shape"] = [2**40, 2**20]
    body = open(tmp_path / "s.thaw", "rb").read()[c.data_start:]
    forge(tmp_path / "m.thaw", sections, body=body, hlen=c.data_start - 32)
    with pytest.raises(SchemaError, match="bytes by dtype/shape"):
        thaw.load(tmp_path / "m.thaw")


def test_errors_are_thaw_errors():
    assert issubclass(FormatError, ThawError) and issubclass(SchemaError, ThawError)
