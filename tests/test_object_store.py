"""Snapshots at s3:// URLs, against a real S3-compatible server process on localhost (moto's
standalone server) through a real client (s3fs): saved and loaded with every chunk checked,
refused when the object is corrupted or truncated, never half-written, and the CLI reads
them too."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import thaw
from thaw.core import ChecksumError, FormatError, PrefixTree, StateSnapshot
from thaw.core.layouts import named_layout
from thaw.core.object_store import filesystem

pytest.importorskip("s3fs", reason="needs s3fs (pip install thaw[s3]); .ci/run installs it")
pytest.importorskip("moto", reason="needs moto's server (pip install 'moto[server]'); .ci/run installs it")


@pytest.fixture(scope="module")
def bucket():
    from thaw.testing.s3_server import bucket_in_env

    with bucket_in_env("thaw-test") as url:
        yield url


def snapshot(pages: int = 6, seed: int = 0) -> StateSnapshot:
    layout = named_layout("thaw.nhd", 4, 2, 16, "float32")
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(pages, layout.page_elems, generator=g) for _ in range(2)]
    tree = PrefixTree(4)
    tree.add_path(list(range(4 * pages)), list(range(pages)))
    snap = StateSnapshot.from_kv(layout, layers, tree, thaw.Identity(model_architecture="Tiny", num_layers=2))
    snap.weights = {"w": thaw.TensorData.of(torch.randn(300, 300, generator=g))}
    return snap


def test_saved_to_a_url_and_loaded_back_with_every_chunk_checked(bucket):
    snap = snapshot()
    url = f"{bucket}/trunk.thaw"
    thaw.save(snap, url)
    back = thaw.load(url)  # verify=True: every section fetched and checked
    assert back.source.path == url and not back.source.is_local
    assert back.prefix.nodes == snap.prefix.nodes
    for a, b in zip(back.kv.layers, snap.kv.layers):
        assert torch.equal(a.tensor(), b.tensor())
    assert torch.equal(back.weights["w"].tensor(), snap.weights["w"].tensor())
    assert back.source.checked == set(back.source.sections)
    fs, key = filesystem(url)
    assert [p for p in fs.ls(bucket.removeprefix("s3://")) if "upload" in p] == []


def _put_bytes(url: str, data: bytes) -> None:
    fs, key = filesystem(url)
    with fs.open(key, "wb") as f:
        f.write(data)


def test_a_corrupted_or_truncated_object_is_refused(bucket, tmp_path):
    thaw.save(snapshot(), tmp_path / "good.thaw")
    good = (tmp_path / "good.thaw").read_bytes()
    sec = thaw.load(tmp_path / "good.thaw").source.section("kv/layer/1")
    bad = bytearray(good)
    bad[sec.offset + 10] ^= 0x40
    _put_bytes(f"{bucket}/bad.thaw", bytes(bad))
    opened = thaw.load(f"{bucket}/bad.thaw", verify=False)  # the header is intact
    opened.kv.layers[0].tensor()
    with pytest.raises(ChecksumError, match="kv/layer/1"):
        opened.kv.layers[1].tensor()
    with pytest.raises(ChecksumError):
        thaw.load(f"{bucket}/bad.thaw")
    _put_bytes(f"{bucket}/short.thaw", good[:len(good) // 2])
    with pytest.raises(FormatError):
        thaw.load(f"{bucket}/short.thaw", verify=False)
    with pytest.raises(FileNotFoundError, match="no snapshot object"):
        thaw.load(f"{bucket}/missing.thaw")


def test_a_failed_save_leaves_no_object(bucket):
    snap = snapshot()
    snap.kv.layers[0] = thaw.TensorData.of(torch.zeros(3, 3))  # does not fit the layout
    with pytest.raises(thaw.SchemaError):
        thaw.save(snap, f"{bucket}/never.thaw")
    fs, key = filesystem(f"{bucket}/never.thaw")
    assert not fs.exists(key)


UPLOADER = r"""
import sys, torch, thaw
from thaw.core import PrefixTree, StateSnapshot
from thaw.core.layouts import named_layout
layout = named_layout("thaw.nhd", 4, 2, 16, "float32")
pages = 200_000_000 // (4 * layout.page_elems)
layers = [torch.ones(pages, layout.page_elems)]
tree = PrefixTree(4)
tree.add_path(list(range(4 * pages)), list(range(pages)))
snap = StateSnapshot.from_kv(layout, layers, tree, thaw.Identity(model_architecture="Tiny", num_layers=1))
print("saving", flush=True)
thaw.save(snap, sys.argv[1])
print("saved", flush=True)
"""


def test_an_upload_killed_midway_leaves_no_object(bucket, tmp_path):
    url = f"{bucket}/killed.thaw"
    fs, key = filesystem(url)
    env = {**os.environ, "THAW_SPOOL_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", UPLOADER, url], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)  # outside the source tree: the installed thaw
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _upload_in_progress(fs, bucket):
        assert proc.poll() is None, "the upload finished before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    assert not fs.exists(key)
    spooled = [e.name for e in tmp_path.iterdir()]
    assert all(thaw.core.temp_files.is_temp_name(n) for n in spooled)  # readers refuse what is left
    assert subprocess.run([sys.executable, "-m", "thaw.cli", "gc", str(tmp_path)], capture_output=True,
                          cwd=tmp_path).returncode == 0
    assert list(tmp_path.iterdir()) == []


def _upload_in_progress(fs, bucket: str) -> bool:
    reply = fs.call_s3("list_multipart_uploads", Bucket=bucket.removeprefix("s3://"))
    return bool(reply.get("Uploads"))


def test_the_command_line_reads_urls(bucket, tmp_path):
    url = f"{bucket}/cli.thaw"
    thaw.save(snapshot(seed=4), url)
    run = lambda *a: subprocess.run([sys.executable, "-m", "thaw.cli", *a], capture_output=True, text=True,
                                    cwd=tmp_path)
    shown = run("inspect", url)
    assert shown.returncode == 0 and url in shown.stdout and "6 pages x 2 layers" in shown.stdout
    checked = run("verify", url)
    assert checked.returncode == 0 and "every CRC32C matches" in checked.stdout


def test_a_cache_directory_keeps_a_checked_copy_per_object_version(bucket, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("THAW_CACHE_DIR", str(cache))
    url = f"{bucket}/cached.thaw"
    thaw.save(snapshot(seed=7), url)
    first = thaw.load(url)
    assert first.source.is_local and first.source.path.startswith(str(cache))
    assert thaw.load(url).source.path == first.source.path and len(list(cache.iterdir())) == 1
    replacement = snapshot(seed=8)
    thaw.save(replacement, url)  # a new object version: fetched anew
    second = thaw.load(url)
    assert second.source.path != first.source.path
    assert torch.equal(second.kv.layers[0].tensor(), replacement.kv.layers[0].tensor())
    sec = second.source.section("kv/layer/0")
    with open(second.source.path, "r+b") as f:  # the cached copy is checked, not trusted
        f.seek(sec.offset + 3)
        byte = f.read(1)
        f.seek(sec.offset + 3)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ChecksumError, match="kv/layer/0"):
        thaw.load(url)


def test_a_planted_copy_in_the_cache_is_never_served_for_the_object(bucket, tmp_path, monkeypatch):
    """A file put under the name the cache derives from the URL, size and ETag, valid in its
    own right (its checksums agree), is not the object: its header differs from the
    object's, so it is replaced by a download. Copies are 0600 in a 0700 directory; a cache
    directory others can write is refused."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("THAW_CACHE_DIR", str(cache))
    url = f"{bucket}/planted.thaw"
    real = snapshot(seed=11)
    thaw.save(real, url)
    name = os.path.basename(thaw.load(url).source.path)
    (cache / name).unlink()
    impostor = snapshot(seed=12)
    thaw.save(impostor, tmp_path / "impostor.thaw")
    data = (tmp_path / "impostor.thaw").read_bytes()
    assert len(data) == filesystem(url)[0].info(filesystem(url)[1])["size"]  # same size: only the bytes differ
    (cache / name).write_bytes(data)
    served = thaw.load(url)
    assert served.source.path == str(cache / name)
    assert torch.equal(served.kv.layers[0].tensor(), real.kv.layers[0].tensor())
    assert stat.S_IMODE(os.stat(cache / name).st_mode) == 0o600 and stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    os.chmod(cache, 0o777)
    with pytest.raises(thaw.ThawError, match="writable by other users"):
        thaw.load(url)


