"""thaw.core.residency: the page cache's share of a file, and dropping it, on a real file."""

import os

import pytest

from thaw.core.residency import COLD_BELOW, evict, is_cold, resident_fraction


def test_empty_file_counts_as_resident(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert resident_fraction(path) == 1.0


def test_written_file_is_resident_then_cold_after_evict(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(os.urandom(8 << 20))
    assert resident_fraction(path) > COLD_BELOW  # just written: in the page cache
    assert not is_cold(path)
    left = evict(path)
    if left > 0.5:
        pytest.skip(f"this file system keeps dropped pages ({left:.0%} still resident: tmpfs or similar)")
    assert is_cold(path)
    with open(path, "rb") as f:  # reading it brings it back
        f.read()
    assert resident_fraction(path) > COLD_BELOW


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        resident_fraction(tmp_path / "absent")


def test_sampled_windows_agree_with_every_page(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(os.urandom(16 << 20))  # 4096 pages
    whole = resident_fraction(path, windows=4096, window_pages=1)
    assert resident_fraction(path, windows=8, window_pages=4) == pytest.approx(whole, abs=0.05)
    evict(path)
    whole = resident_fraction(path, windows=4096, window_pages=1)
    assert resident_fraction(path, windows=8, window_pages=4) == pytest.approx(whole, abs=0.2)
