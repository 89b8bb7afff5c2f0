"""Where a pool's engines run: child processes of this one, or Ray actors on a cluster.

A placement starts one engine from a driver spec and config (see `thaw.workers`) and gives
back an `Engine`: `call(op, **args)` runs one driver operation and returns its JSON-able
result, or raises `EngineLost` when the engine's process or actor has died (any other
failure keeps its type, as `RemoteError` or Ray's task error); `close()` stops it.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from thaw.core.errors import ThawError


class EngineLost(ThawError):
    """The engine's process or actor died during a call; its work must be re-run elsewhere."""


class Engine(Protocol):
    name: str

    def call(self, op: str, **args: Any) -> Any: ...

    def close(self) -> None: ...


class _LocalEngine:
    def __init__(self, name: str, driver: str, config: dict[str, Any], env: Optional[dict[str, str]],
                 zygote: Any = None) -> None:
        from thaw.workers import EngineWorker

        self.name = name
        self.worker = EngineWorker(driver, config, env=env, start=False, zygote=zygote)

    @property
    def pid(self) -> int:
        return self.worker.proc.pid

    def wait_ready(self) -> None:
        self._lost_if_dead(self.worker.wait_ready)

    def call(self, op: str, **args: Any) -> Any:
        return self._lost_if_dead(lambda: self.worker.call(op, **args))

    def _lost_if_dead(self, fn: Any) -> Any:
        from thaw.workers import RemoteError

        try:
            return fn()
        except RemoteError as exc:
            if exc.type == "WorkerDied":
                raise EngineLost(f"engine {self.name} (process {self.pid}) died: {exc.remote_message}") from None
            raise
        except BrokenPipeError:  # writing to a dead worker's pipe
            if self.worker.proc.poll() is None:
                raise
            raise EngineLost(f"engine {self.name} (process {self.pid}) died with status "
                             f"{self.worker.proc.returncode}") from None

    def close(self) -> None:
        self.worker.close()


class LocalPlacement:
    """Each engine in a child process of this one (`thaw.workers.EngineWorker`), started
    in parallel; `env` is added to each child's environment. With `preload` (e.g.
    ``thaw.adapters.vllm.driver.PRELOAD``) engines are forked from one pre-imported
    parent (`thaw.zygote`), started with the placement, so an engine started later (a
    replacement) skips the imports; `close()` stops that parent."""

    def __init__(self, env: Optional[dict[str, str]] = None, preload: Optional[list[str]] = None) -> None:
        from thaw.zygote import Zygote

        self.env = env
        self.zygote = Zygote(preload, env=env) if preload else None

    def start(self, name: str, driver: str, config: dict[str, Any]) -> _LocalEngine:
        return _LocalEngine(name, driver, config, self.env, self.zygote)

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()

    def wait_ready(self, engine: _LocalEngine) -> None:
        engine.wait_ready()


class _RayEngine:
    def __init__(self, name: str, actor: Any) -> None:
        self.name, self.actor = name, actor
        self._ready = actor.ready.remote()

    def wait_ready(self) -> None:
        self._get(self._ready)

    def call(self, op: str, **args: Any) -> Any:
        from thaw.child_process import with_absolute_paths

        return self._get(self.actor.call.remote(op, with_absolute_paths(args)))  # the actor's directory is Ray's

    def _get(self, ref: Any) -> Any:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        try:
            return ray.get(ref)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
            raise EngineLost(f"engine {self.name} (Ray actor) died: {type(exc).__name__}") from None

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


class RayPlacement:
    """Each engine in a Ray actor holding the driver in its process, placed by Ray by the
    resources given (default one CPU; e.g. ``{"num_gpus": 1}`` for a GPU each). Connects
    to the running cluster (``ray.init()`` with its defaults) unless one is connected."""

    def __init__(self, resources: Optional[dict[str, Any]] = None,
                 runtime_env: Optional[dict[str, Any]] = None) -> None:
        self.resources = resources or {"num_cpus": 1}
        self.runtime_env = runtime_env
        self._actor_class: Any = None

    def _actor(self) -> Any:
        import ray

        if not ray.is_initialized():
            ray.init()
        if self._actor_class is None:
            self._actor_class = ray.remote(max_restarts=0)(_DriverActor)
        return self._actor_class

    def close(self) -> None:
        """Nothing to stop: the actors went with their engines."""

    def start(self, name: str, driver: str, config: dict[str, Any]) -> _RayEngine:
        options: dict[str, Any] = dict(self.resources)
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        return _RayEngine(name, self._actor().options(name=None, **options).remote(driver, config))

    def wait_ready(self, engine: _RayEngine) -> None:
        engine.wait_ready()


class _DriverActor:
    """A driver (see `thaw.workers`) inside a Ray actor: built when the actor starts."""

    def __init__(self, driver: str, config: dict[str, Any]) -> None:
        from thaw.workers import _load_driver

        self.driver = _load_driver(driver)(config)

    def ready(self) -> str:
        return "ready"

    def pid(self) -> int:
        import os

        return os.getpid()

    def call(self, op: str, args: dict[str, Any]) -> Any:
        return getattr(self.driver, op)(**args)
