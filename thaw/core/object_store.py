"""Snapshots at URLs: `s3://`, `gs://`, anything fsspec serves.

Reading (`ObjectContainer`) needs no local copy: the preamble and header come in one
ranged GET, each section in parallel ranged GETs straight into one buffer, and every
chunk's CRC32C is checked against the header before a byte is used, on every read (the
store's bytes are checked, not trusted). An object replaced while it is read fails those
checks instead of mixing two snapshots. Writing (`upload_file`) sends a finished local
snapshot file with the store's own upload (S3: multipart, through obstore, the faster
client for uploads as measured), which makes the object appear only once every part has
arrived: an interrupted upload leaves no object that looks complete.

With `THAW_CACHE_DIR` set, an object is first downloaded (parallel ranged GETs) into that
directory under a name derived from its URL, size and ETag, and read from there as a local
file: checked like any file on every read, never trusted for being there or for its name
(its header is compared with the object's at each use: `cached_copy`), and a changed
object (new ETag) is fetched anew. Cached copies are not removed by thaw.

Credentials and endpoints are the store's usual environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, ...). fsspec and the
store's client (s3fs for `s3://` reads, obstore for its uploads: ``pip install thaw[s3]``)
are imported only when a URL is used; a missing client is reported by name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from . import format as fmt
from .container import Container, as_bytes_view, byte_count
from .head import parse_head
from .errors import FormatError, ThawError
from .urls import URL, absolute, is_url  # noqa: F401  (where callers have always found them)
from .movers import movers

PART_BYTES = 16 * 2**20  # one ranged GET
GET_THREADS = int(os.environ.get("THAW_OBJECT_THREADS", "16"))
HEAD_GUESS = 1 * 2**20  # the first GET: preamble and (usually) the whole header
S3_SCHEMES = ("s3", "s3a")
UPLOAD_PART_BYTES = 64 * 2**20  # one multipart part (S3 allows 10,000: objects up to 640 GiB)
ProgressFn = Callable[[int, int], None]


class ObjectStoreUnavailable(ThawError):
    """The URL's scheme has no installed client, or the store cannot be reached."""


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`; S3 honours `AWS_ENDPOINT_URL`."""
    try:
        import fsspec
    except ImportError:
        raise ObjectStoreUnavailable(f"{url}: reading URLs needs fsspec (pip install thaw[s3])") from None
    scheme = url.split("://", 1)[0].lower()
    options: dict[str, Any] = {}
    if scheme in S3_SCHEMES and os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise ObjectStoreUnavailable(f"{url}: no client for {scheme}:// is installed ({exc}); for s3:// "
                                     "pip install thaw[s3]") from None


def stored_size(source: Any) -> int:
    """Bytes of the snapshot file or object at `source`."""
    if not is_url(source):
        return os.path.getsize(source)
    fs, path = filesystem(source)
    return int(fs.info(path)["size"])


def listing(url: str) -> Optional[dict[str, str]]:
    """The objects directly under the prefix `url` (name -> URL), read fresh from the store;
    None when `url` is not a prefix (an object, or nothing)."""
    fs, key = filesystem(url)
    fs.invalidate_cache(key)
    if not fs.isdir(key):
        return None
    base = url.rstrip("/")
    return {name: f"{base}/{name}" for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(key, detail=False))}


def object_info(url: str) -> Optional[dict]:
    """The store's fresh description of the object at `url` (size, ETag, ...), or None
    when `url` names no object (a prefix, or nothing)."""
    fs, key = filesystem(url)
    fs.invalidate_cache(key)
    try:
        info = fs.info(key)
    except FileNotFoundError:
        return None
    return info if info.get("type") != "directory" else None


def remove(url: str) -> None:
    fs, key = filesystem(url)
    fs.rm_file(key)


CACHE_ENV = "THAW_CACHE_DIR"


def cached_copy(url: str) -> Optional[str]:
    """The local copy of the object at `url` in `THAW_CACHE_DIR` (downloaded now if that
    directory has none for its current size and ETag); None when no cache is configured.

    A copy found there is not trusted for its name: its size must be the object's and its
    preamble and header (which hold every section's CRCs, so every later read is checked
    against the object's own) must equal the object's, fetched now; else it is replaced by
    a fresh download. The directory is made 0700 (one that others can write, or that is
    not this user's, is refused) and copies are written 0600."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    from .temp_files import temp_name

    fs, key = filesystem(url)
    try:
        info = fs.info(key)
    except FileNotFoundError:
        raise FileNotFoundError(f"no snapshot object at {url}") from None
    size = int(info["size"])
    tag = hashlib.sha256(repr(object_key(url, info)).encode()).hexdigest()[:32]
    local = os.path.join(root, f"{tag}.thaw")
    _private_dir(root)
    if os.path.exists(local) and _same_object(local, fs, key, url, size):
        return local
    tmp = os.path.join(root, temp_name(f"{tag}.thaw"))
    try:
        _download(fs, key, url, size, tmp)
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return local


def _private_dir(root: str) -> None:
    """`root` as a directory only this user can write (made 0700 if missing)."""
    import stat

    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ThawError(f"{CACHE_ENV}={root} is writable by other users or not this user's: a planted file "
                        "there could stand in for an object; use a directory only you can write (0700)")


def _same_object(local: str, fs: Any, key: str, url: str, size: int) -> bool:
    """Whether the cached file `local` is a copy of the object: same size, and the same
    preamble and header bytes as the store holds now."""
    with open(local, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            return False
        head = f.read(min(size, HEAD_GUESS))
    try:
        pre = fmt.parse_preamble(head, size, movers().crc32c)
    except FormatError:
        return False
    span = fmt.PREAMBLE_SIZE + pre.header_length
    if len(head) < span:
        with open(local, "rb") as f:
            head = f.read(span)
    return _get(fs, key, url, 0, span) == head[:span]


def _download(fs: Any, key: str, url: str, size: int, local: str) -> None:
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _get_parts(fs, key, url, 0, size, lambda start, data: os.pwrite(fd, data, start))
        os.fsync(fd)
    finally:
        os.close(fd)


def _get(fs: Any, key: str, url: str, offset: int, length: int) -> bytes:
    """One ranged GET of exactly `length` bytes at `offset`; a short answer is refused."""
    data = fs.cat_file(key, start=offset, end=offset + length)
    if len(data) != length:
        raise FormatError(f"{url}: asked for {length} bytes at {offset}, the store sent "
                          f"{len(data)} (the object changed or was truncated?)")
    return data


def _get_parts(fs: Any, key: str, url: str, offset: int, length: int, put: Callable[[int, bytes], Any]) -> None:
    """The `length` bytes at `offset` by parallel ranged GETs of PART_BYTES, each handed to
    `put(start relative to offset, data)` as it arrives."""
    starts = range(0, length, PART_BYTES)
    with ThreadPoolExecutor(max_workers=max(1, min(GET_THREADS, len(starts)))) as pool:
        list(pool.map(lambda start: put(start, _get(fs, key, url, offset + start,
                                                    min(PART_BYTES, length - start))), starts))


def object_key(url: str, info: Optional[dict] = None) -> tuple:
    """Which object is at `url` now (size and ETag or version), for caches of opened snapshots."""
    if info is None:
        fs, path = filesystem(url)
        info = fs.info(path)
    return ("url", url, info.get("size"), info.get("ETag") or info.get("VersionId") or info.get("mtime"))


class ObjectContainer:
    """A snapshot object at a URL, read with ranged GETs; the same reading interface as
    `container.Container` (header validated at open, sections fetched on demand and
    checked chunk by chunk). `is_local` is False: nothing maps it as a file."""

    is_local = False

    def __init__(self, url: str) -> None:
        self.path = url
        self._fs, self._key = filesystem(url)
        try:
            info = self._fs.info(self._key)
        except FileNotFoundError:
            raise FileNotFoundError(f"no snapshot object at {url}") from None
        if info.get("type") == "directory":
            raise FormatError(f"{url} is a prefix (a directory), not a snapshot object")
        self.file_size = int(info["size"])
        head = self._get(0, min(self.file_size, HEAD_GUESS))

        def read(offset: int, length: int) -> bytes:
            if offset + length <= len(head):
                return head[offset:offset + length]
            return self._get(offset, min(length, self.file_size - offset))

        self.meta, self.sections, self.data_start = parse_head(read, self.file_size)
        self._buffers: dict[str, np.ndarray] = {}
        self.checked: set[str] = set()

    def _get(self, offset: int, length: int) -> bytes:
        return _get(self._fs, self._key, self.path, offset, length)

    def _fetch(self, offset: int, out: np.ndarray, progress: Optional[Callable[[int], None]] = None) -> None:
        """Fills `out` with the object's bytes from `offset`, parallel ranged GETs."""
        def put(start: int, data: bytes) -> None:
            out[start:start + len(data)] = np.frombuffer(data, dtype=np.uint8)
            if progress:
                progress(len(data))

        _get_parts(self._fs, self._key, self.path, offset, out.size, put)

    def section(self, name: str) -> fmt.Section:
        try:
            return self.sections[name]
        except KeyError:
            raise FormatError(f"section {name!r} is missing from {self.path}") from None

    def map_section(self, name: str) -> np.ndarray:
        """The section's payload, fetched once into memory and kept; the CRC32C of every
        chunk of its padded extent is checked on every call."""
        sec = self.section(name)
        if sec.padded_length == 0:
            return np.empty(0, dtype=np.uint8)
        buf = self._buffers.get(name)
        if buf is None:
            buf = np.empty(sec.padded_length, dtype=np.uint8)
            self._fetch(sec.offset, buf)
            self._buffers[name] = buf
        sec.check_crcs(movers().crc32c_chunks(buf, sec.chunk_size, 8))
        self.checked.add(name)
        return buf[:sec.length]

    @property
    def num_mappings(self) -> int:
        return len(self._buffers)

    def read_into(self, name: str, dest: Any, *, verify: bool = True, threads: int = 0,
                  direct: bool = False) -> None:
        """Fills `dest` (exactly the section's length) with the checked payload."""
        sec = self.section(name)
        view = as_bytes_view(dest)
        if byte_count(view) != sec.length:
            raise FormatError(f"section {name!r} holds {sec.length} bytes; the buffer has {byte_count(view)}")
        if sec.length:
            target = view.numpy() if hasattr(view, "numpy") else view  # torch uint8 view: same memory
            target[:] = self.map_section(name)
        self._buffers.pop(name, None)  # read once: not kept

    def read(self, name: str, *, verify: bool = True) -> np.ndarray:
        out = np.empty(self.section(name).length, dtype=np.uint8)
        self.read_into(name, out)
        return out

    def verify(self, *, progress: Optional[ProgressFn] = None, threads: int = 0) -> None:
        """Fetches and checks every chunk of every section (nothing is kept)."""
        total = sum(s.padded_length for s in self.sections.values())
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        for sec in self.sections.values():
            buf = np.empty(sec.padded_length, dtype=np.uint8)
            self._fetch(sec.offset, buf, advance)
            sec.check_crcs(movers().crc32c_chunks(buf, sec.chunk_size, 8))
            self.checked.add(sec.name)

    def close(self) -> None:
        self._buffers.clear()


def upload_file(local: str, url: str) -> None:
    """Puts the finished snapshot file `local` at `url` with the store's upload (multipart
    on S3: the object exists only once every part is in). `s3://` objects go up through
    obstore (1.29x s3fs's upload against the same server, receipt
    object_clients-20261202T052909Z-e7e9a892.json); other schemes through fsspec."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in S3_SCHEMES:
        fs, key = filesystem(url)
        fs.put_file(local, key)
        return
    try:
        import obstore
    except ImportError:
        raise ObjectStoreUnavailable(f"{url}: uploading to s3:// needs obstore (pip install thaw[s3])") from None
    bucket, _, key = url.split("://", 1)[1].partition("/")
    obstore.put(obstore_s3(bucket), key, Path(local), chunk_size=UPLOAD_PART_BYTES)