def test_an_unfinished_multipart_upload_of_ours_is_aborted(bucket):
    """What a failed upload leaves on S3 (an unfinished multipart upload, here begun through
    a real client) is aborted; uploads that were there before ours, or of other objects, are
    left."""
    from thaw.core.object_store import abort_unfinished_uploads, unfinished_uploads

    url, name = f"{bucket}/aborted.thaw", bucket.removeprefix("s3://")
    fs, _ = filesystem(url)
    begin = lambda k: fs.call_s3("create_multipart_upload", Bucket=name, Key=k)["UploadId"]
    earlier, other = begin("aborted.thaw"), begin("other.thaw")
    known = unfinished_uploads(url)
    assert known == {earlier}
    ours = begin("aborted.thaw")
    assert abort_unfinished_uploads(url, known) == 1
    left = {u["UploadId"] for u in fs.call_s3("list_multipart_uploads", Bucket=name).get("Uploads", [])}
    assert ours not in left and {earlier, other} <= left
    for key, upload_id in (("aborted.thaw", earlier), ("other.thaw", other)):
        fs.call_s3("abort_multipart_upload", Bucket=name, Key=key, UploadId=upload_id)


def test_tensor_parallel_sets_at_urls_are_read_whole_and_refused_when_mixed(bucket, tmp_path):
    from thaw.core.tp import check_ranks, merge_ranks, split_heads
    from thaw.core.tp_files import RankSetWriter, load_ranks, rank_file_name, save_ranks
    from tests.test_tp import full_snapshot

    snap = full_snapshot("thaw.nhd", 4, "float32")
    url = f"{bucket}/tp-set"
    save_ranks(split_heads(snap, 4), url)
    save_ranks(split_heads(snap, 2), url)  # replaces the set of 4: its rank objects are removed
    fs, key = filesystem(url)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(key, refresh=True)) == [rank_file_name(r, 2) for r in range(2)]
    ranks = load_ranks(url)
    check_ranks(ranks)
    merged = merge_ranks(ranks)
    assert all(torch.equal(a.tensor(), b.tensor()) for a, b in zip(merged.kv.layers, snap.kv.layers))
    cli = subprocess.run([sys.executable, "-m", "thaw.cli", "verify", url], capture_output=True, text=True,
                         cwd=tmp_path)
    assert cli.returncode == 0 and "OK (2 ranks of one take)" in cli.stdout, cli.stdout + cli.stderr
    # A new take that dies after its first rank: the set mixes two takes and is refused by name.
    with pytest.raises(RuntimeError, match="rank 1 crashed"):
        with RankSetWriter(url, 2) as writer:
            thaw.save(split_heads(full_snapshot("thaw.nhd", 4, "float32", seed=2), 2)[0], writer.path(0))
            raise RuntimeError("rank 1 crashed")
    with pytest.raises(thaw.SchemaError, match="set id differs"):
        check_ranks(load_ranks(url))
    fs.rm_file(f"{key}/{rank_file_name(1, 2)}")
    with pytest.raises(thaw.SchemaError, match=r"ranks \[1\] of 2 are missing"):
        load_ranks(url)
    thaw.save(snap, f"{bucket}/single.thaw")
    with pytest.raises(thaw.SchemaError, match="is a snapshot object"):
        RankSetWriter(f"{bucket}/single.thaw", 2)
