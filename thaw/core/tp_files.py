"""Tensor-parallel snapshots on disk: a directory of rank files, written as one.

A snapshot taken at tensor parallel size N > 1 is a directory holding the N files named
by `rank_file_name`, each a complete single-rank snapshot whose identity names its rank
and size and whose extras carry the set's id (`SET_KEY`): ranks of different takes never
pass for one snapshot. A snapshot at size 1 is one file.

`RankSetWriter` writes a set into a hidden sibling directory (with the previous set's mode,
else 0700) and swaps it in only when every rank is written, so a crash leaves either the
previous set or the new one, never a mix, and a staging directory `thaw gc` removes;
`load_ranks` opens either form and refuses a lone rank file of a larger set.

At a URL the set is a prefix holding the rank objects, each uploaded whole (an object
appears only complete). A store has no rename, so ranks are put at their names directly:
a set whose writer died, or that a new take is overwriting, holds missing ranks or ranks
of two set ids, and readers refuse it by name. Such a set is lost, not mixed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Union

from .confine import check_path
from .container import file_key
from .errors import SchemaError
from .object_store import is_url, listing, object_info, object_key, remove
from .schema import StateSnapshot
from .snapshot_io import load, save
from .temp_files import lock_directory

RANK_FILE = re.compile(r"rank-(\d{5})-of-(\d{5})\.thaw")
SET_KEY = "tp_set"  # extras key: {"id": the set's id}
PathLike = Union[str, os.PathLike]


def rank_file_name(rank: int, size: int) -> str:
    return f"rank-{rank:05d}-of-{size:05d}.thaw"


def _entries(directory: PathLike) -> dict[str, Union[Path, str]]:
    if is_url(directory):
        found = listing(directory)
        if found is None:
            raise FileNotFoundError(f"no snapshot object (or prefix of rank objects) at {directory}")
        return found
    check_path(directory)  # a server's request: a directory outside its own is not even listed
    return {entry.name: entry for entry in Path(directory).iterdir()}


def rank_files(directory: PathLike) -> list:
    """The rank files of a tensor-parallel snapshot directory (or prefix at a URL), by rank;
    refuses one whose files do not name one size and every rank of it exactly once."""
    found = {}
    for name, entry in _entries(directory).items():
        m = RANK_FILE.fullmatch(name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = entry
    sizes = {size for _, size in found}
    if len(sizes) != 1:
        raise SchemaError(f"{directory}: expected the rank files of one tensor-parallel size, found sizes "
                          f"{sorted(sizes) or 'none'}")
    size = sizes.pop()
    missing = [r for r in range(size) if (r, size) not in found]
    if missing:
        raise SchemaError(f"{directory}: ranks {missing} of {size} are missing")
    return [found[(r, size)] for r in range(size)]


def snapshot_paths(source: PathLike) -> list:
    """The files of the snapshot at `source`: its rank files (a directory), or itself (a
    file, or an object at a URL)."""
    if is_url(source):
        return [source] if object_info(source) is not None else rank_files(source)
    return rank_files(source) if Path(source).is_dir() else [Path(source)]


def source_key(source: PathLike) -> tuple:
    """Which snapshot is at `source` now (see `file_key`, `object_key`), for caches of
    opened snapshots."""
    if is_url(source):
        info = object_info(source)  # one request for the common case, a single object
        if info is not None:
            return (object_key(source, info),)
        return tuple(object_key(p) for p in rank_files(source))
    return tuple(file_key(p) for p in snapshot_paths(source))


def load_ranks(source: PathLike) -> list[StateSnapshot]:
    """The ranks of a snapshot: a directory of rank files, or one file (a single rank).
    Headers only; every payload is CRC-checked when read. A file that is one rank of a
    larger set is refused: its directory is the snapshot."""
    ranks = [load(path, verify=False) for path in snapshot_paths(source)]
    if len(ranks) == 1 and ranks[0].identity.tp_size != 1:
        ident = ranks[0].identity
        raise SchemaError(f"{source} is rank {ident.tp_rank} of a tensor-parallel snapshot of "
                          f"{ident.tp_size} ranks: pass the directory that holds all of them")
    return ranks


def set_of_file(path: PathLike) -> PathLike:
    """The snapshot a file belongs to: its directory when it is a rank file of a set larger
    than one, else the file itself (or the object at a URL)."""
    if is_url(path):
        base, _, name = path.rstrip("/").rpartition("/")
        m = RANK_FILE.fullmatch(name)
        return base if m and int(m.group(2)) > 1 and "://" in base else path
    path = Path(path)
    m = RANK_FILE.fullmatch(path.name)
    return path.parent if m and int(m.group(2)) > 1 else path


class RankSetWriter:
    """Writes the `size` rank files of one snapshot at `target` (a directory, or a prefix at
    a URL) as one.

    `path(rank)` names where rank `rank` goes: inside a hidden staging directory next to a
    local `target`, at its final name under a URL (see the module docstring); `staging` is
    the directory (or prefix) holding them. `commit()` checks every rank is written, then
    moves a local set into place, replacing a previous set there (at a URL it removes rank
    objects of another size left from an earlier set); `abort()` (also on leaving a `with`
    block by an exception) removes a local staging directory. `target` must be missing or
    hold only rank files of a previous set."""

    def __init__(self, target: PathLike, size: int) -> None:
        self.size, self.set_id = size, uuid.uuid4().hex
        if is_url(target):
            self.target = self.staging = str(target).rstrip("/")
            if object_info(self.target) is not None:
                raise SchemaError(f"{self.target} is a snapshot object; a tensor-parallel snapshot of {size} "
                                  "ranks is a prefix of rank objects: choose another URL")
            self._check_only_ranks(listing(self.target) or {})
            return
        self.target = Path(target).absolute()
        if self.target.exists():
            if not self.target.is_dir():
                raise SchemaError(f"{self.target} is a file; a tensor-parallel snapshot of {size} ranks is a "
                                  "directory: choose another path")
            self._check_only_ranks(_entries(self.target))
        self.staging = self.target.parent / f".{self.target.name}.partial-{self.set_id[:12]}"
        mode = stat.S_IMODE(os.stat(self.target).st_mode) if self.target.is_dir() else 0o700
        self.staging.mkdir(parents=False)
        os.chmod(self.staging, mode)  # the set keeps its mode (a new one: 0700), whatever the umask
        self._lock = lock_directory(self.staging)  # `thaw gc` leaves it while this writer works

    def _check_only_ranks(self, entries: dict) -> None:
        other = [name for name in entries if not RANK_FILE.fullmatch(name)]
        if other:
            raise SchemaError(f"{self.target} holds files that are not rank files ({sorted(other)[:4]}); "
                              "a snapshot directory replaces only a previous snapshot's rank files")

    @property
    def at_url(self) -> bool:
        return isinstance(self.target, str)

    def path(self, rank: int) -> Union[Path, str]:
        name = rank_file_name(rank, self.size)
        return f"{self.staging}/{name}" if self.at_url else self.staging / name

    def commit(self) -> Union[Path, str]:
        if self.at_url:
            written = listing(self.target) or {}
            missing = [r for r in range(self.size) if rank_file_name(r, self.size) not in written]
        else:
            missing = [r for r in range(self.size) if not self.path(r).is_file()]
        if missing:
            raise SchemaError(f"ranks {missing} of {self.size} were not written; the snapshot at "
                              f"{self.target} is " + ("incomplete and will be refused" if self.at_url else "unchanged"))
        if self.at_url:
            for name, url in written.items():
                m = RANK_FILE.fullmatch(name)
                if m and int(m.group(2)) != self.size:
                    remove(url)
            return self.target
        old, old_lock = None, -1
        try:
            if self.target.exists():
                old_lock = lock_directory(self.target)
                old = self.target.parent / f".{self.target.name}.replaced-{self.set_id[:12]}"
                os.rename(self.target, old)
            os.rename(self.staging, self.target)
            if old is not None:
                shutil.rmtree(old)
        finally:
            if old_lock >= 0:
                os.close(old_lock)
            self._unlock()
        return self.target

    def _unlock(self) -> None:
        if getattr(self, "_lock", -1) >= 0:
            os.close(self._lock)
            self._lock = -1

    def abort(self) -> None:
        if not self.at_url and self.staging.exists():
            shutil.rmtree(self.staging)
        self._unlock()

    def __enter__(self) -> "RankSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def save_ranks(ranks: list[StateSnapshot], target: PathLike) -> list[Path]:
    """Writes one rank as the file `target`, several as one set of rank files in the
    directory `target` (see `RankSetWriter`), each marked with the set's id."""
    target = target if is_url(target) else Path(target)
    if len(ranks) == 1:
        save(ranks[0], target)
        return [target]
    with RankSetWriter(target, len(ranks)) as writer:
        for rank, snap in enumerate(ranks):
            snap.extras[SET_KEY] = {"id": writer.set_id}
            save(snap, writer.path(rank))
        writer.commit()
    return rank_files(target)
