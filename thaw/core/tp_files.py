"""Tensor-parallel snapshots on disk: a directory of rank files, written as one.

A snapshot taken at tensor parallel size N > 1 is a directory holding the N files named
by `rank_file_name`, each a complete single-rank snapshot whose identity names its rank
and size and whose extras carry the set's id (`SET_KEY`): ranks of different takes never
pass for one snapshot. A snapshot at size 1 is one file.

`RankSetWriter` writes a set into a hidden sibling directory and swaps it in only when
every rank is written, so a crash leaves either the previous set or the new one, never a
mix; `load_ranks` opens either form and refuses a lone rank file of a larger set.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Union

from .container import file_key
from .errors import SchemaError
from .object_store import is_url, object_key
from .schema import StateSnapshot
from .snapshot_io import load, save

RANK_FILE = re.compile(r"rank-(\d{5})-of-(\d{5})\.thaw")
SET_KEY = "tp_set"  # extras key: {"id": the set's id}
PathLike = Union[str, os.PathLike]


def rank_file_name(rank: int, size: int) -> str:
    return f"rank-{rank:05d}-of-{size:05d}.thaw"


def rank_files(directory: PathLike) -> list[Path]:
    """The rank files of a tensor-parallel snapshot directory, by rank; refuses a directory
    whose files do not name one size and every rank of it exactly once."""
    found = {}
    for entry in Path(directory).iterdir():
        m = RANK_FILE.fullmatch(entry.name)
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
        return [source]
    return rank_files(source) if Path(source).is_dir() else [Path(source)]


def source_key(source: PathLike) -> tuple:
    """Which snapshot is at `source` now (see `file_key`, `object_key`), for caches of
    opened snapshots."""
    if is_url(source):
        return (object_key(source),)
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
        return path
    path = Path(path)
    m = RANK_FILE.fullmatch(path.name)
    return path.parent if m and int(m.group(2)) > 1 else path


class RankSetWriter:
    """Writes the `size` rank files of one snapshot at `target` (a directory) as one.

    `path(rank)` names where rank `rank` goes (inside a hidden staging directory next to
    `target`); `commit()` moves the set into place once every rank file exists, replacing
    a previous set there; `abort()` (also on leaving a `with` block by an exception)
    removes the staging directory. `target` must be missing or a directory holding only
    rank files of a previous set."""

    def __init__(self, target: PathLike, size: int) -> None:
        if is_url(target):
            raise SchemaError(f"{target}: tensor-parallel snapshots (a set of {size} rank files) are written "
                              "to local directories; object storage takes single-rank snapshots")
        self.target, self.size = Path(target).absolute(), size
        if self.target.exists():
            if not self.target.is_dir():
                raise SchemaError(f"{self.target} is a file; a tensor-parallel snapshot of {size} ranks is a "
                                  "directory: choose another path")
            other = [e.name for e in self.target.iterdir() if not RANK_FILE.fullmatch(e.name)]
            if other:
                raise SchemaError(f"{self.target} holds files that are not rank files ({sorted(other)[:4]}); "
                                  "a snapshot directory replaces only a previous snapshot's rank files")
        self.set_id = uuid.uuid4().hex
        self.staging = self.target.parent / f".{self.target.name}.partial-{self.set_id[:12]}"
        self.staging.mkdir(parents=False)

    def path(self, rank: int) -> Path:
        return self.staging / rank_file_name(rank, self.size)

    def commit(self) -> Path:
        missing = [r for r in range(self.size) if not self.path(r).is_file()]
        if missing:
            raise SchemaError(f"ranks {missing} of {self.size} were not written; the snapshot at "
                              f"{self.target} is unchanged")
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.replaced-{self.set_id[:12]}"
            os.rename(self.target, old)
        os.rename(self.staging, self.target)
        if old is not None:
            shutil.rmtree(old)
        return self.target

    def abort(self) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging)

    def __enter__(self) -> "RankSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def save_ranks(ranks: list[StateSnapshot], target: PathLike) -> list[Path]:
    """Writes one rank as the file `target`, several as one set of rank files in the
    directory `target` (see `RankSetWriter`), each marked with the set's id."""
    target = Path(target)
    if len(ranks) == 1:
        save(ranks[0], target)
        return [target]
    with RankSetWriter(target, len(ranks)) as writer:
        for rank, snap in enumerate(ranks):
            snap.extras[SET_KEY] = {"id": writer.set_id}
            save(snap, writer.path(rank))
        writer.commit()
    return rank_files(target)
