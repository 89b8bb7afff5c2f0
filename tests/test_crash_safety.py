"""Writers that crash or fail, and paths that are not snapshots: nothing that looks
complete is left, nothing blocks, modes are kept, and errors name the file."""

import fcntl
import os
import resource
import signal
import stat
import subprocess
import sys
import time

import pytest

import thaw
from thaw.core.temp_files import is_temp_name, machine_tag

from .helpers import small_snapshot


def test_a_writers_temporary_file_is_refused_even_when_complete(tmp_path):
    """A writer killed after fsync, before its rename, leaves a complete-looking temp."""
    thaw.save(small_snapshot(), tmp_path / "s.thaw")
    temp = tmp_path / ".s.thaw.tmp-4194000-0badc0de"
    temp.write_bytes((tmp_path / "s.thaw").read_bytes())
    assert is_temp_name(temp.name)
    with pytest.raises(thaw.FormatError, match="temporary file"):
        thaw.load(temp)


def test_next_save_removes_temps_of_dead_writers_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = machine_tag()
    stale = tmp_path / f".s.thaw.tmp-{dead.pid}-{here}abcd"
    live = tmp_path / f".s.thaw.tmp-{os.getppid()}-{here}abcd"  # a running process
    other = tmp_path / f".t.thaw.tmp-{dead.pid}-{here}abcd"  # another target's
    foreign = tmp_path / f".s.thaw.tmp-{dead.pid}-{other_tag(here)}abcd"  # another host's (shared volume)
    locked = tmp_path / f".s.thaw.tmp-{dead.pid}-{here}dcba"  # its writer's lock is still held
    for p in (stale, live, other, foreign, locked):
        p.write_bytes(b"partial")
    with open(locked) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        thaw.save(small_snapshot(), tmp_path / "s.thaw")
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".s.thaw")) == sorted(
        [live.name, foreign.name, locked.name])


def other_tag(tag: str) -> str:
    return format((int(tag, 16) + 1) % 0x10000, "04x")


