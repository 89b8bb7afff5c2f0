"""Snapshots written into a retired snapshot's file (`write_container(recycle=...)`): the same
bytes as a fresh write whatever the two sizes, the retired file gone under its name from the
start, a write that fails midway leaving no file that opens, and bad recycle targets refused
before anything changes."""

import os
import subprocess
import sys
import textwrap

import crc32c
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from thaw.core import StateSnapshot, file_sinks, load
from thaw.core.container import Container, write_container
from thaw.core.object_store import open_container
from thaw.core.errors import FormatError, ThawError
from thaw.core.residency import evict

from .helpers import small_snapshot

CHUNK = 64 << 10


def _payloads(sizes: list[int], seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"s/{i}", rng.integers(0, 256, n, dtype=np.uint8)) for i, n in enumerate(sizes)]


@settings(max_examples=25, deadline=None)
@given(old=st.lists(st.integers(0, 3 * CHUNK + 5000), max_size=5),
       new=st.lists(st.integers(0, 3 * CHUNK + 5000), max_size=5), seed=st.integers(0, 2**16))
def test_recycled_file_equals_a_fresh_one_whatever_the_sizes(tmp_path_factory, old, new, seed):
    tmp = tmp_path_factory.mktemp("recycle")
    write_container(tmp / "old.thaw", {"k": "an old header, longer than the new one"}, _payloads(old, seed + 1),
                    chunk_size=CHUNK)
    write_container(tmp / "fresh.thaw", {"k": 2}, _payloads(new, seed), chunk_size=CHUNK)
    write_container(tmp / "new.thaw", {"k": 2}, _payloads(new, seed), chunk_size=CHUNK, recycle=tmp / "old.thaw")
    assert (tmp / "new.thaw").read_bytes() == (tmp / "fresh.thaw").read_bytes()
    assert sorted(os.listdir(tmp)) == ["fresh.thaw", "new.thaw"]
    Container(tmp / "new.thaw").verify()


