"""The thaw command line, run as a user would run it."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import thaw

from .helpers import small_snapshot

THAW = [sys.executable, "-m", "thaw.cli"]


def run(*args, cwd):
    return subprocess.run([*THAW, *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def snap_path(tmp_path):
    path = tmp_path / "s.thaw"
    thaw.save(small_snapshot(), path)
    return path


def test_inspect_json_is_stable(snap_path, tmp_path):
    out = run("inspect", snap_path, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert set(info) == {"inspect_schema", "path", "file_bytes", "identity", "weights", "kv",
                         "prefix", "requests", "sections"}
    assert info["inspect_schema"] == 1
    assert info["prefix"] == {"nodes": 4, "tokens": 16, "longest_prefix": 12, "leaves": 2}
    assert info["kv"]["num_pages"] == 5 and info["kv"]["num_layers"] == 2
    assert info["requests"][0]["status"] == "running"
    assert run("inspect", snap_path, "--json", cwd=tmp_path).stdout == out.stdout


def test_verify_ok_and_corrupted(snap_path, tmp_path):
    ok = run("verify", snap_path, cwd=tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.thaw"
    shutil.copyfile(snap_path, bad)
    with open(bad, "r+b") as f:
        f.seek(os.path.getsize(bad) - 4096 - 10)
        f.write(b"\xff")
    out = run("verify", bad, cwd=tmp_path)
    assert out.returncode == 2
    assert "ChecksumError" in out.stderr and "section 'prefix/tokens'" in out.stderr


def test_verify_missing_file(tmp_path):
    out = run("verify", tmp_path / "nope.thaw", cwd=tmp_path)
    assert out.returncode == 3 and "No such file" in out.stderr


def test_diff_reports_shared_prefix(tmp_path):
    a = small_snapshot()
    b = small_snapshot()
    b.prefix.add_path(b.prefix.path(0)[0] + [9] * 4, [0, 4])
    b.identity.dtype = "bfloat16"
    thaw.save(a, tmp_path / "a.thaw")
    thaw.save(b, tmp_path / "b.thaw")
    out = run("diff", tmp_path / "a.thaw", tmp_path / "b.thaw", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["identity_differences"]["dtype"] == ["float32", "bfloat16"]
    assert d["shared_pages"] == 4 and d["shared_prefix_tokens"] == 16
    assert d["only_in_b_pages"] == 1
    assert any(x["only_in"] == "b" and x["diverges_at_token"] == 4 for x in d["divergences"])


def test_demo_runs(tmp_path):
    out = run("demo", "--core", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "tensors identical after the round trip: True" in out.stdout
    assert "corrupted copy refused" in out.stdout