def test_killed_writer_leaves_no_snapshot_and_is_swept(tmp_path):
    script = ("import torch, thaw\n"
              "snap = thaw.StateSnapshot.from_tensors({f'w{i}': torch.randn(4 << 20) for i in range(16)})\n"
              f"thaw.save(snap, {str(tmp_path / 'big.thaw')!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not any(is_temp_name(p.name) for p in tmp_path.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "big.thaw").exists()
    leftovers = [p for p in tmp_path.iterdir() if is_temp_name(p.name)]
    for p in leftovers:
        with pytest.raises(thaw.FormatError):
            thaw.load(p)
    thaw.save(small_snapshot(), tmp_path / "big.thaw")
    assert [p for p in tmp_path.iterdir() if is_temp_name(p.name)] == []


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.thaw"
    os.mkfifo(fifo)
    out = subprocess.run([sys.executable, "-m", "thaw.cli", "verify", str(fifo)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode != 0 and "not a regular file" in out.stdout + out.stderr
    with pytest.raises(thaw.FormatError, match="not a regular file"):
        thaw.load(fifo)


def test_directory_target_and_missing_directory_refused_before_writing(tmp_path):
    (tmp_path / "d.thaw").mkdir()
    with pytest.raises(thaw.FormatError, match="not a regular file"):
        thaw.save(small_snapshot(), tmp_path / "d.thaw")
    with pytest.raises(FileNotFoundError, match="directory does not exist") as err:
        thaw.save(small_snapshot(), tmp_path / "missing" / "s.thaw")
    assert err.value.filename == str(tmp_path / "missing")
    assert [p.name for p in tmp_path.iterdir()] == ["d.thaw"]


def test_new_snapshots_are_private_and_resaving_keeps_the_mode(tmp_path):
    path = tmp_path / "s.thaw"
    thaw.save(small_snapshot(), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o640)
    thaw.save(small_snapshot(1), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_write_failure_names_the_file_and_the_cause(tmp_path):
    """A disk that runs out (here: a file size limit, EFBIG) is reported with the target's
    path and the system's reason, and leaves no temporary file."""
    script = ("import resource, signal, sys, torch, thaw\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
              "snap = thaw.StateSnapshot.from_tensors({'w': torch.randn(1 << 20)})\n"
              "try:\n"
              f"    thaw.save(snap, {str(tmp_path / 's.thaw')!r})\n"
              "except OSError as exc:\n"
              "    print('ERR', exc.errno, exc)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path.parent)
    line = next(l for l in out.stdout.splitlines() if l.startswith("ERR")) if "ERR" in out.stdout else out.stderr
    assert str(tmp_path / "s.thaw") in line and "too large" in line.lower(), line
    assert list(tmp_path.iterdir()) == []
    assert resource.RLIMIT_FSIZE  # the limit applied to the child only


def test_loaded_snapshot_reads_its_own_file_after_the_path_is_replaced(tmp_path):
    """Another writer replacing the snapshot (atomically, with a smaller one) does not
    disturb a loaded snapshot: reads, maps and checks go to the file it opened."""
    import torch

    path = tmp_path / "s.thaw"
    thaw.save(small_snapshot(0, pages=9), path)
    loaded = thaw.load(path)
    want_w = small_snapshot(0, pages=9).weights["w"].tensor()
    want_kv = small_snapshot(0, pages=9).kv.layers[1].tensor()
    for i in range(50):
        thaw.save(small_snapshot(i + 1, pages=4), path)
        assert torch.equal(loaded.weights["w"].tensor(), want_w)
        assert torch.equal(loaded.kv.layers[1].mapped(), want_kv)
        loaded.source.verify()
    assert thaw.load(path).kv.num_pages == 4


def test_thaw_gc_removes_dead_writers_temps_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.thaw.tmp-{dead.pid}-{machine_tag()}abcd"
    live = tmp_path / f".b.thaw.tmp-{os.getppid()}-{machine_tag()}abcd"
    keep = tmp_path / "c.thaw"
    for p in (stale, live, keep):
        p.write_bytes(b"x")
    out = subprocess.run([sys.executable, "-m", "thaw.cli", "gc", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "1 temporary file" in out.stdout and str(stale) in out.stdout
    assert not stale.exists() and live.exists() and keep.exists()


def test_tensor_parallel_sets_keep_their_mode_and_gc_removes_abandoned_staging(tmp_path):
    """A set is staged 0700 (or with the mode of the set it replaces) beside its target; a
    staging or set-aside folder whose writer died is removed by `thaw gc`, one whose writer
    still holds it is left."""
    from thaw.core.temp_files import lock_directory
    from thaw.core.tp_files import save_ranks

    save_ranks([small_snapshot(0), small_snapshot(1)], tmp_path / "set")
    assert stat.S_IMODE(os.stat(tmp_path / "set").st_mode) == 0o700
    os.chmod(tmp_path / "set", 0o750)
    save_ranks([small_snapshot(2), small_snapshot(3)], tmp_path / "set")
    assert stat.S_IMODE(os.stat(tmp_path / "set").st_mode) == 0o750
    abandoned, aside = (tmp_path / f".set.{kind}-0123456789ab" for kind in ("partial", "replaced"))
    busy = tmp_path / ".other.partial-ba9876543210"
    for folder in (abandoned, aside, busy):
        folder.mkdir()
        (folder / "rank-00000-of-00002.thaw").write_bytes(b"x")
    held = lock_directory(busy)
    try:
        out = subprocess.run([sys.executable, "-m", "thaw.cli", "gc", str(tmp_path)], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    finally:
        os.close(held)
    assert out.returncode == 0, out.stderr
    assert not abandoned.exists() and not aside.exists() and busy.exists() and (tmp_path / "set").is_dir()
    assert "2 temporary file(s) and set folder(s)" in out.stdout
