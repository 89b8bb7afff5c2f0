"""A snapshot file's head (preamble, header CRC, section table), read and checked on its
own: what `Container` parses at open, and what a caller that needs a file's meta only
(a weights reference, a recycling check) reads without holding the file open."""

from __future__ import annotations

import os
import stat
from typing import Any, Callable

from . import format as fmt
from .confine import open_checked
from .errors import ChecksumError, FormatError
from .movers import movers


def parse_head(read: Callable[[int, int], bytes], file_size: int) -> tuple[dict[str, Any], dict[str, fmt.Section], int]:
    """(meta, sections by name, data start) of a snapshot of `file_size` bytes whose bytes
    `read(offset, length)` returns: preamble, header CRC and section table validated."""
    mv = movers()
    pre = fmt.parse_preamble(read(0, min(fmt.PREAMBLE_SIZE, file_size)), file_size, mv.crc32c)
    raw_header = read(fmt.PREAMBLE_SIZE, pre.header_length)
    if len(raw_header) != pre.header_length:
        raise FormatError("header: file ends inside the header (truncated?)")
    actual = mv.crc32c(raw_header)
    if actual != pre.header_crc:
        raise ChecksumError("the header", pre.header_crc, actual)
    header = fmt.decode_header(raw_header)
    extra = set(header) - {"meta", "sections"}
    if extra:
        raise FormatError(f"header: unknown top-level fields {sorted(extra)}")
    if not isinstance(header.get("meta"), dict):
        raise FormatError("header: field 'meta' must be a JSON object")
    data_start = fmt.PREAMBLE_SIZE + pre.header_length
    sections = {s.name: s for s in fmt.parse_sections(header, data_start, file_size)}
    return header["meta"], sections, data_start


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checked meta of the snapshot file at `path` (opened as `Container` opens it:
    under a server's confinement, the file opened is checked, not only its name)."""
    fd = open_checked(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{path} is not a regular file (a FIFO, socket or device), not a snapshot")
        return parse_head(lambda offset, length: os.pread(fd, length, offset), st.st_size)[0]
    finally:
        os.close(fd)