def obstore_s3(bucket: str) -> Any:
    """An obstore S3 client for `bucket` from the usual environment (credentials, region,
    `AWS_ENDPOINT_URL`; plain HTTP only where that endpoint says http://)."""
    from obstore.store import S3Store

    config: dict[str, Any] = {}
    for name, env in (("access_key_id", "AWS_ACCESS_KEY_ID"), ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                      ("session_token", "AWS_SESSION_TOKEN"), ("region", "AWS_DEFAULT_REGION"),
                      ("endpoint", "AWS_ENDPOINT_URL")):
        if os.environ.get(env):
            config[name] = os.environ[env]
    if "region" not in config and os.environ.get("AWS_REGION"):
        config["region"] = os.environ["AWS_REGION"]
    plain_http = config.get("endpoint", "").startswith("http://")
    return S3Store(bucket, config=config, client_options={"allow_http": plain_http})


def save_to_url(write: Callable[[str], None], url: str) -> None:
    """Writes a snapshot with `write(path)` into a local spool file (under
    `THAW_SPOOL_DIR`, else the system's temporary directory), uploads it to `url`, and
    removes the spool file whatever happens. The spool file carries a writer's temporary
    name (`.thaw-upload.tmp-PID-HEX`): readers refuse it, and `thaw gc` removes it if the
    process is killed before it can. An upload that fails has its unfinished multipart
    upload aborted (`abort_unfinished_uploads`); one killed outside Python's reach leaves
    it to the bucket's lifecycle rule (docs/security.md)."""
    from .temp_files import temp_name

    spool = os.environ.get("THAW_SPOOL_DIR") or tempfile.gettempdir()
    local = os.path.join(spool, temp_name("thaw-upload"))
    try:
        write(local)
        before = unfinished_uploads(url)  # the store's clock is not ours: tell ours apart by id
        try:
            upload_file(local, url)
        except BaseException as exc:
            try:
                abort_unfinished_uploads(url, before)
            except Exception as abort_exc:  # reported with the upload's own failure
                raise ThawError(f"uploading {url} failed ({type(exc).__name__}: {exc}), and aborting its unfinished "
                                f"multipart upload failed too ({type(abort_exc).__name__}: {abort_exc}); the "
                                "bucket's lifecycle rule removes it") from exc
            raise
    finally:
        if os.path.exists(local):
            os.unlink(local)


