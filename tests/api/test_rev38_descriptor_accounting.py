"""Review rev38 of http37's descriptor bounds (`api/_descriptor_bounds.py`): is any
connection counted and never released on an error path? A real `cofre serve` of two
workers at 256 open files (so 128 connections a worker, 64 an identity, 32 handshakes
under way and 8 per address), attacked from one address with hundreds of connections
that end on every error path: a reset in the middle of the `ClientHello`, a handshake
refused for want of a client certificate, plain HTTP on the TLS port, a reset right
after the handshake and one in the middle of a request. Each path ran more times than
any bound holds, so one place leaked per connection would fill it.

Held (rev38): afterwards the same address still holds handshakes under way up to its
share and the same identity idle connections up to its share, and is answered."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
from collections.abc import Callable

from tests.api.test_http37_descriptors import (
    FAR,
    _close,
    _open_left,
    _silent,
    _tls_idle,
    small_vault,
)
from tests.support.vault_process import VaultProcess

__all__ = ["small_vault"]  # the fixture, imported to be used here

SOURCE = "127.0.0.5"
# More than a worker's every bound (128 connections) on each path, whichever worker
# the kernel hands them to.
ROUNDS = 300


def _reset(conn: socket.socket) -> None:
    """Close `conn` with a TCP reset (no FIN, no TLS close_notify)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _client_hello(vault: VaultProcess) -> bytes:
    """The bytes of a real mTLS client's first flight (its `ClientHello`)."""
    context = _context(vault, "payments")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _context(vault: VaultProcess, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    if name is not None:
        context.load_cert_chain(str(vault.pki.client_cert(name)), str(vault.pki.client_key(name)))
    return context


def _connect(vault: VaultProcess) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", vault.port), timeout=FAR, source_address=(SOURCE, 0)
    )


def _half_hello_then_reset(vault: VaultProcess, hello: bytes) -> None:
    conn = _connect(vault)
    conn.sendall(hello[: len(hello) // 2])
    _reset(conn)


def _no_certificate(vault: VaultProcess, _hello: bytes) -> None:
    conn = _connect(vault)
    try:
        with _context(vault, None).wrap_socket(conn, server_hostname="localhost") as tls:
            tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            tls.recv(1)
    except (OSError, ssl.SSLError):
        pass  # refused: TLS 1.3 says so after the client's Finished
    finally:
        conn.close()


def _plain_http(vault: VaultProcess, _hello: bytes) -> None:
    conn = _connect(vault)
    conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    with contextlib.suppress(OSError):
        conn.recv(64)
    conn.close()


def _handshake_then_reset(vault: VaultProcess, _hello: bytes) -> None:
    tls = _context(vault, "payments").wrap_socket(_connect(vault), server_hostname="localhost")
    _reset(tls)


def _half_request_then_reset(vault: VaultProcess, _hello: bytes) -> None:
    tls = _context(vault, "payments").wrap_socket(_connect(vault), server_hostname="localhost")
    tls.sendall(b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 90\r\n\r\n{")
    _reset(tls)


PATHS: list[Callable[[VaultProcess, bytes], None]] = [
    _half_hello_then_reset,
    _no_certificate,
    _plain_http,
    _handshake_then_reset,
    _half_request_then_reset,
]


def test_no_error_path_keeps_a_place_of_the_bounds(small_vault: VaultProcess) -> None:
    hello = _client_hello(small_vault)
    for path in PATHS:
        for _ in range(ROUNDS):
            path(small_vault, hello)
    select.select([], [], [], 2.0)  # the server's side of the last ones ends
    # An address's share of handshakes under way is 8 a worker: 6 silent connections
    # fit whichever worker takes them, unless places leaked.
    silent = _silent(small_vault.port, SOURCE, 6)
    # And an identity's share of connections is 64 a worker: 40 fit the same way.
    idle = _tls_idle(small_vault, "payments", SOURCE, 40)
    try:
        assert len(silent) == 6
        assert len(idle) == 40, "a handshake of the identity was refused"
        select.select([], [], [], 1.0)  # a refusal's abort reaches this side
        assert _open_left(silent) == 6, "the address's handshake places leaked"
        assert _open_left(idle) == 40, "the identity's connection places leaked"
        with small_vault.client("payments", timeout=FAR) as client:
            response = client.get("/readyz", headers={"Connection": "close"})
        assert response.status_code == 200, response.text
    finally:
        _close(silent)
        _close(idle)
