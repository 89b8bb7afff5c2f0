"""The pre-imported parent (thaw.zygote) with a driver that needs no engine: workers forked
from it answer the worker protocol, report their death as the worker protocol does, and
close cleanly after the parent itself was closed, as its contract says."""

import os
import signal
import textwrap

import pytest

from thaw.workers import EngineWorker, RemoteError
from thaw.zygote import Zygote, ZygoteError

DRIVER = "zygote_probe_driver:Probe"


@pytest.fixture()
def driver_dir(tmp_path):
    (tmp_path / "zygote_probe_driver.py").write_text(textwrap.dedent('''
        import os

        class Probe:
            def __init__(self, config):
                self.config = config

            def whoami(self):
                return {"pid": os.getpid(), "parent": os.getppid(), "config": self.config,
                        "env": os.environ.get("PROBE_ENV")}
        '''))
    return str(tmp_path)


def test_forked_workers_serve_and_die_like_started_ones(driver_dir):
    with Zygote(["json", "zygote_probe_driver"], env={"PYTHONPATH": driver_dir}) as zygote:
        with EngineWorker(DRIVER, {"k": 1}, zygote=zygote, env={"PROBE_ENV": "set"}) as w:
            me = w.call("whoami")
            assert me == {"pid": w.proc.pid, "parent": zygote.proc.pid, "config": {"k": 1}, "env": "set"}
            with pytest.raises(RemoteError) as err:
                w.call("no_such_op")
            assert err.value.type == "AttributeError"
        assert w.proc.poll() == 0  # closed: stdin's end ends its loop, the zygote reaped it
        killed = EngineWorker(DRIVER, {}, zygote=zygote)
        os.kill(killed.proc.pid, signal.SIGKILL)
        with pytest.raises(RemoteError) as err:
            killed.call("whoami")
        assert err.value.type == "WorkerDied" and "status -9" in str(err.value)
        killed.close()


def test_a_worker_outlives_its_closed_zygote(driver_dir):
    zygote = Zygote(["zygote_probe_driver"], env={"PYTHONPATH": driver_dir})
    w = EngineWorker(DRIVER, {}, zygote=zygote)
    zygote.close()
    assert zygote.proc.returncode == 0  # left on the closed socket, not killed after the wait
    assert w.call("whoami")["pid"] == w.proc.pid and w.proc.poll() is None
    w.close()
    assert w.proc.poll() is not None


def test_a_preload_that_fails_to_import_is_named():
    with pytest.raises(ZygoteError, match="no_such_module_here"):
        Zygote(["no_such_module_here"])
