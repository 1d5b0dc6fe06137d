"""Raw HTTP/1.1 over mutual TLS for tests that need the wire itself (a connection's
close, a half-sent request): connect as a client identity, read one whole answer, tell
whether the server closed the connection."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from api.pki import DevPKI


def mtls_connect(
    pki: DevPKI,
    port: int,
    name: str = "payments",
    *,
    cert: tuple[Path, Path] | None = None,
    timeout: float = 20.0,
) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:`port` as client identity `name` (or `cert`: a
    certificate and key pair)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    cert_path, key_path = cert or (pki.client_cert(name), pki.client_key(name))
    context.load_cert_chain(str(cert_path), str(key_path))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.settimeout(timeout)
    return tls


def read_response(conn: socket.socket) -> tuple[bytes, bytes]:
    """One whole HTTP message with a Content-Length body (an answer, or the request a
    test's upstream reads): its head (start line and headers) and its body. Raises
    `EOFError` when the peer closes before the message is whole (a loop on an empty
    read would spin for good)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _received(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += _received(conn)
    return head, body


def _received(conn: socket.socket) -> bytes:
    chunk = conn.recv(4096)
    if not chunk:
        raise EOFError
    return chunk


def closed_by_server(conn: ssl.SSLSocket) -> bool:
    """Whether the server closed the connection (False when it stays open and silent
    for the connection's timeout)."""
    try:
        return conn.recv(1024) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def read_until_closed(conn: ssl.SSLSocket) -> tuple[bytes, bool]:
    """Everything `conn` receives until the server closes it or its timeout passes, and
    whether the server closed it (a reset counts as closed)."""
    answer = b""
    try:
        while got := conn.recv(65536):
            answer += got
    except TimeoutError:
        return answer, False
    except (ConnectionError, ssl.SSLError):
        return answer, True
    return answer, True
