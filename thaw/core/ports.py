"""A port for an engine's own rendezvous, chosen where another process's sockets cannot take it.

Engines left to themselves pick their rendezvous port (torch.distributed's TCP store) by
binding port 0, closing the socket and listening on the number later. Engines booting side
by side (fork's children) meanwhile bind and connect sockets of their own, which the kernel
numbers from its ephemeral range, and one of them can take the port in between: the engine
then dies with EADDRINUSE. The kernel never hands out a port below that range on its own, so
a port chosen there, at random from the operating system's entropy (children forked from one
process share Python's generator state), is taken only by another explicit choice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000
"""Ports below this are left to services an operator may run."""

ATTEMPTS = 200

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
IANA_EPHEMERAL_START = 49152
"""Where the ephemeral range starts on systems without the Linux file (IANA's dynamic ports)."""


class NoFreePort(OSError):
    """No port of the span asked for could be bound."""


def ephemeral_start() -> int:
    """The first port the kernel hands out for port-0 binds and outgoing connections."""
    if EPHEMERAL_RANGE_FILE.exists():
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    return IANA_EPHEMERAL_START


def is_free(port: int) -> bool:
    """Whether a listening socket on every interface can bind `port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def rendezvous_port() -> int:
    """A free port in [LOWEST, the ephemeral range's start), chosen at random.

    Raises NoFreePort when that span is empty (the ephemeral range starts at or below
    LOWEST) or none of ATTEMPTS ports tried could be bound."""
    stop = min(ephemeral_start(), 65536)
    if stop <= LOWEST:
        raise NoFreePort(f"the kernel's ephemeral ports start at {stop}, at or below {LOWEST}: "
                         "no span is left to choose an engine's rendezvous port from; pass one")
    return random_free_port(LOWEST, stop)


def random_free_port(lowest: int, stop: int) -> int:
    """A port in [lowest, stop) that `is_free` now, chosen at random from the operating
    system's entropy; NoFreePort when none of ATTEMPTS tried is."""
    choose = random.SystemRandom()
    for _ in range(ATTEMPTS):
        port = choose.randrange(lowest, stop)
        if is_free(port):
            return port
    raise NoFreePort(f"none of {ATTEMPTS} ports tried in [{lowest}, {stop}) could be bound")
