"""Snapshots written into a retired snapshot's file (`write_container(recycle=...)`): the same
bytes as a fresh write whatever the two sizes, the retired file gone under its name from the
start, a write that fails midway leaving no file that opens, and bad recycle targets refused
before anything changes."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from thaw.core import StateSnapshot, load
from thaw.core.container import Container, open_container, write_container
from thaw.core.errors import FormatError, ThawError

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