@pytest.mark.parametrize("data_len", [0, 1, 4095, 4096, CHUNK, 3 * CHUNK + 4097])
def test_copy_section_lands_what_write_section_writes(tmp_path, backend, data_len):
    """Each backend's copy into memory (a mapped file's bytes) leaves the bytes and returns
    the chunk CRCs that its write into a file does; a destination too small is refused."""
    src = np.random.default_rng(data_len).integers(0, 256, data_len, dtype=np.uint8)
    padded = -(-data_len // 4096) * 4096
    dest = np.full(padded + 3, 0xAB, dtype=np.uint8)
    crcs = backend.copy_section(dest, src, padded, CHUNK, 3)
    with open(tmp_path / "w", "wb") as f:
        written = backend.write_section(f.fileno(), 0, src, padded, CHUNK, 3)
    assert crcs == written and dest[:padded].tobytes() == (tmp_path / "w").read_bytes()
    assert dest[padded:].tolist() == [0xAB] * 3
    if padded:
        with pytest.raises(ValueError, match="fewer than padded_len"):
            backend.copy_section(dest[:padded - 1], src, padded, CHUNK, 3)


@pytest.mark.parametrize("data_len", [(1 << 20) - 1, (5 << 19) + 4097, (9 << 20) + 1])
def test_copy_section_in_pieces_smaller_than_a_chunk_returns_the_chunks_crcs(backend, data_len):
    """Chunks of 4 MiB are copied in pieces (the native mover's 1 MiB), the last one short and
    padded with zeros: each chunk's CRC is still the CRC of the chunk's bytes."""
    src = np.random.default_rng(data_len).integers(0, 256, data_len, dtype=np.uint8)
    padded = -(-data_len // 4096) * 4096
    dest = np.empty(padded, dtype=np.uint8)
    crcs = backend.copy_section(dest, src, padded, 4 << 20, 4)
    assert dest[:data_len].tobytes() == src.tobytes() and not dest[data_len:].any()
    assert crcs == [crc32c.crc32c(dest[k:k + (4 << 20)].tobytes()) for k in range(0, padded, 4 << 20)]


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("grows", [True, False])
def test_a_recycled_file_is_copied_into_through_a_mapping_only_while_it_is_cached(tmp_path, monkeypatch,
                                                                                   cached, grows):
    """Cached, the retired file is mapped and the sections copied in (`_MappedFile`); evicted
    from the page cache, it is written by write calls (a write fault would read every page
    it replaces from the disk). Either way, grown or cut, the file equals a fresh write."""
    write_container(tmp_path / "old.thaw", {"k": 1}, _payloads([(4 if grows else 12) * CHUNK], 0), chunk_size=CHUNK)
    if not cached and evict(tmp_path / "old.thaw") > 0.1:
        pytest.skip("this file system keeps the file cached after POSIX_FADV_DONTNEED")
    sinks = []
    real = file_sinks.recycled_sink
    monkeypatch.setattr(file_sinks, "recycled_sink", lambda *args: sinks.append(real(*args)) or sinks[-1])
    new = _payloads([3 * CHUNK + 7, 5 * CHUNK + 1], 5)
    write_container(tmp_path / "new.thaw", {"k": 2}, new, chunk_size=CHUNK, recycle=tmp_path / "old.thaw")
    write_container(tmp_path / "fresh.thaw", {"k": 2}, new, chunk_size=CHUNK)
    assert isinstance(sinks[0], file_sinks.MappedFile) == cached
    assert (tmp_path / "new.thaw").read_bytes() == (tmp_path / "fresh.thaw").read_bytes()


def test_a_snapshot_saved_into_a_recycled_file_loads(tmp_path):
    kv = np.arange(1 << 20, dtype=np.uint8)
    write_container(tmp_path / "round1.thaw", {"k": 1}, [("s/0", kv)])
    snap = StateSnapshot()
    snap.extras = {"round": 2}
    from thaw.core import save

    save(snap, tmp_path / "round2.thaw", recycle=tmp_path / "round1.thaw")
    assert load(tmp_path / "round2.thaw").extras == {"round": 2}
    assert not (tmp_path / "round1.thaw").exists()


def test_a_failed_write_into_a_recycled_file_leaves_nothing_that_opens(tmp_path):
    """The retired file is renamed and its preamble zeroed before any payload is written:
    a write that fails midway (here the file size limit, EFBIG, in a child process) leaves
    neither the old snapshot nor a new one."""
    write_container(tmp_path / "old.thaw", {"k": 1}, _payloads([3 * CHUNK], 0), chunk_size=CHUNK)
    child = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        from thaw.core.container import write_container
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({2 * CHUNK}, resource.RLIM_INFINITY))
        try:
            write_container({str(tmp_path / "new.thaw")!r}, {{"k": 2}}, [("s/0", np.ones({4 * CHUNK}, np.uint8))],
                            chunk_size={CHUNK}, recycle={str(tmp_path / "old.thaw")!r})
        except OSError as exc:
            print("failed:", exc)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=tmp_path.parent)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "File too large" in done.stdout
    assert os.listdir(tmp_path) == []


def test_bad_recycle_targets_are_refused_before_anything_changes(tmp_path):
    write_container(tmp_path / "a.thaw", {"k": 1}, _payloads([100], 0))
    before = (tmp_path / "a.thaw").read_bytes()
    (tmp_path / "notes.txt").write_text("not a snapshot")
    (tmp_path / "sub").mkdir()
    write_container(tmp_path / "sub" / "b.thaw", {"k": 1}, _payloads([100], 0))
    cases = [(tmp_path / "a.thaw", "into itself"), (tmp_path / "notes.txt", "not a snapshot file"),
             (tmp_path / "sub" / "b.thaw", "in the target's directory"),
             (tmp_path / ".a.thaw.tmp-1-abcd0123", "temporary file")]
    for recycle, message in cases:
        with pytest.raises(FormatError, match=message):
            write_container(tmp_path / "a.thaw", {"k": 2}, _payloads([10], 1), recycle=recycle)
    with pytest.raises(FileNotFoundError):
        write_container(tmp_path / "c.thaw", {"k": 2}, _payloads([10], 1), recycle=tmp_path / "missing.thaw")
    with pytest.raises(FormatError, match="pick one"):
        write_container(tmp_path / "c.thaw", {"k": 2}, _payloads([10], 1), recycle=tmp_path / "a.thaw", direct=True)
    with pytest.raises(ThawError, match="uploaded"):
        from thaw.core import save

        save(StateSnapshot(), "s3://bucket/x.thaw", recycle=tmp_path / "a.thaw")
    assert (tmp_path / "a.thaw").read_bytes() == before
    assert open_container(tmp_path / "sub" / "b.thaw") is not None
    assert sorted(os.listdir(tmp_path)) == ["a.thaw", "notes.txt", "sub"]


