"""The rules every server's thaw endpoints share (`thaw.endpoints`), engine-free."""

import os

import pytest

from thaw.core import save
from thaw.endpoints import HTTPRefusal, checked_request, parse_body, refusal_of, resolve_path

from .helpers import small_snapshot

FIELDS = {"snapshot": {"path", "weights", "weights_from", "direct", "recycle"}, "restore": {"path", "weights", "trust_unknown_weights"}}


def test_snapshot_directory_is_required_and_confines_paths(tmp_path):
    with pytest.raises(HTTPRefusal, match="THAW_SNAPSHOT_DIR"):
        resolve_path("a.thaw", None)
    (tmp_path / "sub").mkdir()
    assert resolve_path("sub/a.thaw", str(tmp_path)) == str(tmp_path / "sub" / "a.thaw")
    os.symlink("/etc", tmp_path / "escape")
    for path in ("../a.thaw", "/etc/passwd", "escape/passwd", "", None, 3):
        with pytest.raises(HTTPRefusal, match="outside|non-empty"):
            resolve_path(path, str(tmp_path))


def test_snapshot_urls_are_taken_only_under_the_operators_prefixes(tmp_path):
    with pytest.raises(HTTPRefusal, match="THAW_SNAPSHOT_URLS"):
        resolve_path("s3://bucket/a.thaw", str(tmp_path), None)
    allowed = "s3://bucket/snaps, s3://other/x"
    assert resolve_path("s3://bucket/snaps/a.thaw", None, allowed) == "s3://bucket/snaps/a.thaw"
    for url in ("s3://bucket/snapshots/a.thaw", "s3://bucket/snaps/../b.thaw", "s3://bucket/a.thaw",
                "gs://bucket/snaps/a.thaw", "s3://bucket/snaps/./a.thaw"):
        with pytest.raises(HTTPRefusal, match="not under the allowed"):
            resolve_path(url, str(tmp_path), allowed)


def test_request_bodies_are_checked_and_never_carry_requests(tmp_path):
    env = {"THAW_SNAPSHOT_DIR": str(tmp_path)}
    assert checked_request("snapshot", {"path": "a.thaw", "weights": False}, FIELDS, env) == {
        "path": str(tmp_path / "a.thaw"), "weights": False, "requests": False}
    assert checked_request("snapshot", {"path": "a.thaw", "direct": True}, FIELDS, env)["direct"] is True
    refusals = [("snapshot", {"path": "a.thaw", "requests": True}, 400, "unknown fields"),
                ("delete", {"path": "a.thaw"}, 404, "no thaw endpoint"),
                ("restore", {}, 400, "non-empty"),
                ("snapshot", {"path": "a.thaw", "direct": "yes"}, 400, r"\['direct'\] must be true or false"),
                ("restore", {"path": "a.thaw", "weights": 0}, 400, r"\['weights'\] must be true or false")]
    for op, body, status, text in refusals:
        with pytest.raises(HTTPRefusal, match=text) as caught:
            checked_request(op, body, FIELDS, env)
        assert caught.value.status == status and caught.value.body()["error"]["message"] == str(caught.value)
    for raw in (b"[1]", b"{", b"\xff"):
        with pytest.raises(HTTPRefusal, match="JSON object"):
            parse_body(raw)
    assert parse_body(b"") == {}


def test_engine_replies_become_results_or_typed_http_errors():
    assert refusal_of({"ok": True, "result": {"a": 1}}, "here") == {"a": 1}
    cases = [({"ok": False, "type": "ChecksumError", "message": "m"}, 422),
             ({"ok": False, "type": "ThawError", "message": "m"}, 400),
             ({"ok": False, "type": "RuntimeError", "message": "m", "traceback": "t"}, 500),
             ({"ok": False, "type": "FileNotFoundError", "message": "m", "traceback": "t"}, 404),
             ("garbage", 500)]
    for reply, status in cases:
        with pytest.raises(HTTPRefusal) as caught:
            refusal_of(reply, "here")
        assert caught.value.status == status


def test_a_recycled_file_is_named_inside_the_snapshot_directory(tmp_path):
    """`recycle` names a file the snapshot takes over (renamed, then overwritten): it is
    confined like `path`, and never a URL."""
    root = tmp_path / "root"
    root.mkdir()
    env = {"THAW_SNAPSHOT_DIR": str(root)}
    assert checked_request("snapshot", {"path": "new.thaw", "recycle": "old.thaw"}, FIELDS, env)["recycle"] \
        == str(root / "old.thaw")
    for bad, text in (("../outside/old.thaw", "outside"), ("/etc/passwd", "outside"),
                      ("s3://bucket/old.thaw", "retired snapshot"), (3, "retired snapshot")):
        with pytest.raises(HTTPRefusal, match=text):
            checked_request("snapshot", {"path": "new.thaw", "recycle": bad}, FIELDS, env)
    with pytest.raises(HTTPRefusal, match="unknown fields"):
        checked_request("restore", {"path": "new.thaw", "recycle": "old.thaw"}, FIELDS, env)


def test_referenced_weights_stay_inside_the_snapshot_directory(tmp_path):
    """weights_from is confined like path; a restore of a snapshot whose weights are
    referenced from outside the directory is refused before the engine reads anything."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    env = {"THAW_SNAPSHOT_DIR": str(root)}
    assert checked_request("snapshot", {"path": "s.thaw", "weights_from": "t.thaw"}, FIELDS, env)["weights_from"] \
        == str(root / "t.thaw")
    for bad, text in (("../outside/t.thaw", "outside"), ("s3://bucket/t.thaw", "local files only"), (3, "local")):
        with pytest.raises(HTTPRefusal, match=text):
            checked_request("snapshot", {"path": "s.thaw", "weights_from": bad}, FIELDS, env)
    trunk = small_snapshot()
    save(trunk, outside / "t.thaw")
    save(trunk, root / "t.thaw")
    for where, name in ((outside, "escapes.thaw"), (root, "stays.thaw")):
        session = small_snapshot(1)
        session.weights, session.weights_from = {}, str(where / "t.thaw")
        session.identity.weights_digest = trunk.identity.weights_digest
        save(session, root / name)
    assert checked_request("restore", {"path": "stays.thaw"}, FIELDS, env)["path"] == str(root / "stays.thaw")
    with pytest.raises(HTTPRefusal, match="references its weights from .*outside") as caught:
        checked_request("restore", {"path": "escapes.thaw"}, FIELDS, env)
    assert caught.value.status == 403 and caught.value.type_name == "PathOutsideSnapshotDir"
