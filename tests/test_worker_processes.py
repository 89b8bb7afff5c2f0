"""Child processes and their channels, engine-free: what a local user can plant in a temporary
or working directory is never imported by a worker or the zygote, configs travel on stdin,
relative paths are resolved in the caller, a broken reply channel is a lost worker, and
SGLang's RPC replies live in a private directory."""

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

from thaw.workers import EngineWorker, WorkerLost
from thaw.zygote import Zygote

DRIVER = "probe_driver:Probe"
PLANTED = ("json", "thaw", "runpy", "probe_driver")  # a stdlib module, thaw itself, -m's runner, the driver


@pytest.fixture()
def planted(tmp_path, monkeypatch):
    """The probe driver on PYTHONPATH; a temporary directory and a working directory each
    holding modules that, if imported, leave a marker file. Yields (marker dir, driver dir)."""
    drivers, markers = tmp_path / "drivers", tmp_path / "markers"
    drivers.mkdir(), markers.mkdir()
    (drivers / "probe_driver.py").write_text(textwrap.dedent('''
        import os, sys

        class Probe:
            def __init__(self, config):
                self.config = config

            def whoami(self, path=None):
                return {"pid": os.getpid(), "cwd": os.getcwd(), "sys_path": sys.path, "path": path,
                        "config": self.config}
        '''))
    for where in ("tmp", "cwd"):
        folder = tmp_path / where
        folder.mkdir()
        for name in PLANTED:
            code = f"open({str(markers / (where + '-' + name))!r}, 'w').close()\n"
            (folder / f"{name}.py").write_text(code)
        (folder / "thaw").mkdir()
        (folder / "thaw" / "__init__.py").write_text(f"open({str(markers / (where + '-thaw-pkg'))!r}, 'w').close()\n")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "cwd")
    inherited = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(drivers), "", "relative/dir", inherited]))  # '' and relative
    return markers, drivers


def _checked(me: dict, markers, tmp_path) -> None:
    assert sorted(os.listdir(markers)) == [], "a planted module was imported"
    assert me["cwd"] == "/"
    assert not any(p in ("", ".") or not os.path.isabs(p) for p in me["sys_path"]), me["sys_path"]
    assert not any(p.startswith(str(tmp_path / "tmp")) or p.startswith(str(tmp_path / "cwd"))
                   for p in me["sys_path"])


def test_workers_import_nothing_from_the_temporary_or_working_directory(planted, tmp_path):
    markers, _ = planted
    with EngineWorker(DRIVER, {"secret": "config-on-stdin"}) as w:
        me = w.call("whoami", path="snap.thaw")
        with open(f"/proc/{w.proc.pid}/cmdline", "rb") as f:
            argv = f.read()
    _checked(me, markers, tmp_path)
    assert me["config"] == {"secret": "config-on-stdin"} and b"config-on-stdin" not in argv
    assert me["path"] == str(tmp_path / "cwd" / "snap.thaw"), "a relative path is the caller's"


def test_zygote_and_its_workers_import_nothing_from_there_either(planted, tmp_path):
    markers, _ = planted
    with Zygote(["json", "probe_driver"]) as zygote:
        with EngineWorker(DRIVER, {"k": 1}, zygote=zygote) as w:
            me = w.call("whoami")
    _checked(me, markers, tmp_path)


