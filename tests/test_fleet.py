"""A pool of started vLLM engines forking one snapshot into many branches, on this machine
(child processes) and on a local Ray cluster (actors), with an engine killed mid-call:
every branch comes back exactly once, with the full trunk cached and the tokens its seed
gives anywhere."""

import os
import signal

import pytest

from thaw.adapters.vllm.driver import PRELOAD
from thaw.fleet import EnginePool, LocalPlacement, RayPlacement
from thaw.workers import EngineWorker

from .engine_configs import tiny_models
from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine]
PROMPT = [4 + (i * 37) % 500 for i in range(300)]
FULL_BLOCKS = 300 // 32 * 32
DRIVER = "thaw.adapters.vllm.driver:VLLMDriver"


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    model, _ = tiny_models(tmp_path_factory.mktemp("models"))
    path = str(tmp_path_factory.mktemp("snaps") / "trunk.thaw")
    with EngineWorker(DRIVER, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        parent.call("snapshot", path=path)
        PARENT_CACHED_OUTPUT[:] = parent.call("generate", prompt_token_ids=PROMPT, max_tokens=8)["tokens"]
    return model, path


PARENT_CACHED_OUTPUT: list[int] = []  # the parent's greedy output with the trunk cached


@pytest.fixture(scope="module")
def local_pool(trunk):
    model, path = trunk
    # engines forked from one parent that imported vLLM once (thaw.zygote)
    placement = LocalPlacement(preload=PRELOAD)
    with EnginePool("vllm", {"model": model, "load_format": "dummy"}, 2, placement=placement) as pool:
        yield pool


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def local_branches(trunk, local_pool):
    """Six branches from a local pool of two engines: the reference for every later fork."""
    path = trunk[1]
    first = local_pool.fork(path, 6, prompt=PROMPT, max_tokens=8, seed=100)
    again = local_pool.fork(path, 6, prompt=PROMPT, max_tokens=8, seed=100)
    return first, again


def test_local_pool_forks_every_branch_once_from_the_trunk(local_branches):
    first, again = local_branches
    assert [b.index for b in first] == list(range(6)) and [b.seed for b in first] == list(range(100, 106))
    assert {b.engine for b in first} == {"engine-0", "engine-1"}
    assert all(b.cached_tokens == FULL_BLOCKS and b.attempts == 1 for b in first)
    assert len({tuple(b.tokens) for b in first}) > 1  # seeds diverge
    assert [b.tokens for b in again] == [b.tokens for b in first]  # a branch is its seed


def test_a_prepared_pool_serves_concurrent_requests_from_the_trunk(trunk, local_pool, local_branches):
    from concurrent.futures import ThreadPoolExecutor

    path = trunk[1]
    assert {_parent_pid(e.pid) for e in local_pool.engines} == {local_pool.placement.zygote.proc.pid}
    assert sorted(local_pool.prepare(path)) == ["engine-0", "engine-1"]
    local_pool.engines[0].call("reset_prefix_cache")  # engine-0 must restore the trunk's pages again
    with ThreadPoolExecutor(max_workers=3) as threads:  # three requests, two engines: one waits
        served = list(threads.map(lambda _: local_pool.request(path, PROMPT, max_tokens=8), range(3)))
    assert {s.engine for s in served} == {"engine-0", "engine-1"}
    assert all(s.cached_tokens == FULL_BLOCKS and s.attempts == 1 for s in served)
    assert all(s.tokens == PARENT_CACHED_OUTPUT for s in served)  # greedy, as the parent's own cached run
    assert all(s.seconds >= s.wait_seconds + s.restore_seconds + s.generate_seconds for s in served)


def test_a_local_engine_killed_mid_call_is_replaced_and_its_branches_rerun(trunk, local_pool, local_branches):
    path = trunk[1]
    state: dict = {}
    events = []

    def on_event(kind, info):
        events.append((kind, info.get("engine")))
        if kind == "generate" and info["branches"][0] == 3 and not state:
            state["killed"] = info["engine"]
            engine = next(e for e in local_pool.engines if e.name == info["engine"])
            os.kill(engine.pid, signal.SIGKILL)

    local_pool.on_event, replaced = on_event, local_pool.replaced
    try:
        out = local_pool.fork(path, 6, prompt=PROMPT, max_tokens=8, seed=100)
        assert local_pool.replaced == replaced + 1 and ("lost", state["killed"]) in events
    finally:
        local_pool.on_event = lambda kind, info: None
    assert [b.index for b in out] == list(range(6))
    assert [b.attempts for b in out] == [1, 1, 1, 2, 2, 2]
    assert all(b.cached_tokens == FULL_BLOCKS for b in out)
    assert [b.tokens for b in out] == [b.tokens for b in local_branches[0]]
    # the replacement holds neither weights nor trunk: preparing the pool again restores both there
    fresh = next(e for e in local_pool.engines if e.name not in ("engine-0", "engine-1"))
    assert _parent_pid(fresh.pid) == local_pool.placement.zygote.proc.pid  # forked, not started afresh
    assert fresh.name in local_pool.prepare(path)
    out = fresh.call("generate", prompt_token_ids=PROMPT, max_tokens=8)
    assert out["cached_tokens"] == FULL_BLOCKS and out["tokens"] == PARENT_CACHED_OUTPUT


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster started from a scratch directory: Ray puts the driver's working
    directory on its workers' import path, and from a source checkout that would shadow
    the installed thaw (and its compiled movers)."""
    ray = pytest.importorskip("ray", reason="needs ray (pip install thaw[ray]); .ci/run installs it")
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()
    finally:
        os.chdir(here)


def test_ray_pool_gives_the_same_branches_and_survives_a_killed_actor(trunk, local_branches, ray_cluster):
    model, path = trunk
    state: dict = {}

    def on_event(kind, info):
        if kind == "generate" and info["branches"][0] == 3 and not state:
            state["killed"] = info["engine"]
            engine = next(e for e in pool.engines if e.name == info["engine"])
            ray_cluster.kill(engine.actor, no_restart=True)

    pool = EnginePool("vllm", {"model": model, "load_format": "dummy"}, 2,
                      placement=RayPlacement({"num_cpus": 1}), on_event=on_event)
    try:
        out = pool.fork(path, 6, prompt=PROMPT, max_tokens=8, seed=100)
        assert pool.replaced == 1 and state["killed"]
    finally:
        pool.close()
    assert [b.index for b in out] == list(range(6)) and [b.attempts for b in out] == [1, 1, 1, 2, 2, 2]
    assert all(b.cached_tokens == FULL_BLOCKS for b in out)
    assert [b.tokens for b in out] == [b.tokens for b in local_branches[0]]


def test_the_command_line_forks_over_a_pool(trunk, local_branches, tmp_path):
    import json
    import subprocess
    import sys

    model, path = trunk
    out = subprocess.run([sys.executable, "-m", "thaw.cli", "fleet", path, "--engines", "1", "--branches", "2",
                          "--max-tokens", "8", "--seed", "100", "--json",
                          "--engine-config", json.dumps({"model": model, "load_format": "dummy"})],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    branches = json.loads(out.stdout)
    # the default prompt is the trunk's cached path itself, whose last block vLLM recomputes
    assert [b["index"] for b in branches] == [0, 1] and all(b["cached_tokens"] == FULL_BLOCKS - 32 for b in branches)
