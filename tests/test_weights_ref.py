"""Snapshots that reference their weights from another snapshot file (engine-free)."""

import dataclasses
import os
import shutil

import pytest
import torch

from thaw.core import ChecksumError, IdentityMismatch, SchemaError, ThawError, load, save
from thaw.core.summary import inspect_snapshot
from thaw.core.weights_ref import referenced_file

from .helpers import small_snapshot


def trunk_and_session(tmp_path, seed: int = 0):
    """(trunk path, session path, session snapshot): the trunk holds the weights, the
    session (different KV) references them."""
    trunk_path, session_path = tmp_path / "trunk.thaw", tmp_path / "session.thaw"
    save(small_snapshot(seed), trunk_path)
    trunk = load(trunk_path)
    session = small_snapshot(seed + 1)
    session.weights = {}
    session.identity = dataclasses.replace(session.identity, weights_digest=trunk.identity.weights_digest)
    session.weights_from = str(trunk_path)
    save(session, session_path)
    return trunk_path, session_path, session


def test_session_holds_no_weights_and_loads_the_trunks(tmp_path):
    trunk_path, session_path, session = trunk_and_session(tmp_path)
    back = load(session_path, verify=True)
    trunk = load(trunk_path)
    assert back.weights_from == str(trunk_path) and back.weights_source is not back.source
    assert back.weights_source.path == str(trunk_path)
    assert sorted(back.weights) == sorted(trunk.weights)
    for name, data in trunk.weights.items():
        assert torch.equal(back.weights[name].tensor(), data.tensor())
    assert torch.equal(back.kv.layers[0].tensor(), session.kv.layers[0].tensor())
    assert not any(name.startswith("weights/") for name in back.source.sections)
    assert inspect_snapshot(back)["weights_from"] == str(trunk_path)
    assert referenced_file(session_path) == str(trunk_path)
    assert referenced_file(trunk_path) is None


def test_a_directory_of_snapshots_moves_as_one(tmp_path):
    (tmp_path / "a").mkdir()
    trunk_and_session(tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")
    back = load(tmp_path / "b" / "session.thaw")
    assert back.weights_from == str(tmp_path / "b" / "trunk.thaw")


def test_resaving_a_loaded_session_references_the_same_trunk(tmp_path):
    trunk_path, session_path, _ = trunk_and_session(tmp_path)
    os.mkdir(tmp_path / "elsewhere")
    save(load(session_path), tmp_path / "elsewhere" / "again.thaw")
    again = load(tmp_path / "elsewhere" / "again.thaw")
    assert again.weights_from == str(trunk_path)
    assert os.path.getsize(tmp_path / "elsewhere" / "again.thaw") == os.path.getsize(session_path)


def test_a_digest_other_than_the_targets_is_refused_before_writing(tmp_path):
    trunk_path, _, session = trunk_and_session(tmp_path)
    session.identity = dataclasses.replace(session.identity, weights_digest="0" * 64)
    with pytest.raises(IdentityMismatch, match="weights_digest of"):
        save(session, tmp_path / "bad.thaw")
    assert not (tmp_path / "bad.thaw").exists()
    session.identity = dataclasses.replace(session.identity, weights_digest="")
    with pytest.raises(SchemaError, match="must name their digest"):
        save(session, tmp_path / "bad.thaw")


def test_a_replaced_or_missing_trunk_is_refused_on_load(tmp_path):
    trunk_path, session_path, _ = trunk_and_session(tmp_path)
    save(small_snapshot(7), trunk_path)  # other weights under the same name
    with pytest.raises(IdentityMismatch, match="weights_digest"):
        load(session_path)
    os.unlink(trunk_path)
    with pytest.raises(FileNotFoundError, match="takes its weights from .*trunk.thaw, which is missing"):
        load(session_path)


def test_corrupt_trunk_weights_fail_a_verified_load_of_the_session(tmp_path):
    trunk_path, session_path, _ = trunk_and_session(tmp_path)
    sec = load(trunk_path).source.section("weights/w")
    with open(trunk_path, "r+b") as f:
        f.seek(sec.offset + 3)
        byte = f.read(1)
        f.seek(sec.offset + 3)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(ChecksumError):
        load(session_path, verify=True)
    unverified = load(session_path, verify=False)  # header checks only; the bytes fail when read
    with pytest.raises(ChecksumError):
        unverified.weights["w"].tensor()


def test_chains_weightless_targets_directories_and_urls_are_refused(tmp_path):
    trunk_path, session_path, session = trunk_and_session(tmp_path)
    session.weights_from = str(session_path)
    with pytest.raises(ThawError, match="references its own weights elsewhere"):
        save(session, tmp_path / "chain.thaw")
    kv_only = small_snapshot(3)
    kv_only.weights = {}
    save(kv_only, tmp_path / "kv.thaw")
    session.weights_from = str(tmp_path / "kv.thaw")
    with pytest.raises(ThawError, match="holds no weights"):
        save(session, tmp_path / "x.thaw")
    session.weights_from = str(tmp_path)
    with pytest.raises(ThawError, match="is a directory"):
        save(session, tmp_path / "x.thaw")
    session.weights_from = str(trunk_path)
    with pytest.raises(ThawError, match="local files only"):
        save(session, "s3://bucket/session.thaw")
    with pytest.raises(IdentityMismatch, match="weights_format"):
        save(dataclasses.replace(session, weights_format="vllm.parameters"), tmp_path / "x.thaw")
