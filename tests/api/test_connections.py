"""A half-sent request does not hold a connection forever, and one identity cannot open
unbounded connections (the outside review's slow-client finding)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from api.server import BackgroundServer, TLSFiles, build_server
from tests.api.conftest import VaultServer
from tests.support.certificates import issue_odd_client
from tests.support.postgres import free_port
from tests.support.wire import closed_by_server, mtls_connect, read_response

# Generous: a closed connection shows up at once; only a server that never closes it
# would make the test wait this long (and fail).
WAIT = 20.0


@contextmanager
def _server(vault: VaultServer, **limits: float | str) -> Iterator[int]:
    pki = vault.pki
    port = free_port()
    server = BackgroundServer(
        build_server(
            vault.runtime.app,
            "127.0.0.1",
            port,
            TLSFiles(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca),
            **limits,  # type: ignore[arg-type]
        )
    )
    server.start()
    try:
        yield port
    finally:
        server.stop()


def _connect(
    vault: VaultServer,
    port: int,
    name: str = "payments",
    *,
    cert: tuple[Path, Path] | None = None,
) -> ssl.SSLSocket:
    return mtls_connect(vault.pki, port, name, cert=cert, timeout=WAIT)


def _response(conn: ssl.SSLSocket) -> bytes:
    """One whole HTTP response's head."""
    return read_response(conn)[0]


_closed_by_server = closed_by_server


PROTOCOLS = pytest.mark.parametrize("http", ["httptools", "h11"])


@PROTOCOLS
@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connected, silent
        b"POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\n",  # headers never finished
        b"POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\ncontent-type: application/json\r\n"
        b'content-length: 100\r\n\r\n{"pan":',  # body never finished
    ],
)
def test_half_sent_request_is_cut_off(vault_server: VaultServer, sent: bytes, http: str) -> None:
    with _server(vault_server, header_timeout=0.5, body_timeout=0.5, http_protocol=http) as port:
        conn = _connect(vault_server, port)
        try:
            if sent:
                conn.sendall(sent)
            assert _closed_by_server(conn)
        finally:
            conn.close()


@PROTOCOLS
def test_endless_request_head_is_refused_before_any_deadline(
    vault_server: VaultServer, http: str
) -> None:
    """Headers that never end (each line well-formed) are refused at 16 KiB, long before
    the header deadline: the server does not buffer them without bound."""
    with _server(vault_server, header_timeout=600, http_protocol=http) as port:
        conn = _connect(vault_server, port)
        try:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n")
            for i in range(200):
                try:
                    conn.sendall(b"x-filler-%d: %s\r\n" % (i, b"a" * 1000))
                except (ConnectionError, ssl.SSLError):
                    break
            assert _closed_or_refused(conn)
        finally:
            conn.close()


def _closed_or_refused(conn: ssl.SSLSocket) -> bool:
    """True when the server answered 400 and/or closed the connection."""
    data = b""
    try:
        while chunk := conn.recv(4096):
            data += chunk
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/1.1 4")


@PROTOCOLS
def test_a_whole_request_is_answered_and_kept_alive(vault_server: VaultServer, http: str) -> None:
    with _server(vault_server, header_timeout=5, body_timeout=5, http_protocol=http) as port:
        conn = _connect(vault_server, port)
        try:
            for _ in range(2):
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n")
                assert _response(conn).startswith(b"HTTP/1.1 200")
        finally:
            conn.close()


def test_connections_per_identity_are_capped(vault_server: VaultServer) -> None:
    with _server(vault_server, header_timeout=60, max_connections_per_identity=2) as port:
        held = [_connect(vault_server, port) for _ in range(2)]
        try:
            third = _connect(vault_server, port)
            assert _closed_by_server(third)
            third.close()
            other = _connect(vault_server, port, "ledger")
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n")
            assert _response(other).startswith(b"HTTP/1.1 200")
            other.close()
        finally:
            for conn in held:
                conn.close()


@PROTOCOLS
def test_blank_lines_do_not_dodge_the_header_deadline(vault_server: VaultServer, http: str) -> None:
    """llhttp skips CR/LF before a request without a callback, and uvicorn cancels its
    keep-alive timer on any bytes: a client that sends only ``\\r\\n`` (right after the
    handshake, or after a whole request on a keep-alive connection) is still held to the
    header deadline. The keep-alive timeout (30 s) is longer than WAIT, so only the
    header deadline can close these connections in time."""
    with _server(vault_server, header_timeout=0.5, body_timeout=0.5, http_protocol=http) as port:
        fresh = _connect(vault_server, port)
        try:
            fresh.sendall(b"\r\n")
            assert _closed_or_refused(fresh)
        finally:
            fresh.close()
        reused = _connect(vault_server, port)
        try:
            reused.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n")
            assert _response(reused).startswith(b"HTTP/1.1 200")
            reused.sendall(b"\r\n")
            assert _closed_or_refused(reused)
        finally:
            reused.close()


