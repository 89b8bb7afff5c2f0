"""thaw.core.ports: an engine's rendezvous port is chosen below the kernel's ephemeral range."""

from __future__ import annotations

import socket

import pytest

from thaw.core import ports


def test_port_is_free_and_below_the_ephemeral_range():
    start = ports.ephemeral_start()
    chosen = {ports.rendezvous_port() for _ in range(20)}
    assert all(ports.LOWEST <= p < start for p in chosen)
    assert len(chosen) > 1  # chosen at random, not one fixed number
    for port in chosen:
        with socket.socket() as s:
            s.bind(("", port))


def test_a_port_in_use_is_not_free():
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        assert not ports.is_free(s.getsockname()[1])


def test_ephemeral_start_is_read_from_the_kernel(tmp_path, monkeypatch):
    f = tmp_path / "ip_local_port_range"
    f.write_text("40000\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", f)
    assert ports.ephemeral_start() == 40000
    assert all(ports.rendezvous_port() < 40000 for _ in range(10))


def test_no_span_left_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "ip_local_port_range"
    f.write_text(f"{ports.LOWEST}\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", f)
    with pytest.raises(ports.NoFreePort, match="no span is left"):
        ports.rendezvous_port()


def test_every_port_taken_is_refused(monkeypatch):
    monkeypatch.setattr(ports, "is_free", lambda port: False)
    with pytest.raises(ports.NoFreePort, match=f"none of {ports.ATTEMPTS} ports"):
        ports.rendezvous_port()
