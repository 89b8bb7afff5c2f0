"""The thaw command line, run as a user would run it."""

import json
import os
import re
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
                         "prefix", "requests", "sections", "unchecked_bytes", "weights_from"}
    assert info["weights_from"] is None
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


def test_demo_runs_and_cleans_up(tmp_path):
    out = run("demo", "--core", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "tensors identical after the round trip: True" in out.stdout
    assert "corrupted copy refused" in out.stdout
    removed = out.stdout.strip().splitlines()[-1]
    assert removed.startswith("removed /") and "--keep" in removed
    assert not os.path.exists(removed.split()[1])


def test_demo_keep_leaves_a_snapshot_that_inspects(tmp_path):
    out = run("demo", "--core", "--keep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    kept = out.stdout.strip().splitlines()[-1]
    path = kept.split("`thaw inspect ")[1].rstrip("`")
    try:
        assert run("inspect", path, cwd=tmp_path).returncode == 0
    finally:
        shutil.rmtree(os.path.dirname(path))


def test_bare_thaw_prints_help_and_exits_with_the_usage_code(tmp_path):
    out = run(cwd=tmp_path)
    assert out.returncode == 64 and "usage: thaw" in out.stdout and "inspect" in out.stdout


def test_version(tmp_path):
    out = run("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"thaw {thaw.__version__}"


@pytest.mark.parametrize("config,message", [
    ("notjson", "thaw fork: --engine-config must be JSON"),
    ("[1, 2]", "thaw fork: --engine-config must be a JSON object, found list"),
])
def test_fork_engine_config_that_is_not_a_json_object(tmp_path, snap_path, config, message):
    out = run("fork", snap_path, "--engine-config", config, cwd=tmp_path)
    assert out.returncode == 64 and out.stderr.startswith(message) and "Traceback" not in out.stderr


def test_unknown_command_is_a_usage_error(tmp_path):
    out = run("frobnicate", cwd=tmp_path)
    assert out.returncode == 64 and "invalid choice" in out.stderr and "usage: thaw" in out.stderr


def test_inspect_of_a_core_snapshot_says_what_is_absent(tmp_path):
    path = tmp_path / "w.thaw"
    thaw.save(thaw.StateSnapshot.from_tensors({"w": __import__("torch").ones(4)}), path)
    out = run("inspect", path, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "engine     (none recorded" in out.stdout and "tp 0/1" not in out.stdout
    assert "dtype (not recorded)" in out.stdout and "layers (not recorded)" in out.stdout
    assert "kv         (none)" in out.stdout and "prefix     (none)" in out.stdout


def test_inspect_and_diff_say_which_bytes_they_did_not_check(tmp_path, snap_path):
    bad = tmp_path / "bad.thaw"
    shutil.copyfile(snap_path, bad)
    c = thaw.load(bad, verify=False).source
    with open(bad, "r+b") as f:  # one byte of KV layer 0
        f.seek(c.sections["kv/layer/0"].offset + 5)
        f.write(b"\xee")
    out = run("inspect", bad, cwd=tmp_path)
    assert out.returncode == 0
    assert "bytes of weights and KV not read (`thaw verify" in out.stdout
    info = json.loads(run("inspect", bad, "--json", cwd=tmp_path).stdout)
    assert info["unchecked_bytes"] == sum(s["length"] + (-s["length"]) % 4096 for s in info["sections"]
                                          if not s["name"].startswith("prefix/"))
    d = run("diff", snap_path, bad, cwd=tmp_path)
    assert d.returncode == 0 and d.stdout.count("not read (`thaw verify") == 2
    assert run("verify", bad, cwd=tmp_path).returncode == 2


def test_convert_into_a_missing_folder_names_the_destination(tmp_path, snap_path):
    dst = tmp_path / "no" / "such" / "out.thaw"
    out = run("convert", snap_path, dst, "--layout", "thaw.nhd", cwd=tmp_path)
    assert out.returncode == 3 and str(dst) in out.stderr and "does not exist" in out.stderr
    assert ".tmp-" not in out.stderr


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "S"], ["inspect", "S", "--json"], ["verify", "S"],
                                  ["diff", "S", "S"], ["gc", "D"]])
def test_commands_that_read_files_do_not_import_torch(tmp_path, snap_path, argv):
    """`--help`, `inspect`, `verify`, `diff` and `gc` start without torch (and `--help`
    without numpy): the command line answers in a fraction of torch's import time."""
    argv = [str(snap_path) if a == "S" else str(tmp_path) if a == "D" else a for a in argv]
    probe = ("import sys\nfrom thaw.cli import main\n"
             "try:\n    rc = main(%r)\nexcept SystemExit as e:\n    rc = e.code\n"
             "print('RC', rc, 'torch' in sys.modules, 'numpy' in sys.modules)" % argv)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    rc, torch_loaded, numpy_loaded = out.stdout.strip().splitlines()[-1].split()[1:]
    assert rc == "0" and torch_loaded == "False", out.stdout + out.stderr
    if argv == ["--help"]:
        assert numpy_loaded == "False"


def test_a_failed_verify_prints_its_error_below_the_progress_line(tmp_path, snap_path):
    """In a terminal, verify shows progress on stderr; an error starts on a line of its own."""
    import pty

    bad = tmp_path / "bad.thaw"
    shutil.copyfile(snap_path, bad)
    with open(bad, "r+b") as f:
        f.seek(os.path.getsize(bad) - 4096 - 10)
        f.write(b"\xff")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*THAW, "verify", str(bad)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=terminal, cwd=tmp_path, env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    assert proc.wait() == 2
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "verifying" in shown  # the progress line was drawn
    line = next(l for l in shown.replace("\r", "\n").splitlines() if "ChecksumError" in l)
    assert line.startswith("thaw verify: ChecksumError"), repr(shown[-400:])


def test_the_demo_names_receipts_the_readme_cites():
    from pathlib import Path

    from thaw.demo_fork import README_RECEIPTS

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    for engine, receipt in README_RECEIPTS.items():
        assert (root / receipt).is_file(), receipt
        assert receipt in readme, f"README does not cite the {engine} demo's receipt {receipt}"


def test_url_commands_name_a_server_that_cannot_be_reached(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run("status", "--url", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert out.returncode == 3 and f"cannot reach http://127.0.0.1:{port}/thaw/status" in out.stderr