# 64 KiB of well-formed headers, four times the bound, ending the head.
LARGE_HEAD = (
    b"GET /healthz HTTP/1.1\r\nHost: vault\r\n"
    + b"".join(b"x-filler-%02d: %s\r\n" % (i, b"a" * 1000) for i in range(64))
    + b"\r\n"
)


@PROTOCOLS
@pytest.mark.parametrize("writes", [1, 3])
def test_a_whole_large_head_is_refused(vault_server: VaultServer, writes: int, http: str) -> None:
    """The head bound counts the read that starts a head and the one that ends it (h11
    bounds only a head still incomplete): a 64 KiB head is refused whether it arrives in
    one write or in three."""
    with _server(vault_server, header_timeout=600, http_protocol=http) as port:
        conn = _connect(vault_server, port)
        try:
            step = -(-len(LARGE_HEAD) // writes)
            try:
                for start in range(0, len(LARGE_HEAD), step):
                    conn.sendall(LARGE_HEAD[start : start + step])
            except (ConnectionError, ssl.SSLError):
                pass  # refused before the last write: the answer is still read below
            data = b""
            try:
                while chunk := conn.recv(4096):
                    data += chunk
            except (ConnectionError, ssl.SSLError):
                pass
            assert data.startswith(b"HTTP/1.1 400")
        finally:
            conn.close()


def test_a_peer_that_never_starts_tls_is_closed(vault_server: VaultServer) -> None:
    # asyncio holds a connection that never sends a ClientHello for 60 s by default, and
    # the read deadlines start only after the handshake: the handshake gets the header
    # deadline. (WAIT is far below 60 s and far above the 1 s asked for.)
    with _server(vault_server, header_timeout=1) as port:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        try:
            assert raw.recv(1) == b""
        except ConnectionError:
            pass  # closed with a reset: closed all the same
        finally:
            raw.close()


MALFORMED = {
    # Request smuggling's shape: both framings at once.
    "content-length and transfer-encoding": b"POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate content-length": b"POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\n"
    b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n{}{}}",
    "invalid method": b"G(T /healthz HTTP/1.1\r\nHost: vault\r\n\r\n",
    "head too large": LARGE_HEAD,
}


def _problem_answer(data: bytes) -> dict[str, object]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 400"), data[:200]
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    assert headers[b"content-type"] == b"application/problem+json"
    answer: dict[str, object] = json.loads(body[: int(headers[b"content-length"])])
    return answer


@PROTOCOLS
def test_what_the_http_parser_refuses_is_a_problem(vault_server: VaultServer, http: str) -> None:
    # uvicorn answers its parser's refusals with a text/plain 400 of its own: every
    # answer of the vault is RFC 9457 with a stable code, these included.
    with _server(vault_server, header_timeout=600, http_protocol=http) as port:
        for name, sent in MALFORMED.items():
            if http == "h11" and name == "content-length and transfer-encoding":
                # h11 reads the chunked body and ignores Content-Length, as RFC 9112
                # section 6.3 allows: a request, not a parser error.
                continue
            conn = _connect(vault_server, port)
            try:
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    conn.sendall(sent)
                data = b""
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    while chunk := conn.recv(4096):
                        data += chunk
            finally:
                conn.close()
            answer = _problem_answer(data)
            large = name == "head too large"
            expected = "request_head_too_large" if large else "malformed_http_request"
            assert (answer["code"], answer["status"]) == (expected, 400), name


@pytest.mark.parametrize(
    "case", [pytest.param([], id="no URI SAN"), pytest.param(None, id="no clientAuth EKU")]
)
def test_certificates_without_an_identity_are_capped_too(
    vault_server: VaultServer, tmp_path: Path, case: list[str] | None
) -> None:
    """A certificate that passes TLS but names no identity (the app answers 401) still
    holds a connection: such connections are capped per certificate like any other."""
    if case is None:
        cert_path, key_path, _ = issue_odd_client(
            vault_server.pki, tmp_path, "odd", ["spiffe://cofre/payments"], client_auth=False
        )
    else:
        cert_path, key_path, _ = issue_odd_client(vault_server.pki, tmp_path, "odd", case)
    odd = (cert_path, key_path)
    with _server(vault_server, header_timeout=60, max_connections_per_identity=2) as port:
        held = [_connect(vault_server, port, cert=odd) for _ in range(2)]
        try:
            held.append(third := _connect(vault_server, port, cert=odd))
            assert _closed_by_server(third)
            other = _connect(vault_server, port)
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n")
            assert _response(other).startswith(b"HTTP/1.1 200")
            other.close()
        finally:
            for conn in held:
                conn.close()
