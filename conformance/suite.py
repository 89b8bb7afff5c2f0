"""The checks. Each test names the engine behaviour it relies on as its oracle."""

from __future__ import annotations

import shutil
import pytest
import torch

import thaw
from thaw.core.container import Container
from thaw.core.snapshot_io import weights_digest
from thaw.core.errors import ChecksumError, IdentityMismatch, RemoteError, WeightsInconsistent

from .harness import EngineUnderTest, Trunk, build_trunk


class SnapshotRestoreConformance:
    """Mix into a pytest class; provide a fixture `engine_under_test` -> EngineUnderTest."""

    @pytest.fixture(scope="class")
    @classmethod
    def trunk(cls, engine_under_test: EngineUnderTest, tmp_path_factory) -> Trunk:
        return build_trunk(engine_under_test, tmp_path_factory.mktemp("trunk"))

    # -- the restored prefix is really used -------------------------------------------
    def test_restored_engine_hits_prefix_and_matches_parent(self, engine_under_test, trunk):
        eut = engine_under_test
        expected = eut.expected_cached(trunk.trunk_path, eut.prompt)
        assert expected >= 2 * eut.page_size, "the prompt must fill several pages"
        assert trunk.cached["cached_tokens"] == expected, "parent's own second run is the reference"
        with eut.fresh_engine() as child:
            child.call("restore", path=str(trunk.trunk_path))
            out = child.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
        assert out["cached_tokens"] == expected
        assert out["tokens"] == trunk.cached["tokens"]

    def test_control_without_restore_has_no_hits(self, engine_under_test, trunk):
        with engine_under_test.engine() as control:
            out = control.call("generate", prompt_token_ids=engine_under_test.prompt,
                               max_tokens=engine_under_test.max_tokens)
        assert out["cached_tokens"] == 0
        assert out["tokens"] == trunk.cold["tokens"]

    def test_restored_kv_is_what_the_engine_reads(self, engine_under_test, trunk, tmp_path):
        """Same tree and checksums-valid file, KV bytes replaced: hits stay, output changes."""
        eut = engine_under_test
        snap = thaw.load(trunk.trunk_path)
        g = torch.Generator().manual_seed(1)
        snap.kv.layers = [thaw.TensorData.of(torch.randn(layer.shape, generator=g).to(layer.dtype))
                          for layer in snap.kv.layers]
        forged = tmp_path / "random-kv.thaw"
        thaw.save(snap, forged)
        with eut.engine() as child:
            child.call("restore", path=str(forged), weights=False)
            out = child.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
        assert out["cached_tokens"] == eut.expected_cached(trunk.trunk_path, eut.prompt)
        assert out["tokens"] != trunk.cached["tokens"]

    # -- refusals leave the engine as it was --------------------------------------------
    def test_corrupted_file_refused_engine_untouched(self, engine_under_test, trunk, tmp_path):
        eut = engine_under_test
        bad = tmp_path / "corrupted.thaw"
        shutil.copyfile(trunk.trunk_path, bad)
        sec = Container(bad).sections["kv/layer/0"]
        with open(bad, "r+b") as f:
            f.seek(sec.offset + sec.length // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x10]))
        with eut.engine() as target:
            before = target.call("state")
            with pytest.raises(ChecksumError) as err:  # raised in the engine's process, that class here
                target.call("restore", path=str(bad))
            assert "kv/layer/0" in err.value.remote_message
            assert target.call("state") == before
            out = target.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
        assert out["cached_tokens"] == 0 and out["tokens"] == trunk.cold["tokens"]

    def test_mismatched_engines_refused_and_still_serve(self, engine_under_test, trunk):
        eut = engine_under_test
        assert eut.mismatches, "an adapter must name at least one mismatched engine"
        for name, (overrides, field_name) in eut.mismatches.items():
            with eut.engine(**overrides) as target:
                before = target.call("state")
                with pytest.raises(IdentityMismatch) as err:
                    target.call("restore", path=str(trunk.trunk_path))
                assert field_name in err.value.remote_message, (name, err.value.remote_message)
                assert target.call("state") == before, name
                out = target.call("generate", prompt_token_ids=eut.prompt[:40], max_tokens=2)
                assert len(out["tokens"]) == 2 and out["cached_tokens"] == 0, name

    # -- a restore that brings other weights -------------------------------------------
    def test_weights_swap_leaves_no_cache_hit_of_the_old_weights(self, engine_under_test, trunk, tmp_path,
                                                                  tmp_path_factory):
        """A fresh engine answers a warm-up request (its KV computed with dummy weights), then
        restores the trunk: the trunk's own path, which the warm-up cached too, must be served
        from the snapshot's KV. Then it caches another prompt with the trunk's weights and
        restores a snapshot of other real weights that holds neither prompt: both must come
        back with no cached tokens and the continuation an engine of those weights gives. A
        restore with weights while a request runs is refused by name, the engine unchanged."""
        eut = engine_under_test
        if eut.other_weights is None:
            pytest.skip("the adapter names no engine with other weights (other_weights=None)")
        other = [5 + (i * 29) % 490 for i in range(len(eut.prompt) // 2)]
        retrained, oracle = _other_weights_snapshot(eut, other, tmp_path_factory)
        with eut.fresh_engine() as engine:
            engine.call("generate", prompt_token_ids=eut.prompt, max_tokens=2)  # the operator's warm-up
            engine.call("restore", path=str(trunk.trunk_path))
            out = engine.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
            assert out["cached_tokens"] == eut.expected_cached(trunk.trunk_path, eut.prompt)
            assert out["tokens"] == trunk.cached["tokens"], "served from KV the warm-up computed with dummy weights"
            engine.call("generate", prompt_token_ids=other, max_tokens=2)  # cached with the trunk's weights
            if eut.carries_requests:
                engine.call("add_request", request_id="running-0", prompt_token_ids=other,
                            max_tokens=eut.inflight_max_tokens)
                engine.call("step", n=1)
                before = engine.call("state")
                with pytest.raises(RemoteError) as err:
                    engine.call("restore", path=str(retrained))
                assert "running-0" in err.value.remote_message
                assert engine.call("state") == before
                engine.call("finish")
            engine.call("restore", path=str(retrained))
            for name, prompt in (("prompt", eut.prompt), ("other", other)):
                got = engine.call("generate", prompt_token_ids=prompt, max_tokens=eut.max_tokens)
                assert (got["cached_tokens"], got["tokens"]) == (0, oracle[name]["tokens"]), name
            # weights whose last tensor has the wrong shape: refused before any change where the
            # engine checks shapes first (IdentityMismatch), else they fail to load partway and
            # the engine says so and takes no snapshot until a restore with weights succeeds
            with pytest.raises(RemoteError) as err:
                engine.call("restore", path=str(_with_a_misshapen_last_tensor(trunk.trunk_path, tmp_path)))
            assert isinstance(err.value, (WeightsInconsistent, IdentityMismatch)), err.value
            if isinstance(err.value, WeightsInconsistent):
                with pytest.raises(WeightsInconsistent):
                    engine.call("snapshot", path=str(tmp_path / "half.thaw"))
                assert not (tmp_path / "half.thaw").exists()
            engine.call("restore", path=str(trunk.trunk_path))
            out = engine.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
            assert (out["cached_tokens"], out["tokens"]) == (eut.expected_cached(trunk.trunk_path, eut.prompt),
                                                             trunk.cached["tokens"])

    # -- in-flight requests and fork ----------------------------------------------------
    def test_inflight_request_resumes_to_uninterrupted_result(self, engine_under_test, trunk):
        if not engine_under_test.carries_requests:
            pytest.skip("this way of running the engine does not carry in-flight requests (carries_requests=False)")
        oracle = engine_under_test.resume_oracle
        if oracle not in ("uninterrupted", "resubmitted"):
            pytest.fail(f"resume_oracle {oracle!r}: 'uninterrupted' or 'resubmitted'")
        snap = thaw.load(trunk.inflight_path)
        req = next(r for r in snap.requests if r.request_id == "inflight-0")
        assert 0 < len(req.output_token_ids) < engine_under_test.inflight_max_tokens
        with engine_under_test.fresh_engine() as child:
            child.call("restore", path=str(trunk.inflight_path))
            done = child.call("finish")
        got = done["inflight-0"]
        want = trunk.uninterrupted if oracle == "uninterrupted" else trunk.extra["resubmitted"]
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            pytest.fail(f"resumed output differs from the {oracle} run at output token {at} of {len(want)} "
                        f"({len(req.output_token_ids)} were carried in the snapshot); "
                        f"resumed {got[max(0, at - 3):at + 5]}, {oracle} {want[max(0, at - 3):at + 5]}")

    def test_snapshot_into_a_retired_file_restores_like_a_fresh_one(self, engine_under_test, trunk):
        """The session snapshot written over a retired snapshot's file (`recycle`; the retired
        file was larger, so the new one was cut to size): the retired name is gone, the file
        holds the same KV, tree and weights reference as the session snapshot written fresh,
        and a fresh engine restored from it hits the prefix and answers as the parent."""
        eut = engine_under_test
        if trunk.recycled_path is None:
            pytest.skip("the driver's snapshot takes no weights_from/direct/recycle (references_weights=False)")
        assert not (trunk.recycled_path.parent / "retired.thaw").exists(), "the retired file was taken over"
        fresh, recycled = thaw.load(trunk.session_path), thaw.load(trunk.recycled_path)  # every CRC checked
        assert recycled.weights_from == fresh.weights_from == str(trunk.trunk_path)
        assert recycled.prefix.shared_prefix(eut.prompt) == fresh.prefix.shared_prefix(eut.prompt)
        assert [torch.equal(a.tensor(), b.tensor()) for a, b in zip(recycled.kv.layers, fresh.kv.layers)] \
            == [True] * len(fresh.kv.layers)
        with eut.fresh_engine() as child:
            child.call("restore", path=str(trunk.recycled_path))
            out = child.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
        assert out["cached_tokens"] == eut.expected_cached(trunk.trunk_path, eut.prompt)
        assert out["tokens"] == trunk.cached["tokens"]

    def test_in_memory_capture_is_the_snapshot_and_restores(self, engine_under_test, trunk):
        """`EngineAdapter.capture` of the parent, taken right after the trunk's snapshot, holds
        the same tree and pages, whatever process the engine's state lives in, and restores
        from memory into the parent (every page already cached, nothing written twice)."""
        if trunk.captured is None:
            pytest.skip("the driver has no capture/restore_captured (thaw.core.driver.CapturingDriver)")
        snap = thaw.load(trunk.trunk_path, verify=False)
        got = trunk.captured
        assert got["adapter"], "the handle is not a thaw.core.adapter.EngineAdapter"
        assert (got["tree_tokens"], got["pages"]) == (snap.prefix.num_tokens, snap.kv.num_pages)
        restored = got["restored"]
        assert restored.get("pages_written", restored.get("new_tokens")) == 0, restored

    def test_fork_four_children_hit_prefix_and_diverge(self, engine_under_test, trunk):
        """Forked from the session snapshot: its weights come from the trunk's file, and it
        was written past the page cache."""
        from thaw.fork import fork

        eut = engine_under_test
        if eut.references_weights:
            session = thaw.load(trunk.session_path, verify=False)
            assert session.weights_from == str(trunk.trunk_path)
            assert not any(n.startswith("weights/") for n in session.source.sections)
        n = eut.fork_children
        children = fork(str(trunk.session_path), n, engine=eut.fork_engine,
                        engine_config={**eut.config, **eut.fresh_config},
                        prompt=eut.prompt, max_tokens=eut.max_tokens, temperature=1.0,
                        seeds=[11 + i for i in range(n)])
        expected = eut.expected_cached(trunk.trunk_path, eut.prompt)
        assert [c.cached_tokens for c in children] == [expected] * n
        assert all(c.greedy_tokens == trunk.cached["tokens"] for c in children)
        assert len({tuple(c.tokens) for c in children}) > 1, "seeded children should diverge"


def _with_a_misshapen_last_tensor(path, workdir):
    """A copy of the snapshot at `path` whose last checkpoint tensor (in the order the
    engine loads them) has half its rows: valid checksums, identity intact."""
    snap = thaw.load(path)
    last = list(snap.weights)[-1]
    full = snap.weights[last].tensor()
    snap.weights[last] = thaw.TensorData.of(full[: max(1, full.shape[0] // 2)].clone())
    for data in list(snap.weights.values()) + snap.kv.layers:
        data.load()
    snap.identity.weights_digest = weights_digest(snap.weights)  # a file consistent in itself
    forged = workdir / "misshapen.thaw"
    thaw.save(snap, forged)
    return forged


# (driver package, config of the engine with other weights, prompts) -> its snapshot and
# outputs: made once for every class that runs the same engine, however it runs it (config
# keys below choose processes, not what the engine computes).
_OTHER_WEIGHTS: dict = {}
WHERE_IT_RUNS = ("thaw_engine", "distributed_executor_backend")


def _other_weights_snapshot(eut, other, tmp_path_factory):
    """A snapshot of an engine serving `eut.other_weights` that holds neither `eut.prompt`
    nor `other` (it cached an unrelated prompt), and that engine's cold greedy output for
    each: the oracle of a restore of those weights."""
    config = {k: v for k, v in {**eut.config, **eut.other_weights}.items() if k not in WHERE_IT_RUNS}
    key = (eut.driver.rsplit(".", 1)[0], repr(sorted(config.items())), tuple(eut.prompt), tuple(other),
           eut.max_tokens)
    if key not in _OTHER_WEIGHTS:
        unrelated = [7 + (i * 13) % 480 for i in range(len(eut.prompt) // 2)]
        path = tmp_path_factory.mktemp("other-weights") / "retrained.thaw"
        with eut.engine(**eut.other_weights) as source:
            source.call("generate", prompt_token_ids=unrelated, max_tokens=2)
            source.call("snapshot", path=str(path))  # other weights; holds `unrelated` only
            oracle = {name: source.call("generate", prompt_token_ids=p, max_tokens=eut.max_tokens)
                      for name, p in (("prompt", eut.prompt), ("other", other))}
        assert [o["cached_tokens"] for o in oracle.values()] == [0, 0]
        _OTHER_WEIGHTS[key] = (path, oracle)
    return _OTHER_WEIGHTS[key]
