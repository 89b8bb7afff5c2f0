"""What the server tests of every engine share: the command line against a server, and the
snapshots a server must refuse."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import thaw


@contextlib.contextmanager
def snapshot_bucket() -> Iterator[tuple[str, dict[str, str]]]:
    """An S3-compatible server (its own process, env set here for the servers started
    meanwhile to inherit): (the URL prefix servers may use, the env that allows it)."""
    from thaw.testing.s3_server import bucket_in_env

    with bucket_in_env("served") as bucket:
        yield f"{bucket}/allowed", {"THAW_SNAPSHOT_URLS": f"{bucket}/allowed"}


def check_urls_outside_refused(allowed: str, parent: Any, child: Any, key: str) -> None:
    """URLs outside the prefix `allowed` are refused (PathOutsideSnapshotDir) by `parent`'s
    snapshot and `child`'s restore endpoints."""
    bucket = allowed.rsplit("/", 1)[0]
    for refused in (f"{bucket}/elsewhere/trunk.thaw", f"{allowed}/../elsewhere/trunk.thaw", f"{allowed}-more/trunk.thaw"):
        for op, server in (("snapshot", parent), ("restore", child)):
            out = thaw_cli(op, "--url", server.url, refused, key=key)
            assert out.returncode in (2, 3) and "PathOutsideSnapshotDir" in out.stderr, (op, refused, out.stderr)


@contextlib.contextmanager
def serving(*servers) -> Iterator[tuple]:
    """The started server processes once each answers; every one is stopped afterwards."""
    try:
        for server in servers:
            server.wait()
        yield servers
    finally:
        for server in servers:
            server.stop()


def thaw_cli(*args, key):
    """`thaw ARGS --api-key KEY` in a fresh process, outside the source tree."""
    return subprocess.run([sys.executable, "-m", "thaw.cli", *map(str, args), *(["--api-key", key] if key else [])],
                          capture_output=True, text=True, cwd="/")


def refused_snapshots(snaps: Path, source: str) -> dict[str, str]:
    """From `snaps/source`: a copy with one KV byte flipped, and a copy that claims another
    model (checksums intact). {file name: the error type its restore must raise}."""
    bad = snaps / "corrupted.thaw"
    shutil.copyfile(snaps / source, bad)
    sec = thaw.load(bad, verify=False).source.sections["kv/layer/0"]
    with open(bad, "r+b") as f:
        f.seek(sec.offset + sec.length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    other = thaw.load(snaps / source)
    other.identity.model_config_digest = "0" * 64
    for w in list(other.weights.values()) + other.kv.layers:
        w.load()
    thaw.save(other, snaps / "other-model.thaw")
    return {"corrupted.thaw": "ChecksumError", "other-model.thaw": "IdentityMismatch"}


def refusal_cases(url: str, key: str, snaps: Path, source: str) -> list[tuple[tuple, str, str]]:
    """(CLI arguments, text the error must contain, API key) for every refusal a server's
    endpoints must answer with an HTTP error while going on serving."""
    cases = [(("restore", "--url", url, name), error, key) for name, error in refused_snapshots(snaps, source).items()]
    return cases + [(("restore", "--url", url, "../outside.thaw"), "PathOutsideSnapshotDir", key),
                    (("snapshot", "--url", url, "/etc/thaw.thaw"), "PathOutsideSnapshotDir", key),
                    (("snapshot", "--url", url, "new.thaw", "--recycle", "../retired.thaw"), "PathOutsideSnapshotDir",
                     key),
                    (("restore", "--url", url, source), "Unauthorized", "wrong-key"),
                    (("restore", "--url", url, "missing.thaw"), "No such file", key)]


def raw_post(url: str, path: str, data: bytes, key: str | None, content_type: str | None = "application/json"):
    """(status, error type) of a POST sent as it is, with no client-side checks."""
    import urllib.error
    import urllib.request

    headers = {"content-type": content_type} if content_type else {}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, None
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)["error"]["type"]
        except (ValueError, KeyError, TypeError):
            return exc.code, body[:200]


def check_request_rules(url: str, key: str) -> None:
    """What a server's state-changing endpoints answer to requests a browser page or a
    careless client could send, with the right key: 415 for a body not declared JSON, 413
    past the size cap, 400 for a NUL byte, deep nesting, the directory itself, 404 naming a
    missing folder; never a 500."""
    from thaw.adapters.endpoints import MAX_BODY

    body = json.dumps({"path": "trunk.thaw"}).encode()
    cases = [(("/thaw/restore", body, "text/plain"), (415, "UnsupportedMediaType")),
             (("/thaw/restore", body, None), (415, "UnsupportedMediaType")),
             (("/thaw/restore", b'{"path": "' + b"a" * MAX_BODY + b'"}', "application/json"), (413, "BodyTooLarge")),
             (("/thaw/restore", b'{"path": "a\\u0000.thaw"}', "application/json"), (400, "BadRequest")),
             (("/thaw/restore", b"[" * 20000 + b"]" * 20000, "application/json"), (400, "BadRequest")),
             (("/thaw/restore", b'{"path": "."}', "application/json"), (400, "BadRequest")),
             (("/thaw/restore", b'{"path": 7}', "application/json"), (400, "BadRequest")),
             (("/thaw/snapshot", b'{"path": "missing/a.thaw"}', "application/json"), (404, "DirectoryNotFound"))]
    for (path, data, content_type), expected in cases:
        assert raw_post(url, path, data, key, content_type) == expected, (path, data[:40], content_type)


def check_keyless_server_refuses_writes(url: str) -> None:
    """A server started without an API key answers status, and refuses every endpoint that
    changes state (403 KeyRequired), whatever the request."""
    status = subprocess.run([sys.executable, "-m", "thaw.cli", "status", "--url", url], capture_output=True,
                            text=True, cwd="/")
    assert status.returncode == 0, status.stderr
    for path in ("/thaw/snapshot", "/thaw/restore"):
        assert raw_post(url, path, b'{"path": "trunk.thaw"}', None) == (403, "KeyRequired"), path
    out = thaw_cli("snapshot", "--url", url, "trunk.thaw", key=None)
    assert out.returncode == 2 and "KeyRequired" in out.stderr and "THAW_ALLOW_UNAUTHENTICATED" in out.stderr
