"""Session 35: the mTLS listener ends a connection after a request framed ambiguously or
answered with its body unread, as the capture listener does since review 34
(`api._capture_body.closing`, RFC 9112 6.1 and 9110 10.1.1).

A proxy or balancer in front of the mTLS API keeps its connections to the vault and
sends the requests of many of its own clients down them (the adapter tier; the bench's
haproxy with ``http-reuse always``). The API answered 413 (a body over its limit), 415
(not JSON), a request the guard refused before the app and a request whose route reads
no body, all without reading the body, and kept the connection: with ``Expect:
100-continue`` the client never sends that body, so the next request on the
connection (another client's, through the proxy) was read as its bytes, and whatever
of it went past the announced length as a request of its own; a probe sent with a body
(a method some proxies frame without one) and a chunked request were kept too. The h11
parser also answered a request with both ``Content-Length`` and ``Transfer-Encoding``
and kept the connection (framed by its chunks, where a proxy may frame it by its
length). What stays open: a request whose body was read, and a ``POST`` whose body
within the limit, framed by its length alone and sent without ``Expect``, comes
whatever the answer (the parser drops it by that framing).

Raw HTTP/1.1 over real mutual TLS, on both parsers the API runs with. A connection that
stays open is seen by a bounded read ending (a hang's bound, never a judgement of time);
the answer's ``Connection: close`` is asserted too."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.conftest import VaultServer
from tests.api.test_connections import _server
from tests.support.wire import mtls_connect, read_until_closed

# Bounds a read of a connection the server keeps open (it would close it only at the
# body deadline, 30 s): a server that closes does so at once.
WAIT = 10.0
_NEXT = b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n"
_TOKENIZE = json.dumps({"pan": "4111111111111111", "format": "pan_last4"}).encode()
PROTOCOLS = pytest.mark.parametrize("http", ["httptools", "h11"])


def _exchange(vault: VaultServer, port: int, data: bytes) -> tuple[list[bytes], bool, bytes]:
    """Send `data` as the payments identity; the status lines answered, whether the
    server closed the connection, and everything it answered."""
    with mtls_connect(vault.pki, port, timeout=WAIT) as tls:
        tls.sendall(data)
        answer, closed = read_until_closed(tls)
    return re.findall(rb"HTTP/1\.1 \d{3}", answer), closed, answer


def _head(method: str, path: str, *fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: vault", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_JSON = "Content-Type: application/json"


def _named(*cases: tuple[str, bytes, bytes | None]) -> list[Any]:
    """The cases, each named in the test's id by its first value."""
    return [pytest.param(*case, id=case[0]) for case in cases]


@PROTOCOLS
@pytest.mark.parametrize(
    ("case", "request_bytes", "status"),
    _named(
        # 413, Expect: 100-continue: no 100 is sent, so the client sends no body; the
        # next request's bytes were read as that body.
        (
            "too-large-expect",
            _head("POST", "/v1/tokenize", _JSON, "Content-Length: 70000", "Expect: 100-continue"),
            b"HTTP/1.1 413",
        ),
        # 413 with a body on its way (a proxy streams it): the part sent, then the next.
        (
            "too-large-streamed",
            _head("POST", "/v1/tokenize", _JSON, "Content-Length: 70000") + b'{"pan": "41',
            b"HTTP/1.1 413",
        ),
        # 415, refused before its body was read, whose body may never come.
        (
            "not-json-expect",
            _head(
                "POST",
                "/v1/tokenize",
                "Content-Type: text/plain",
                "Content-Length: 5000",
                "Expect: 100-continue",
            ),
            b"HTTP/1.1 415",
        ),
        # A body where the route reads none (a probe): answered, the body left unread.
        ("probe-with-body", _head("GET", "/healthz", "Content-Length: 11") + b"hello world", None),
        # Chunked: read whole, but framed in a way a proxy in front may not share.
        (
            "chunked",
            _head("POST", "/v1/tokenize", _JSON, "Transfer-Encoding: chunked")
            + f"{len(_TOKENIZE):x}\r\n".encode()
            + _TOKENIZE
            + b"\r\n0\r\n\r\n",
            b"HTTP/1.1 200",
        ),
        # Both framings: RFC 9112 6.1, the server MUST close after answering (llhttp
        # refuses it with a 400 and closes; h11 framed it by its chunks and kept it).
        (
            "both-framings",
            _head("GET", "/healthz", "Content-Length: 5", "Transfer-Encoding: chunked")
            + b"0\r\n\r\n",
            None,
        ),
    ),
)
def test_finding_an_answer_with_its_body_unread_or_framed_ambiguously_ends_the_connection(
    vault_server: VaultServer, http: str, case: str, request_bytes: bytes, status: bytes | None
) -> None:
    """Medium (fixed, session 35): request smuggling through a proxy in front of the
    mTLS API, as review 34 found on the capture listener (see the module text). The
    request behind (``GET /healthz``) must not be answered on the connection, and the
    answer says ``Connection: close``."""
    with _server(vault_server, http_protocol=http) as port:
        statuses, closed, answer = _exchange(vault_server, port, request_bytes + _NEXT)
    assert len(statuses) == 1, (case, statuses)
    if status is not None:
        assert statuses == [status], (case, statuses)
    assert re.search(rb"\r\nconnection: close\r\n", answer, re.IGNORECASE), (case, statuses)
    assert closed, case


