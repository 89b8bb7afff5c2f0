"""On-disk format v1: the byte-level container (see docs/format.md).

This module knows sections and checksums, not what the sections mean. It never imports
torch: ``thaw verify`` needs nothing but the standard library and the movers.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Callable

from .crc import crc32c_strip_zeros
from .errors import ChecksumError, FormatError

MAGIC = b"THAWSNAP"
VERSION = 1
PREAMBLE = struct.Struct("<8sIIQII")  # magic, version, flags, header_length, header_crc, preamble_crc
PREAMBLE_SIZE = PREAMBLE.size  # 32
ALIGN = 4096
MAX_HEADER = 64 * 2**20
MAX_SECTIONS = 1 << 20
MAX_NAME = 1024
MIN_CHUNK = 4096
MAX_CHUNK = 1 << 30
MAX_OFFSET = 1 << 62
DEFAULT_CHUNK = 4 * 2**20

assert PREAMBLE_SIZE == 32


def align_up(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class Section:
    """A named byte range: payload at [offset, offset+length), zero padding to padded_end."""

    name: str
    offset: int
    length: int
    chunk_size: int
    chunk_crcs: tuple[int, ...]

    @property
    def padded_length(self) -> int:
        return align_up(self.length)

    @property
    def padded_end(self) -> int:
        return self.offset + self.padded_length

    @property
    def num_chunks(self) -> int:
        return -(-self.padded_length // self.chunk_size)

    def check_crcs(self, actual: list[int], first_chunk: int = 0, where: str = "") -> None:
        """Raises ChecksumError naming the section and chunk where `actual` (the CRCs of
        chunks first_chunk, first_chunk+1, ...) differs from what the file records."""
        for k, crc in enumerate(actual, start=first_chunk):
            if crc != self.chunk_crcs[k]:
                raise ChecksumError(f"section {self.name!r} chunk {k}{where}", self.chunk_crcs[k], crc)

    def payload_crc32c(self, combine: Callable[[int, int, int], int]) -> int:
        """CRC32C of the payload alone (no padding), from the recorded chunk CRCs: what the
        file claims the payload's CRC is, without reading it (each read checks the claim)."""
        if not self.chunk_crcs:
            return 0
        total = 0
        for k, crc in enumerate(self.chunk_crcs):
            start = k * self.chunk_size
            length = min(self.chunk_size, self.padded_length - start)
            if k == len(self.chunk_crcs) - 1:
                pad = self.padded_length - self.length
                crc, length = crc32c_strip_zeros(crc, pad), length - pad
            total = crc if k == 0 else combine(total, crc, length)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "offset": self.offset,
            "length": self.length,
            "chunk_size": self.chunk_size,
            "crc32c": "".join(f"{c:08x}" for c in self.chunk_crcs),
        }


def pack_preamble(header_length: int, header_crc: int, crc_fn) -> bytes:
    head = PREAMBLE.pack(MAGIC, VERSION, 0, header_length, header_crc, 0)[:28]
    return head + struct.pack("<I", crc_fn(head))


@dataclass(frozen=True)
class Preamble:
    header_length: int
    header_crc: int


def parse_preamble(raw: bytes, file_size: int, crc_fn) -> Preamble:
    if len(raw) < PREAMBLE_SIZE:
        raise FormatError(f"file is {file_size} bytes, shorter than the {PREAMBLE_SIZE}-byte preamble")
    magic, version, flags, header_length, header_crc, preamble_crc = PREAMBLE.unpack(raw[:PREAMBLE_SIZE])
    if magic != MAGIC:
        raise FormatError(f"preamble: bad magic {magic!r}, expected {MAGIC!r} (not a thaw snapshot)")
    actual = crc_fn(raw[:28])
    if actual != preamble_crc:
        raise FormatError(
            f"preamble: CRC32C mismatch (recorded 0x{preamble_crc:08x}, computed 0x{actual:08x})"
        )
    if version != VERSION:
        raise FormatError(f"preamble: format version {version} is not supported (this reader knows {VERSION})")
    if flags != 0:
        raise FormatError(f"preamble: flags 0x{flags:08x} set; version 1 defines none")
    if header_length > MAX_HEADER:
        raise FormatError(f"preamble: header_length {header_length} exceeds the cap of {MAX_HEADER} bytes")
    if (PREAMBLE_SIZE + header_length) % ALIGN:
        raise FormatError(f"preamble: header_length {header_length} does not end the header on a 4096-byte boundary")
    if PREAMBLE_SIZE + header_length > file_size:
        raise FormatError(
            f"preamble: header_length {header_length} runs past the end of the {file_size}-byte file (truncated?)"
        )
    return Preamble(header_length, header_crc)


