"""The capture listener under attack (the capture review): what anyone on the internet
can send its port."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from api._capture_body import framed_within
from api.capture import build_capture_server
from api.server import BackgroundServer
from tests.api.conftest import VaultServer
from tests.api.test_capture_listener import SHOP, VISA, _session, _tokens, capture_vault
from tests.support.postgres import free_port
from tests.support.wire import closed_by_server, read_response

__all__ = ["capture_vault"]  # the fixture, imported for the tests here

_MEGABYTE = b"x" * (1 << 20)


def _send(vault: VaultServer, head: bytes, body: Iterator[bytes]) -> bytes:
    """`head` and `body` over TLS to the capture port; its answer."""
    assert vault.capture_url is not None
    port = int(vault.capture_url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(head)
        try:
            for chunk in body:
                tls.sendall(chunk)
        except OSError:
            pass  # closed on us: the answer is read below
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                got = tls.recv(65536)
                if not got:
                    break
                answer += got
        except OSError:
            pass
    return answer


def _chunked(first: bytes, megabytes: int) -> Iterator[bytes]:
    yield b"%x\r\n%s\r\n" % (len(first), first)
    for _ in range(megabytes):
        yield b"%x\r\n%s\r\n" % (len(_MEGABYTE), _MEGABYTE)
    yield b'2\r\n"}\r\n0\r\n\r\n'


def test_a_chunked_body_behind_a_small_content_length_is_refused_unread(
    capture_vault: VaultServer,
) -> None:
    """The body bound read the Content-Length header only, and the listener's parser
    (h11) frames a request that has both by its Transfer-Encoding: a body of 64 MB
    announced as 100 bytes was read whole into memory and parsed as JSON (answered 422),
    from anyone on the internet, as many at once as it liked."""
    session = _session(capture_vault)
    before = _tokens(capture_vault)
    head = (
        f"POST /v1/capture/{session.session_id} HTTP/1.1\r\nHost: localhost\r\n"
        f"Origin: {SHOP}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    first = b'{"number": "' + VISA.encode() + b'", "name": "'
    answer = _send(capture_vault, head, _chunked(first, 64))
    status_line, _, rest = answer.partition(b"\r\n")
    problem = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert status_line.split()[1] in {b"400", b"413"}, status_line
    assert problem["code"] in {"payload_too_large", "malformed_http_request"}
    assert VISA.encode() not in answer
    assert _tokens(capture_vault) == before


def test_the_body_read_is_bounded_whatever_its_framing_said(capture_vault: VaultServer) -> None:
    """Behind the framing check, the bytes the app reads are counted: a parser that
    delivered more than the Content-Length said (h11 with chunks did) meets 413."""
    session = _session(capture_vault)
    before = _tokens(capture_vault)
    app = capture_vault.runtime.capture_app
    body = b'{"number": "' + VISA.encode() + b'", "name": "' + b"x" * 8000 + b'"}'
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = pieces.pop(0) if pieces else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(pieces)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": f"/v1/capture/{session.session_id}",
        "raw_path": f"/v1/capture/{session.session_id}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"origin", SHOP.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
        ],
        "client": ("192.0.2.44", 40000),
        "server": ("127.0.0.1", 443),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413, answer
    assert json.loads(answer)["code"] == "payload_too_large"
    assert VISA.encode() not in answer
    assert _tokens(capture_vault) == before


@pytest.mark.parametrize(
    ("headers", "framed"),
    [
        ({"content-length": "100"}, True),
        ({"content-length": "4096"}, True),
        ({"content-length": "4097"}, False),
        ({}, False),
        ({"content-length": "²"}, False),
        ({"content-length": "100", "transfer-encoding": "chunked"}, False),
        ({"transfer-encoding": "chunked"}, False),
    ],
)
def test_a_body_is_framed_by_a_small_content_length_alone(
    headers: dict[str, str], framed: bool
) -> None:
    assert framed_within(headers, 4096) is framed


def _browser(port: int, ca: Path, source: str) -> ssl.SSLSocket:
    """A TLS connection to the capture port from `source` (any 127/8 address)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    return ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="localhost")


def test_one_address_holds_at_most_its_share_of_capture_connections(
    capture_vault: VaultServer,
) -> None:
    """The capture review's trade-off 1: with no client certificates the per-identity
    cap counted nothing here, so one host's slow connections (each within the 10 s read
    deadlines, opened again and again) were bounded by nothing but its sockets. A
    client address (IPv6 by its /64) now holds at most its share; another address is
    still served."""
    port = free_port()
    server = BackgroundServer(
        build_capture_server(
            capture_vault.runtime.capture_app,
            "127.0.0.1",
            port,
            cert=capture_vault.pki.server_cert,
            key=capture_vault.pki.server_key,
            header_timeout=60,
            max_connections_per_address=2,
        )
    )
    server.start()
    held = [_browser(port, capture_vault.pki.ca, "127.0.0.1") for _ in range(2)]
    try:
        third = _browser(port, capture_vault.pki.ca, "127.0.0.1")
        assert closed_by_server(third)
        third.close()
        other = _browser(port, capture_vault.pki.ca, "127.0.0.2")
        other.sendall(b"GET /v1/capture.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(other)[0].startswith(b"HTTP/1.1 200")
        other.close()
    finally:
        for conn in held:
            conn.close()
        server.stop()
