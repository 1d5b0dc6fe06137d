"""Review 35b: the capture listener's bound on its connections (session 35) counted
connections whose TLS handshake was done; one whose handshake is under way held its
descriptor up to the handshake deadline (the header deadline, 10 s) with no bound at
all. An anonymous client that connects and never sends a ``ClientHello``, from one
address, held as many descriptors as it opened in that time (a thousand a second held
ten thousand), past the per-address share and the listener's bound in all: the worker
then accepted no mTLS connection and opened no database connection, what session 35
set out to stop. Handshakes under way are now bounded too, in all and per client
address (so one address cannot take every handshake place from the shoppers).

Raw TCP to a real capture listener; a connection the server closes is seen by a read
ending (a hang's bound, never a judgement of time)."""

from __future__ import annotations

import select
import socket

from tests.api.conftest import VaultServer
from tests.api.test_cap35_capture_connections import _listener, _served, capture_vault

__all__ = ["capture_vault"]  # the fixture, imported for the tests here

# Bounds the wait for the server to close what it must not hold (it would hold them to
# the listener's handshake deadline, 60 s here): a server that refuses closes at once.
WAIT = 20.0


def _silent(port: int, source: str, count: int) -> list[socket.socket]:
    """`count` TCP connections from `source` that never send a ClientHello."""
    return [
        socket.create_connection(("127.0.0.1", port), timeout=WAIT, source_address=(source, 0))
        for _ in range(count)
    ]


def _closed_by_server(conns: list[socket.socket], expected: int) -> int:
    """How many of `conns` the server closed, waiting up to `WAIT` for `expected`."""
    closed: set[socket.socket] = set()
    waiting = list(conns)
    while waiting and len(closed) < expected:
        readable, _, _ = select.select(waiting, [], [], WAIT)
        if not readable:
            break
        for conn in readable:
            try:
                ended = conn.recv(1) == b""
            except ConnectionError:
                ended = True
            if ended:
                closed.add(conn)
                waiting.remove(conn)
    return len(closed)


def test_finding_handshakes_under_way_are_bounded_in_all_and_per_address(
    capture_vault: VaultServer,
) -> None:
    """Medium (fixed, review 35b): see the module text. A listener of 40 connections
    (16 handshakes under way, 2 per address): 30 silent connections from one address
    keep 2 and are refused the rest at once, and another address's shopper is served
    meanwhile."""
    ca = capture_vault.pki.ca
    with _listener(capture_vault, max_connections=40, max_connections_per_address=2) as port:
        silent = _silent(port, "127.0.0.1", 30)
        try:
            assert _closed_by_server(silent, 28) >= 28
            assert _served(port, ca, "127.0.0.2")
        finally:
            for conn in silent:
                conn.close()


def test_one_address_cannot_take_every_handshake_place(capture_vault: VaultServer) -> None:
    """With the per-address share of connections at its default (256, wide for a
    carrier's NAT), an address's share of the handshakes under way is still a quarter of
    them: one address's silent connections leave the other shoppers places (a bound
    of handshakes in all that one address could fill would lock them out more cheaply
    than the listener's bound of connections, which takes four addresses)."""
    ca = capture_vault.pki.ca
    with _listener(capture_vault, max_connections=64) as port:  # 16 under way, 4 each
        silent = _silent(port, "127.0.0.1", 30)
        try:
            assert _closed_by_server(silent, 26) >= 26
            assert _served(port, ca, "127.0.0.2")
        finally:
            for conn in silent:
                conn.close()