def unfinished_uploads(url: str) -> set[str]:
    """The ids of the unfinished multipart uploads of the object at `url` (S3; else none)."""
    if url.split("://", 1)[0].lower() not in S3_SCHEMES:
        return set()
    fs, key = filesystem(url)
    bucket, _, name = key.partition("/")
    listed = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=name)
    return {u["UploadId"] for u in listed.get("Uploads", []) if u["Key"] == name}


def abort_unfinished_uploads(url: str, known: set[str]) -> int:
    """Aborts the unfinished multipart uploads of the object at `url` other than those in
    `known` (listed before ours began), so their parts are not kept (and billed); returns
    how many."""
    fresh = unfinished_uploads(url) - known
    if fresh:
        fs, key = filesystem(url)
        bucket, _, name = key.partition("/")
        for upload_id in fresh:
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload_id)
    return len(fresh)


def open_container(source: str | os.PathLike) -> Any:
    """The open snapshot at `source`: a `Container` for a file, an `ObjectContainer` for a
    URL (s3://, gs://, ...), or a `Container` of its local copy where `THAW_CACHE_DIR` is
    set (`cached_copy`)."""
    if not is_url(source):
        return Container(source)
    local = cached_copy(source)  # with THAW_CACHE_DIR: a checked local copy
    return ObjectContainer(source) if local is None else Container(local)
