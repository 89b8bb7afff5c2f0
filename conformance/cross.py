"""Cross-engine checks: a snapshot taken in one engine restored into another.

Mix `CrossEngineConformance` into a pytest class and provide two fixtures, `source` and
`target` (each an `EngineUnderTest` over the same checkpoint and dtype). The snapshot file
is the only thing that passes between them, engines run in separate processes, and the
target engine is the oracle: its reported cached tokens, and its own cold-prefill output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import thaw
from thaw.core.layouts import named_layout
from thaw.core.recut import fit_page_size, prefix_rows
from thaw.core.errors import IdentityMismatch

from .harness import EngineUnderTest

CONTINUATION = 16


def translated_prefix(snapshot: Path, target_identity: dict, prompt: list[int]) -> int:
    """Tokens of `prompt` the target can hit after the snapshot is re-cut to its pages."""
    snap = thaw.load(snapshot, verify=False)
    src = snap.kv.layout
    # The target's layout does not change which tokens are kept; its page size does.
    layout = named_layout("thaw.nhd", target_identity["page_size"], src.num_kv_heads,
                          src.head_dim, src.dtype)
    fitted, _ = fit_page_size(snap, layout)
    page = layout.page_size
    return min(fitted.prefix.shared_prefix(prompt), (len(prompt) - 1) // page * page)


class CrossEngineConformance:
    """Provide fixtures `source` and `target` (EngineUnderTest); the prompt is the source's."""

    @pytest.fixture(scope="class")
    @classmethod
    def source_snapshot(cls, source: EngineUnderTest, tmp_path_factory) -> Path:
        path = tmp_path_factory.mktemp("cross") / "source.thaw"
        with source.engine() as parent:
            parent.call("generate", prompt_token_ids=source.prompt, max_tokens=source.max_tokens)
            parent.call("snapshot", path=str(path), **source.cross_snapshot_args)
        return path

    @pytest.fixture(scope="class")
    @classmethod
    def target_cold(cls, source: EngineUnderTest, target: EngineUnderTest) -> dict:
        with target.engine() as cold:
            return cold.call("generate", prompt_token_ids=source.prompt, max_tokens=CONTINUATION)

    def test_target_hits_the_translated_prefix_and_continues_as_its_own_cold_prefill(
            self, source, target, source_snapshot, target_cold):
        with target.fresh_engine() as child:
            identity = child.call("info")["identity"]
            report = child.call("restore", path=str(source_snapshot))
            out = child.call("generate", prompt_token_ids=source.prompt, max_tokens=CONTINUATION)
            held = Path(source_snapshot).with_name(f"held-by-{identity['engine']}.thaw")
            child.call("snapshot", path=str(held), weights=False)  # what the target now holds
        expected = translated_prefix(source_snapshot, identity, source.prompt)
        # Every K and V element of every translated token, as the target engine holds it,
        # equals the source engine's (read back through the target's own adapter).
        k0, v0 = prefix_rows(thaw.load(source_snapshot), source.prompt, expected)
        k1, v1 = prefix_rows(thaw.load(held), source.prompt, expected)
        assert torch.equal(k0, k1) and torch.equal(v0, v1), "KV rows changed on the way"
        assert expected >= 2 * max(source.page_size, target.page_size), "prompt too short to test"
        assert report["identity_differences"]["engine"] == [source_engine(source_snapshot), identity["engine"]]
        assert out["cached_tokens"] == expected
        assert out["tokens"] == target_cold["tokens"], (
            f"greedy continuation after restore {out['tokens']} differs from the target's own "
            f"cold prefill {target_cold['tokens']}")

    def test_target_of_another_dtype_or_model_refuses_before_touching(self, source, target,
                                                                      source_snapshot):
        assert target.mismatches, "the target must name at least one mismatched engine"
        for name, (overrides, field_name) in target.mismatches.items():
            with target.engine(**overrides) as other:
                before = other.call("state")
                with pytest.raises(IdentityMismatch) as err:
                    other.call("restore", path=str(source_snapshot))
                assert field_name in err.value.remote_message, (name, err.value.remote_message)
                assert other.call("state") == before, name


def source_engine(snapshot: Path) -> str:
    return thaw.load(snapshot, verify=False).identity.engine
