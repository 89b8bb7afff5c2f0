"""The rules every server's thaw endpoints share (`thaw.adapters.endpoints`), engine-free."""

import os

import pytest

from thaw.core import load, save
from thaw.core.confine import confined_to
from thaw.core.errors import PathOutsideSnapshotDir
from thaw.adapters.endpoints import STATUS_OF, HTTPRefusal, checked_request, parse_body, refusal_of, resolve_path

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
        "path": str(tmp_path / "a.thaw"), "weights": False, "requests": False, "confine_to": str(tmp_path)}
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
    stays = checked_request("restore", {"path": "stays.thaw"}, FIELDS, env)
    assert stays["path"] == str(root / "stays.thaw") and stays["confine_to"] == str(root)
    with confined_to(stays["confine_to"]):  # what the engine's side does with the request
        assert load(stays["path"]).weights["w"].tensor().shape == (8, 16)
        escapes = checked_request("restore", {"path": "escapes.thaw"}, FIELDS, env)
        with pytest.raises(PathOutsideSnapshotDir) as caught:
            load(escapes["path"])
    assert "t.thaw" not in str(caught.value) and str(outside) not in str(caught.value)  # the refusal only
    assert STATUS_OF[type(caught.value).__name__] == 403


def test_state_changing_endpoints_need_a_key_or_the_operators_opt_in():
    from thaw.adapters.endpoints import require_write_access, write_access_notice

    require_write_access(True, {})
    require_write_access(False, {"THAW_ALLOW_UNAUTHENTICATED": "1"})
    for env in ({}, {"THAW_ALLOW_UNAUTHENTICATED": "yes"}, {"THAW_ALLOW_UNAUTHENTICATED": "0"}):
        with pytest.raises(HTTPRefusal, match="THAW_ALLOW_UNAUTHENTICATED=1") as caught:
            require_write_access(False, env)
        assert (caught.value.status, caught.value.type_name) == (403, "KeyRequired")
    assert "UNAUTHENTICATED" in write_access_notice(False, {"THAW_ALLOW_UNAUTHENTICATED": "1"})[1]


def test_only_json_bodies_of_bounded_size_and_depth_are_taken(tmp_path):
    from thaw.adapters.endpoints import MAX_BODY, check_post_headers

    check_post_headers("application/json", "20")
    check_post_headers("Application/JSON; charset=utf-8", None)
    for content_type in ("text/plain", None, "application/x-www-form-urlencoded", "multipart/form-data"):
        with pytest.raises(HTTPRefusal) as caught:
            check_post_headers(content_type, "20")
        assert caught.value.status == 415
    for raw_length, status in ((str(MAX_BODY + 1), 413), ("many", 400)):
        with pytest.raises(HTTPRefusal) as caught:
            check_post_headers("application/json", raw_length)
        assert caught.value.status == status
    with pytest.raises(HTTPRefusal) as caught:
        parse_body(b'{"path": "' + b"a" * MAX_BODY + b'"}')
    assert caught.value.status == 413
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        with pytest.raises(HTTPRefusal) as caught:
            parse_body(raw[:MAX_BODY])
        assert caught.value.status == 400
    env = {"THAW_SNAPSHOT_DIR": str(tmp_path)}
    bad = [({"path": "a\x00.thaw"}, 400, "NUL"), ({"path": "."}, 400, "directory itself"),
           ({"path": "sub/.."}, 400, "directory itself"), ({"path": "a.thaw", "weights_from": "t\x00"}, 400, "NUL"),
           ({"path": "s3://b/a\x00"}, 400, "NUL")]
    for body, status, text in bad:
        with pytest.raises(HTTPRefusal, match=text) as caught:
            checked_request("restore" if "weights_from" not in body else "snapshot", body, FIELDS, env)
        assert caught.value.status == status, body
    with pytest.raises(HTTPRefusal, match="'missing/deeper'") as caught:
        checked_request("snapshot", {"path": "missing/deeper/a.thaw"}, FIELDS, env)
    assert (caught.value.status, caught.value.type_name) == (404, "DirectoryNotFound")


def test_every_file_a_confined_request_opens_is_inside_the_directory(tmp_path):
    """Links inside the directory that point out of it, a rank-set directory whose rank file
    is such a link, and a directory listed through a link: refused at the open, naming
    nothing of what lies outside (not even whether it exists)."""
    from thaw.core.tp_files import load_ranks

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    save(small_snapshot(), outside / "real.thaw")
    save(small_snapshot(), root / "inside.thaw")
    os.symlink(outside / "real.thaw", root / "link.thaw")
    os.symlink(outside / "missing.thaw", root / "dangling.thaw")
    (root / "set").mkdir()
    os.symlink(outside / "real.thaw", root / "set" / "rank-00000-of-00001.thaw")
    os.symlink(outside, root / "elsewhere")
    with confined_to(str(root)):
        assert load(root / "inside.thaw").kv.num_pages == 5
        texts = set()
        for attempt in (lambda: load(root / "link.thaw"), lambda: load(root / "dangling.thaw"),
                        lambda: load_ranks(root / "set"), lambda: load_ranks(root / "elsewhere")):
            with pytest.raises(PathOutsideSnapshotDir) as caught:
                attempt()
            texts.add(str(caught.value))
    assert len(texts) == 1 and "real" not in texts.pop()  # a dangling link reads as any other
    assert load(root / "link.thaw").kv.num_pages == 5  # outside a confined request nothing is checked


def test_vllm_servers_api_key_is_a_string_or_a_list():
    from types import SimpleNamespace

    from thaw.adapters.vllm.server import api_keys

    def app(key):
        return SimpleNamespace(state=SimpleNamespace(args=SimpleNamespace(api_key=key)))

    assert api_keys(app("secret")) == ["secret"]
    assert api_keys(app(["one", "two"])) == ["one", "two"]
    assert api_keys(app(None)) == []


def test_a_server_refuses_its_requests_after_weights_failed_to_load_until_restored():
    from thaw.adapters.endpoints import ServiceGate

    gate = ServiceGate()
    gate.after("restore", {"error": {"type": "ChecksumError", "message": "m"}})  # refused before any change
    assert not gate.refusing
    gate.after("restore", {"error": {"type": "WeightsInconsistent", "message": "half loaded"}})
    assert gate.refusing and gate.refusal()[0] == 503 and "half loaded" in gate.refusal()[1]["error"]["message"]
    gate.after("snapshot", {"tree_nodes": 1})
    gate.after("restore", {"weights_restored": 0, "tree_nodes": 1})  # KV alone does not mend the weights
    assert gate.refusing
    gate.after("restore", {"weights_restored": 20})
    assert not gate.refusing
