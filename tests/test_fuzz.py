"""Every mutation of a valid snapshot is refused with a typed error; the intact file passes."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thaw
from thaw.core import ThawError

from .helpers import small_snapshot


_VALID: list[bytes] = []


def _valid_bytes(tmpdir: str) -> bytes:
    """A small valid snapshot's bytes, written once per test session."""
    if not _VALID:
        path = f"{tmpdir}/valid.thaw"
        thaw.save(small_snapshot(), path, chunk_size=4096)
        _VALID.append(open(path, "rb").read())
    return _VALID[0]


@pytest.fixture
def valid(tmp_path):
    return _valid_bytes(str(tmp_path))


def _load_all(path):
    snap = thaw.load(path, verify=True)
    for w in snap.weights.values():
        w.tensor()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=0, max_value=7)),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
    st.tuples(st.just("append"), st.integers(min_value=1, max_value=9000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
    st.tuples(st.just("delete"), st.integers(min_value=0), st.just(0)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation)
def test_mutations_are_refused(tmp_path, m):
    valid = _valid_bytes(str(tmp_path))
    kind, pos, arg = m
    data = bytearray(valid)
    count, pos = pos, pos % len(data)
    if kind == "flip":
        data[pos] ^= 1 << arg
    elif kind == "truncate":
        del data[pos:]
    elif kind == "append":
        data += bytes(count)
    elif kind == "insert":
        data.insert(pos, arg)
    else:
        del data[pos]
    path = tmp_path / "mutated.thaw"
    path.write_bytes(bytes(data))
    with pytest.raises(ThawError):
        _load_all(path)


def test_intact_file_passes(tmp_path, valid):
    path = tmp_path / "ok.thaw"
    path.write_bytes(valid)
    _load_all(path)
