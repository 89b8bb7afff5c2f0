"""A minimal reader written from docs/format.md alone (no thaw imports), used as an oracle."""

import json
import struct

import crc32c


def read_spec(path):
    """Returns (meta, {section name: payload bytes}); raises ValueError on any violation."""
    blob = open(path, "rb").read()
    magic, version, flags, hlen, hcrc, pcrc = struct.unpack_from("<8sIIQII", blob, 0)
    if magic != b"THAWSNAP" or version != 1 or flags != 0:
        raise ValueError("bad preamble")
    if crc32c.crc32c(blob[:28]) != pcrc:
        raise ValueError("preamble crc")
    if hlen > 64 * 2**20 or (32 + hlen) % 4096 or 32 + hlen > len(blob):
        raise ValueError("header length")
    header_bytes = blob[32:32 + hlen]
    if crc32c.crc32c(header_bytes) != hcrc:
        raise ValueError("header crc")
    header = json.loads(header_bytes.decode("utf-8").rstrip(" "))
    pos = 32 + hlen
    out = {}
    for s in header["sections"]:
        if s["offset"] != pos:
            raise ValueError("section offset")
        padded = -(-s["length"] // 4096) * 4096
        extent = blob[pos:pos + padded]
        if len(extent) != padded:
            raise ValueError("truncated")
        cs = s["chunk_size"]
        crcs = [int(s["crc32c"][i:i + 8], 16) for i in range(0, len(s["crc32c"]), 8)]
        chunks = [extent[i:i + cs] for i in range(0, padded, cs)]
        if len(chunks) != len(crcs) or any(crc32c.crc32c(c) != x for c, x in zip(chunks, crcs)):
            raise ValueError("section crc")
        if any(extent[s["length"]:]):
            raise ValueError("padding not zero")
        out[s["name"]] = extent[:s["length"]]
        pos += padded
    if pos != len(blob):
        raise ValueError("trailing bytes")
    return header["meta"], out
