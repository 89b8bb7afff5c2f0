"""CRC32C in pure Python: the explicitly selected fallback mover and an oracle for tests.

Same conventions as the native code: ``crc32c(b"123456789") == 0xE3069283`` and
``crc32c(b, crc32c(a)) == crc32c(a + b)``.
"""

from __future__ import annotations

_POLY = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    state = value ^ 0xFFFFFFFF
    table = _TABLE
    for b in memoryview(data).cast("B"):
        state = (state >> 8) ^ table[(state ^ b) & 0xFF]
    return state ^ 0xFFFFFFFF


def _mul_mod_poly(a: int, b: int) -> int:
    product = 0
    bit = 0x80000000
    while bit:
        if a & bit:
            product ^= b
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
        bit >>= 1
    return product


_X = 0x40000000  # x^1 in this bit order (x^0 is 0x80000000)
_X_INVERSE = 0x05EC76F1  # x^-1 modulo the CRC32C polynomial, in the same bit order


def _power(base: int, exponent: int) -> int:
    """base^exponent modulo the polynomial, by squaring."""
    result = 0x80000000  # x^0
    while exponent:
        if exponent & 1:
            result = _mul_mod_poly(base, result)
        base = _mul_mod_poly(base, base)
        exponent >>= 1
    return result


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC of A||B from crc(A), crc(B) and len(B)."""
    return _mul_mod_poly(_power(_X, 8 * len_b), crc_a) ^ crc_b


def crc32c_strip_zeros(crc_padded: int, n_zeros: int) -> int:
    """crc(A) from crc(A || n_zeros zero bytes): the inverse of appending zeros, so that a
    section's payload CRC follows from the CRC of its zero-padded last chunk."""
    if n_zeros == 0:
        return crc_padded
    return _mul_mod_poly(_power(_X_INVERSE, 8 * n_zeros), crc_padded ^ crc32c(bytes(n_zeros)))