def test_a_retired_file_that_a_snapshot_references_is_refused_and_left_whole(tmp_path):
    """A retired file that another snapshot in the directory references its weights from,
    or that the snapshot being written references, is refused by name; nothing changes."""
    from thaw.core import save

    trunk = small_snapshot(0)
    save(trunk, tmp_path / "trunk.thaw")
    session = small_snapshot(1)
    session.weights, session.weights_from = {}, str(tmp_path / "trunk.thaw")
    session.identity.weights_digest = trunk.identity.weights_digest
    save(session, tmp_path / "session.thaw")
    before = (tmp_path / "trunk.thaw").read_bytes()
    with pytest.raises(FormatError, match=r"session\.thaw references its weights from it"):
        write_container(tmp_path / "new.thaw", {"k": 2}, _payloads([10], 1), recycle=tmp_path / "trunk.thaw")
    (tmp_path / "session.thaw").unlink()
    with pytest.raises(FormatError, match="the snapshot being written .* references its weights from it"):
        save(session, tmp_path / "session2.thaw", recycle=tmp_path / "trunk.thaw")
    assert (tmp_path / "trunk.thaw").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["trunk.thaw"]


def test_a_retired_file_with_other_names_is_refused(tmp_path):
    write_container(tmp_path / "old.thaw", {"k": 1}, _payloads([100], 0))
    os.link(tmp_path / "old.thaw", tmp_path / "kept-elsewhere.thaw")
    before = (tmp_path / "old.thaw").read_bytes()
    with pytest.raises(FormatError, match="1 other name"):
        write_container(tmp_path / "new.thaw", {"k": 2}, _payloads([10], 1), recycle=tmp_path / "old.thaw")
    assert (tmp_path / "kept-elsewhere.thaw").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["kept-elsewhere.thaw", "old.thaw"]


def test_a_retired_file_a_thaw_process_holds_open_is_refused_until_released(tmp_path):
    """A process that opened (and mapped) the retired file, here a real second process, would
    die of SIGBUS if the file were cut shorter under its mapping: the recycle is refused
    while it holds the file, and goes through once it has let go."""
    write_container(tmp_path / "old.thaw", {"k": 1}, _payloads([4 * CHUNK], 0), chunk_size=CHUNK)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from thaw.core.container import Container
        c = Container({str(tmp_path / "old.thaw")!r})
        view = c.map_section("s/0")
        c.close()  # the mapping alone keeps holding it
        print("mapped", flush=True)
        sys.stdin.readline()
        print(int(view[-1]), flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)  # the installed thaw
    try:
        assert holder.stdout.readline().strip() == "mapped"
        with pytest.raises(FormatError, match="a thaw process holds it open"):
            write_container(tmp_path / "new.thaw", {"k": 2}, _payloads([CHUNK], 1), chunk_size=CHUNK,
                            recycle=tmp_path / "old.thaw")
        assert sorted(os.listdir(tmp_path)) == ["old.thaw"]
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip().isdigit()  # still alive and reading its mapping
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    write_container(tmp_path / "new.thaw", {"k": 2}, _payloads([CHUNK], 1), chunk_size=CHUNK,
                    recycle=tmp_path / "old.thaw")
    assert sorted(os.listdir(tmp_path)) == ["new.thaw"]