def test_a_broken_reply_channel_is_a_lost_worker_named(tmp_path):
    """A partial or foreign line on the reply channel (here a real process that writes one)
    is `WorkerLost` naming the worker, never a JSONDecodeError; the process is stopped."""
    for line in ('{"ok": tru', "[1, 2]", '{"ok": "yes"}'):
        w = EngineWorker(DRIVER, {}, start=False)
        w.proc.kill()
        w.proc.wait()
        w.proc = subprocess.Popen([sys.executable, "-c", f"import sys, time; print({line!r}); sys.stdout.flush(); "
                                   "time.sleep(60)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        with pytest.raises(WorkerLost, match=rf"worker {w.proc.pid} \({DRIVER}\) broke its reply channel"):
            w.wait_ready()
        assert w.proc.wait(timeout=10) != 0
        w.close()


def test_sglang_rpc_replies_are_written_in_a_private_directory():
    """The reply file of a scheduler call lives in a 0700 directory made for that call (no
    name in the shared temporary directory a local user could plant), is written 0600, and
    is gone afterwards."""
    from thaw.adapters.sglang.plugin import thaw_call
    from thaw.adapters.sglang.rpc import call_thaw

    seen = {}

    def send(params):  # what SGLang's RPC delivers to the scheduler's thaw_call
        folder = os.path.dirname(params["reply_path"])
        seen["folder"], seen["folder_mode"] = folder, stat.S_IMODE(os.stat(folder).st_mode)
        thaw_call(None, params["op"], params["args_json"], params["reply_path"])
        seen["file_mode"] = stat.S_IMODE(os.stat(params["reply_path"]).st_mode)

    reply = call_thaw(send, "no_such_op", {})
    assert reply["ok"] is False and "unknown thaw operation" in reply["message"]
    assert seen["folder"] != tempfile.gettempdir() and seen["folder_mode"] == 0o700 and seen["file_mode"] == 0o600
    assert not os.path.exists(seen["folder"])


def test_child_environment_drops_entries_python_reads_as_the_working_directory():
    from thaw.child_process import child_env

    env = child_env({"PYTHONPATH": f"/abs/a{os.pathsep}{os.pathsep}rel{os.pathsep}./x{os.pathsep}/abs/b"}, base={})
    assert env == {"PYTHONPATH": f"/abs/a{os.pathsep}/abs/b", "PYTHONSAFEPATH": "1"}
    assert "PYTHONPATH" not in child_env({"PYTHONPATH": "rel"}, base={})
    assert json.loads(json.dumps(env)) == env


POOL_DRIVER = textwrap.dedent('''
    import os

    class Counted:
        """Starts record their pid in config["starts"]; the start numbered config["fail_at"] fails."""

        def __init__(self, config):
            with open(config["starts"], "a+") as f:
                f.write(f"{os.getpid()}\\n")
                f.seek(0)
                count = len(f.read().split())
            if count == config.get("fail_at"):
                raise RuntimeError(f"start {count} fails")

        def pid(self):
            return os.getpid()

        def die_once(self, marker):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return os.getpid()
    ''')


@pytest.fixture()
def pool_driver(tmp_path):
    (tmp_path / "pool_probe.py").write_text(POOL_DRIVER)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_pool_that_fails_to_start_leaves_no_engine_running(tmp_path, pool_driver):
    from thaw.fleet import EnginePool, LocalPlacement
    from thaw.workers import RemoteError

    starts = tmp_path / "starts"
    with pytest.raises(RemoteError, match="start 3 fails"):
        EnginePool("pool_probe:Counted", {"starts": str(starts), "fail_at": 3}, 3,
                   placement=LocalPlacement(env=pool_driver))
    pids = [int(p) for p in starts.read_text().split()]
    assert len(pids) == 3 and not any(_alive(p) for p in pids)


def test_a_replaced_engine_is_closed(tmp_path, pool_driver):
    """The engine that died mid-call is closed when replaced (its log goes), and the work is
    re-run on the replacement."""
    from thaw.fleet import EnginePool, LocalPlacement

    with EnginePool("pool_probe:Counted", {"starts": str(tmp_path / "starts")}, 1,
                    placement=LocalPlacement(env=pool_driver)) as pool:
        first = pool.engines[0]
        log = first.worker.log.name
        pid = pool._holding(0, "a call that kills its engine once",
                            lambda engine, attempt: engine.call("die_once", marker=str(tmp_path / "died")))
        assert pool.replaced == 1 and pool.engines[0] is not first and pid == pool.engines[0].pid
        assert not os.path.exists(log)
