"""CRC32C: RFC 3720 known answers and property tests against the `crc32c` package, per backend."""

import crc32c as oracle
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thaw._native as native

# RFC 3720, appendix B.4: CRC32C examples over 32-byte buffers.
RFC3720 = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
]


@pytest.mark.parametrize("data,expected", RFC3720)
def test_known_answers(backend, data, expected):
    assert backend.crc32c(data) == expected


@pytest.mark.parametrize("data,expected", RFC3720)
def test_known_answers_portable_native_code(data, expected):
    assert native.crc32c_portable(data) == expected


def test_backend_names():
    assert native.crc32c_backend() in ("sse4.2", "portable")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=17), st.integers(min_value=1, max_value=4))
def test_sharded_equals_serial(data, shards, threads):
    assert native.crc32c_parallel(data, shards, threads) == oracle.crc32c(data)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=400_000), st.integers(min_value=1, max_value=64), st.randoms())
def test_sharded_large_buffers(size, shards, rnd):
    data = rnd.randbytes(size)
    assert native.crc32c_parallel(data, shards, 2) == oracle.crc32c(data)
    assert native.crc32c(data) == native.crc32c_portable(data) == oracle.crc32c(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_combine_and_extend(backend, a, b):
    assert backend.crc32c_combine(backend.crc32c(a), backend.crc32c(b), len(b)) == oracle.crc32c(a + b)
    assert backend.crc32c(b, backend.crc32c(a)) == oracle.crc32c(a + b)


def test_accepts_numpy_and_memoryview():
    arr = np.arange(1000, dtype=np.uint8)
    assert native.crc32c(arr) == native.crc32c(memoryview(arr.tobytes())) == oracle.crc32c(arr.tobytes())


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=4095))
def test_strip_zeros_inverts_appending_zeros(data, n_zeros):
    from thaw.core.crc import crc32c_strip_zeros
    assert crc32c_strip_zeros(oracle.crc32c(data + bytes(n_zeros)), n_zeros) == oracle.crc32c(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=5 * 8192 + 77), st.sampled_from([4096, 8192]), st.randoms())
def test_payload_crc_from_chunk_crcs(backend, length, chunk, rnd):
    """A section's payload CRC, folded from its padded chunks' CRCs, equals the payload's own."""
    from thaw.core import format as fmt
    payload = rnd.randbytes(length)
    padded = payload + bytes(fmt.align_up(length) - length)
    crcs = tuple(oracle.crc32c(padded[k:k + chunk]) for k in range(0, len(padded), chunk))
    sec = fmt.Section("s", 0, length, chunk, crcs)
    assert sec.payload_crc32c(backend.crc32c_combine) == oracle.crc32c(payload)