def _reject_constant(name: str) -> Any:
    raise FormatError(f"header: JSON constant {name} is not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"header: duplicate JSON key {key!r}")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"header: number {text} does not fit a double (it would read as infinity)")
    return value


MAX_DEPTH = 64
"""Deepest nesting of JSON arrays and objects a header may use."""


def _check_strings(obj: Any) -> None:
    """Every string (keys included) is valid Unicode text (JSON's \\u escapes can spell a
    lone surrogate, which no UTF-8 writer can write back), nesting at most MAX_DEPTH."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(f"header: JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            items = [item]
        elif isinstance(item, dict):
            items = list(item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            items = []
            stack.extend((v, depth + 1) for v in item)
        else:
            continue
        for text in items:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise FormatError(f"header: string {text[:40]!r} holds a lone surrogate (not Unicode text)") from None


def decode_header(raw: bytes) -> dict[str, Any]:
    """Parses the header region: one JSON object, then only ASCII spaces. Numbers that
    overflow a double, lone surrogates and nesting past MAX_DEPTH are refused."""
    text_end = len(raw.rstrip(b" "))
    try:
        text = raw[:text_end].decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant,
                         parse_float=_finite_float)
    except FormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"header: not valid UTF-8 JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"header: top level must be a JSON object, found {type(obj).__name__}")
    _check_strings(obj)
    return obj


def encode_header(obj: dict[str, Any]) -> bytes:
    """The header region for `obj`, padded with spaces so that sections start aligned."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    total = align_up(PREAMBLE_SIZE + len(text)) - PREAMBLE_SIZE
    if total > MAX_HEADER:
        raise FormatError(f"header: {total} bytes exceeds the cap of {MAX_HEADER} bytes")
    return text + b" " * (total - len(text))


def _int_field(entry: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = entry.get(key)
    if type(value) is not int:
        raise FormatError(f"{where}: field {key!r} must be an integer, found {value!r:.80}")
    if not lo <= value <= hi:
        raise FormatError(f"{where}: field {key!r} = {value} is outside [{lo}, {hi}]")
    return value


def parse_sections(header: dict[str, Any], data_start: int, file_size: int) -> list[Section]:
    """Validates the section table against the layout rules and the real file size."""
    table = header.get("sections")
    if not isinstance(table, list):
        raise FormatError("header: field 'sections' must be a list")
    if len(table) > MAX_SECTIONS:
        raise FormatError(f"header: {len(table)} sections exceeds the cap of {MAX_SECTIONS}")
    sections: list[Section] = []
    names: set[str] = set()
    expected_offset = data_start
    for i, entry in enumerate(table):
        where = f"section #{i}"
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: must be a JSON object")
        name = entry.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise FormatError(f"{where}: 'name' must be a non-empty string of at most {MAX_NAME} characters")
        where = f"section {name!r}"
        if name in names:
            raise FormatError(f"{where}: name appears twice")
        names.add(name)
        extra = set(entry) - {"name", "offset", "length", "chunk_size", "crc32c"}
        if extra:
            raise FormatError(f"{where}: unknown fields {sorted(extra)}")
        offset = _int_field(entry, "offset", where, 0, MAX_OFFSET)
        length = _int_field(entry, "length", where, 0, MAX_OFFSET)
        chunk = _int_field(entry, "chunk_size", where, MIN_CHUNK, MAX_CHUNK)
        if chunk % ALIGN:
            raise FormatError(f"{where}: chunk_size {chunk} is not a multiple of {ALIGN}")
        if offset != expected_offset:
            kind = "overlaps the previous section" if offset < expected_offset else "leaves a hole"
            raise FormatError(f"{where}: offset {offset} {kind} (expected {expected_offset})")
        end = offset + align_up(length)
        if end > file_size:
            raise FormatError(f"{where}: ends at {end}, past the end of the {file_size}-byte file (truncated?)")
        crc_hex = entry.get("crc32c")
        n_chunks = -(-align_up(length) // chunk)
        if not isinstance(crc_hex, str) or len(crc_hex) != 8 * n_chunks:
            raise FormatError(f"{where}: 'crc32c' must hold {n_chunks} 8-digit hex checksums")
        if crc_hex.strip("0123456789abcdef"):
            raise FormatError(f"{where}: 'crc32c' must be lowercase hexadecimal digits")
        crcs = tuple(int(crc_hex[k : k + 8], 16) for k in range(0, len(crc_hex), 8))
        sections.append(Section(name, offset, length, chunk, crcs))
        expected_offset = end
    if file_size != expected_offset:
        raise FormatError(
            f"file: {file_size - expected_offset} bytes trail the last section (file is "
            f"{file_size} bytes, sections end at {expected_offset})"
            if file_size > expected_offset
            else f"file: sections end at {expected_offset} but the file is {file_size} bytes"
        )
    return sections


def plan_sections(named_lengths: list[tuple[str, int]], data_start: int, chunk_size: int) -> list[Section]:
    """Lays sections out back to back from data_start, CRCs zeroed (filled in after writing)."""
    sections = []
    offset = data_start
    for name, length in named_lengths:
        n_chunks = -(-align_up(length) // chunk_size)
        sections.append(Section(name, offset, length, chunk_size, (0,) * n_chunks))
        offset += align_up(length)
    return sections
