"""The contracts every engine meets: the driver protocol, the adapter and driver registry
(with third-party engines from installed packages' entry points), and errors that keep
their class across processes."""

from __future__ import annotations

import importlib
import textwrap

import pytest

from thaw.core.registry import (ADAPTER_GROUP, DRIVER_GROUP, attach, driver_spec, registered_adapters,
                               registered_drivers)
from thaw.core.errors import (ChecksumError, IdentityMismatch, RemoteError, SchemaError, ThawError,
                              WeightsInconsistent, error_reply, rebuild_error, remote_error)
from thaw.core.driver import (EngineDriver, InFlightDriver, PreparingDriver, ReferencingDriver,
                         missing_methods)
from thaw.workers import EngineWorker

from .engine_configs import EXAMPLE

DRIVERS = {
    "thaw.adapters.vllm.driver:VLLMDriver": (InFlightDriver, ReferencingDriver, PreparingDriver),
    "thaw.adapters.vllm.async_driver:AsyncVLLMDriver": (ReferencingDriver,),
    "thaw.adapters.sglang.driver:SGLangDriver": (InFlightDriver, ReferencingDriver, PreparingDriver),
    "paged_server.driver:PagedServerDriver": (InFlightDriver, ReferencingDriver),
}


def _class(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("spec", sorted(DRIVERS))
def test_every_driver_implements_the_protocols_it_is_driven_through(spec, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    cls = _class(spec)
    for protocol in (EngineDriver, *DRIVERS[spec]):
        assert missing_methods(cls, protocol) == [], (spec, protocol.__name__)


def test_a_class_missing_part_of_the_protocol_is_named():
    class Partial:
        def __init__(self, config):
            pass

        def generate(self, prompt_token_ids, max_tokens):
            return {}

    assert missing_methods(Partial, EngineDriver) == ["generate(temperature, seed)", "info", "restore",
                                                      "snapshot", "state"]


def test_registry_names_the_built_in_engines_and_refuses_unknown_ones():
    assert driver_spec("vllm") == "thaw.adapters.vllm.driver:VLLMDriver"
    assert driver_spec("pkg.mod:Driver") == "pkg.mod:Driver"
    assert {"vllm", "sglang"} <= set(registered_adapters()) & set(registered_drivers())
    with pytest.raises(SchemaError, match="unknown engine 'nope'; known: .*'vllm'"):
        driver_spec("nope")
    with pytest.raises(SchemaError, match="no thaw adapter named 'nope'"):
        attach(object(), "nope")


def test_an_installed_package_registers_its_engine_through_entry_points(tmp_path, monkeypatch):
    """A package whose metadata declares `thaw.adapters` and `thaw.drivers` entry points (a
    real distribution on sys.path, found by importlib.metadata) is attached by name, and its
    driver runs in a worker process by that name."""
    (tmp_path / "toy_engine.py").write_text(textwrap.dedent('''
        class Adapter:
            def __init__(self, engine):
                self.engine = engine

        def attach(engine):
            return Adapter(engine)

        class Driver:
            def __init__(self, config):
                self.config = config

            def info(self):
                return {"engine": "toy", **self.config}
        '''))
    dist = tmp_path / "toy_engine-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-engine\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ADAPTER_GROUP}]\ntoy = toy_engine:attach\n\n"
                                           f"[{DRIVER_GROUP}]\ntoy = toy_engine:Driver\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy" in registered_adapters() and "toy" in registered_drivers()
    assert attach("the engine", "toy").engine == "the engine"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with EngineWorker(driver_spec("toy"), {"k": 1}) as w:
        assert w.call("info") == {"engine": "toy", "k": 1}


def test_a_thaw_error_raised_in_another_process_is_that_error_here(tmp_path, monkeypatch):
    """One envelope (`error_reply` there, `remote_error` here): a ThawError subclass raised in
    a worker is that subclass in the caller, and still a RemoteError naming its type."""
    (tmp_path / "raising_driver.py").write_text(textwrap.dedent('''
        from thaw.core.errors import IdentityMismatch

        class Raising:
            def __init__(self, config):
                pass

            def mismatch(self):
                raise IdentityMismatch("dtype", "float16", "bfloat16")

            def other(self):
                raise KeyError("k")
        '''))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with EngineWorker("raising_driver:Raising", {}) as w:
        with pytest.raises(IdentityMismatch) as err:
            w.call("mismatch")
        assert isinstance(err.value, RemoteError) and err.value.type == "IdentityMismatch"
        assert "dtype is 'float16' in the snapshot" in err.value.remote_message
        with pytest.raises(RemoteError) as err:
            w.call("other")
        assert err.value.type == "KeyError" and not isinstance(err.value, IdentityMismatch)


@pytest.mark.parametrize("exc", [ChecksumError("section 'kv/0'", 1, 2), WeightsInconsistent("half"),
                                 SchemaError("bad")])
def test_the_envelope_round_trips_every_thaw_error(exc):
    reply = error_reply(exc)
    back = remote_error(reply["type"], reply["message"])
    assert type(back).__name__ == type(exc).__name__ and isinstance(back, type(exc))
    assert isinstance(back, ThawError) and back.remote_message == str(exc)
    again = rebuild_error(reply["type"], reply["message"], "in the engine core")
    assert isinstance(again, type(exc)) and str(again) == str(exc)
    assert type(remote_error(reply["type"], "x")) is type(back)  # one class per type


def test_a_foreign_error_names_where_it_was_raised():
    err = rebuild_error("ZeroDivisionError", "division by zero", "in the engine core", "Traceback ...")
    assert type(err).__name__ == "ThawError" and isinstance(err, RemoteError) and err.type == "ZeroDivisionError"
    assert str(err).startswith("in the engine core: ZeroDivisionError")
