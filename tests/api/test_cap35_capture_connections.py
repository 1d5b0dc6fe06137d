"""Session 35: the capture listener, the one port anyone on the internet reaches without
a client certificate, as an anonymous client: how many connections it holds.

It runs in the mTLS API's own process (`cofre serve`, each worker) and shares that
process's file descriptors and memory. Its connections were bounded per client
address only (256, an IPv6 host by its /64, each held up to the 10 s handshake and
header deadlines and opened again): a few addresses (four IPv4 ones; one IPv6 /48,
65,536 /64s, which a free tunnel broker hands anyone) held connections without any
bound in all. Past the process's descriptor limit (1,024 where the container runtime
keeps the usual soft limit) the worker could accept no mTLS connection, open no
database connection: the payments services' tokenize and detokenize failed with the
shoppers' checkouts. Now the listener holds at most `COFRE_CAPTURE__MAX_CONNECTIONS`
connections per worker, and at most a quarter of the process's descriptors: past it a new one
is closed at once, and the mTLS API keeps the rest."""

from __future__ import annotations

import resource
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from api._descriptor_bounds import mtls_bounds
from api.capture import build_capture_server
from api.server import BackgroundServer
from cofre.settings import CaptureSettings, Settings
from cofre_cli.capture import capture_connections
from tests.api.conftest import VaultServer
from tests.api.test_capture_listener import capture_vault
from tests.support.postgres import free_port
from tests.support.wire import closed_by_server, read_response

__all__ = ["capture_vault"]  # the fixture, imported for the tests here

_PAGE = b"GET /v1/capture.js HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _browser(port: int, ca: Path, source: str) -> ssl.SSLSocket:
    """A TLS connection to the capture port from `source` (any 127/8 address)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    return ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="localhost")


@contextmanager
def _listener(vault: VaultServer, **limits: int) -> Iterator[int]:
    port = free_port()
    server = BackgroundServer(
        build_capture_server(
            vault.runtime.capture_app,
            "127.0.0.1",
            port,
            cert=vault.pki.server_cert,
            key=vault.pki.server_key,
            **{"header_timeout": 60, **limits},  # type: ignore[arg-type]
        )
    )
    server.start()
    try:
        yield port
    finally:
        server.stop()


def _served(port: int, ca: Path, source: str) -> bool:
    """Whether a new connection from `source` is answered (False: closed unanswered)."""
    conn = _browser(port, ca, source)
    try:
        conn.sendall(_PAGE)
        return read_response(conn)[0].startswith(b"HTTP/1.1 200")
    except (EOFError, ConnectionError, ssl.SSLError):
        return False
    finally:
        conn.close()


def test_finding_the_capture_listener_holds_at_most_its_connections_in_all(
    capture_vault: VaultServer,
) -> None:
    """Medium (fixed, session 35): see the module text. Connections from three
    addresses, each far within its own share, fill a listener of three; a fourth
    address's is closed unanswered, and is served again once one of them ends. The
    mTLS API is served throughout."""
    ca = capture_vault.pki.ca
    with _listener(capture_vault, max_connections=3, max_connections_per_address=100) as port:
        held = [_browser(port, ca, f"127.0.0.{n}") for n in (1, 2, 3)]
        try:
            for conn in held:  # each one's handshake done: the listener holds it
                conn.sendall(_PAGE)
                assert read_response(conn)[0].startswith(b"HTTP/1.1 200")
            fourth = _browser(port, ca, "127.0.0.4")
            assert closed_by_server(fourth)
            fourth.close()
            with capture_vault.client("payments") as api:
                assert api.get("/healthz").status_code == 200
            held.pop().close()
            # The listener sees the end of that connection as its event loop gets to
            # it: a bounded number of tries, failing only if no place ever comes back.
            assert any(_served(port, ca, "127.0.0.4") for _ in range(200))
        finally:
            for conn in held:
                conn.close()


def test_the_listener_takes_at_most_a_quarter_of_the_processs_descriptors(
    tmp_path: Path,
) -> None:
    """The setting (1,024 by default) is the bound unless the process's soft limit of
    open files is less than four times it: then a quarter of that, so that with the
    mTLS listener's half (`mtls_bounds`) a quarter is left for the database pool, the
    HSM and the logs (session 38: with half each, both listeners flooded left none)."""

    def bound(soft_limit: int, **capture: int) -> int:
        settings = Settings(data_dir=tmp_path, capture=CaptureSettings(**capture))
        return capture_connections(settings, soft_limit)

    assert bound(1_048_576) == 1024
    assert bound(1_048_576, max_connections=20_000) == 20_000
    assert bound(1024) == 256
    assert bound(1024, max_connections=100) == 100
    for soft_limit in (256, 1024, 2048, 4096, 65_536):
        listeners = (
            bound(soft_limit, max_connections=10**6) + mtls_bounds(2000, soft_limit).max_connections
        )
        assert soft_limit - listeners >= soft_limit // 4, soft_limit
    # Read from this process when not given.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    settings = Settings(data_dir=tmp_path, capture=CaptureSettings(max_connections=10**6))
    expected = 10**6 if soft == resource.RLIM_INFINITY else min(10**6, soft // 4)
    assert capture_connections(settings) == expected


def test_a_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_deadline(
    capture_vault: VaultServer,
) -> None:
    """Header slowloris (pins a property that held): a client that keeps sending its
    request head one byte at a time is closed at the header deadline counted from the
    head's first byte, not pushed back by each byte. The test sends until the listener
    closes, or until a bound far past the deadline (a hang, never a judgement of time)."""
    ca = capture_vault.pki.ca
    head = b"GET /v1/capture.js HTTP/1.1\r\nHost: localhost\r\n" + b"x-slow: " + b"a" * 4000
    with _listener(capture_vault, header_timeout=1) as port:
        conn = _browser(port, ca, "127.0.0.5")
        conn.settimeout(0.1)
        closed = False
        try:
            for byte in head:  # 4,000 bytes at 0.1 s or more each: 400 s at the least
                try:
                    conn.sendall(bytes([byte]))
                    if conn.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except (ConnectionError, ssl.SSLError):
                    closed = True
                    break
        finally:
            conn.close()
    assert closed