@PROTOCOLS
@pytest.mark.parametrize(
    "request_bytes",
    [
        _head("GET", "/healthz"),
        _head("POST", "/v1/tokenize", _JSON, f"Content-Length: {len(_TOKENIZE)}") + _TOKENIZE,
        # Expect: 100-continue, the body sent after the 100 and read: kept.
        _head(
            "POST",
            "/v1/tokenize",
            _JSON,
            f"Content-Length: {len(_TOKENIZE)}",
            "Expect: 100-continue",
        )
        + _TOKENIZE,
        # Refused before its body was read, but a body within the limit, framed by its
        # length alone and sent whatever the answer: the parser reads it on and drops it
        # by the framing any proxy uses. Kept: closing with its bytes still arriving
        # would reset the connection and could destroy the answer (test_balance).
        _head("POST", "/v1/tokenize", "Content-Type: text/plain", "Content-Length: 2") + b"{}",
        # A body refused after it was read whole (422): kept.
        _head("POST", "/v1/tokenize", _JSON, "Content-Length: 2") + b"{}",
        _head("POST", "/v1/tokenize", _JSON, "Content-Length: 0"),
    ],
)
def test_a_request_whose_body_was_read_keeps_its_connection(
    vault_server: VaultServer, http: str, request_bytes: bytes
) -> None:
    """The close is for what the API did not read: a pooled client's ordinary requests
    (a tokenize, a refusal of a body read whole, a probe) leave the connection open for
    the next request, or every request would pay a new mutual TLS handshake. Shown by
    answers on the same connection, so nothing waits on a read's bound."""
    with (
        _server(vault_server, http_protocol=http) as port,
        mtls_connect(vault_server.pki, port, timeout=WAIT) as tls,
    ):
        answers = _Answers(tls)
        tls.sendall(request_bytes + _NEXT)
        first, second = answers.next(), answers.next()
        tls.sendall(_NEXT)
        third = answers.next()
    assert not re.search(rb"\r\nconnection: close\r\n", first, re.IGNORECASE), first
    assert second.startswith(b"HTTP/1.1 200"), second
    assert third.startswith(b"HTTP/1.1 200"), third


class _Answers:
    """The answers on one connection, in order, each read whole (pipelined answers may
    come in one read: what is past one answer is kept for the next)."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.data = b""

    def next(self) -> bytes:
        """The next final answer's head (an interim ``100 Continue`` skipped). Raises
        `EOFError` when the server closes the connection first."""
        while True:
            self._until(lambda: b"\r\n\r\n" in self.data)
            head, _, self.data = self.data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 1"):
                break
        found = re.search(rb"(?im)^content-length:[ \t]*([0-9]+)", head)
        length = int(found.group(1)) if found else 0
        self._until(lambda: len(self.data) >= length)
        self.data = self.data[length:]
        return head

    def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            got = self.tls.recv(65536)
            if not got:
                raise EOFError
            self.data += got
