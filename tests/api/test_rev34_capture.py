"""Review 34: an outside attacker's review of the capture listener, the one port that
faces the internet without a client certificate (docs/capture.md).

A test named ``test_finding_...`` FAILED on the reviewed main (its docstring: severity,
what the attacker gained, the fix); the others pin a property that held."""

from __future__ import annotations

import re
import socket
import ssl

import pytest

from tests.api.conftest import VaultServer
from tests.api.test_capture_listener import SHOP, _session, capture_vault
from tests.support.wire import read_until_closed

__all__ = ["capture_vault"]  # the fixture, imported for the tests here

_NEXT = b"GET /v1/capture.js HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _exchange(vault: VaultServer, data: bytes) -> tuple[list[bytes], bool]:
    """Send `data` over TLS to the capture port; the status lines answered and whether
    the listener closed the connection (False: it stayed open until the read timed
    out, a bound on a hang, never a judgement of time)."""
    assert vault.capture_url is not None
    port = int(vault.capture_url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(data)
        answer, closed = read_until_closed(tls)
    return re.findall(rb"HTTP/1\.1 \d{3}", answer), closed


def _head(method: str, path: str, *fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Origin: {SHOP}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_CHUNKED_EMPTY = b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "fields", "body"),
    [
        # Both framings: RFC 9112 6.1, the server MUST close after answering.
        ("GET", ("Content-Length: 5", "Transfer-Encoding: chunked"), _CHUNKED_EMPTY),
        ("OPTIONS", ("Content-Length: 5", "Transfer-Encoding: chunked"), _CHUNKED_EMPTY),
        (
            "POST",
            ("Content-Type: application/json", "Content-Length: 5", "Transfer-Encoding: chunked"),
            _CHUNKED_EMPTY,
        ),
        # Chunked alone: no browser sends it to this listener; a proxy may not frame it so.
        ("GET", ("Transfer-Encoding: chunked",), b"5\r\nhello\r\n0\r\n\r\n"),
        # Refused before its body was read: the unread bytes are not the next request.
        ("POST", ("Content-Type: application/json", "Content-Length: 5000"), b"x" * 5000),
        ("POST", ("Content-Type: text/plain", "Content-Length: 2"), b"{}"),
        (
            "POST",
            ("Content-Type: application/json", "Content-Length: 5000", "Expect: 100-continue"),
            b"",
        ),
        # A body where none is read (a page, a preflight): discarded, then the next request.
        ("GET", ("Content-Length: 11",), b"hello world"),
    ],
)
def test_finding_a_request_framed_ambiguously_or_left_unread_ends_its_connection(
    capture_vault: VaultServer, method: str, fields: tuple[str, ...], body: bytes
) -> None:
    """Medium (fixed): request smuggling through whatever stands in front of the
    listener. A request carrying both ``Content-Length`` and ``Transfer-Encoding`` was
    answered and the connection kept open: h11 frames it by its chunks, so a proxy or
    balancer in front that frames it by its length (the CL.TE desync) forwards the
    bytes after the chunks as part of this request while the listener parses them as
    the next one, ahead of the next shopper's request on that proxy's pooled
    connection (a smuggled ``POST /v1/capture/{attacker's session}`` whose body takes
    in the shopper's request). RFC 9112 6.1 says the server MUST close the connection
    after answering such a request; the listener did not, and answered the request
    sent behind it. The same held for a body the listener refused unread (413, 415,
    and a ``100-continue`` whose body never came: the next request's bytes were read
    as that body) and for a body sent with a page or a preflight, which nothing reads.
    Now the answer to a request with ``Transfer-Encoding``, or with a body not read
    whole, carries ``Connection: close`` and the connection ends after it; a request
    whose body was read (every capture a browser sends) keeps its connection."""
    session = _session(capture_vault)
    path = f"/v1/capture/{session.session_id}" if method != "GET" else "/v1/capture.js"
    statuses, closed = _exchange(capture_vault, _head(method, path, *fields) + body + _NEXT)
    assert len(statuses) == 1, statuses
    assert closed


def test_a_capture_whose_body_was_read_keeps_its_connection(capture_vault: VaultServer) -> None:
    """The close is for what the listener did not read: a browser's capture (refused
    here for its secret, after the body was read whole) and a page without a body leave
    the connection open for the next request, as before."""
    session = _session(capture_vault)
    body = b'{"secret": "cofre_cs_wrong", "number": "4111111111111111"}'
    capture = _head(
        "POST",
        f"/v1/capture/{session.session_id}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    )
    statuses, closed = _exchange(capture_vault, capture + body + _NEXT)
    assert statuses == [b"HTTP/1.1 401", b"HTTP/1.1 200"]
    assert not closed


def test_finding_a_refused_body_names_only_the_schemas_fields(capture_vault: VaultServer) -> None:
    """Low (fixed). docs/capture.md: "validation errors name the field and the rule
    only". A field the schema does not know was named as sent: its key came back in
    the error body's ``errors[].loc``, up to the body's 4 KiB of the caller's text,
    masked only where it looked like a card number (a code, a name, an expiry, or a
    card in a layout the masker does not read went back in clear). Now an unknown
    field is named ``?``, a known one by its name."""
    session = _session(capture_vault)
    sent = {
        "secret": session.secret,
        "number": "4111111111111111",
        "cvv 737 for 4111-1111-1111-1111": "x",
        "z" * 2000: 1,
        "expiry": 1230,
    }
    with capture_vault.capture_client() as client:
        answer = client.post(
            f"/v1/capture/{session.session_id}", json=sent, headers={"origin": SHOP}
        )
    assert answer.status_code == 422, answer.text
    assert "737" not in answer.text
    assert "zzzz" not in answer.text
    locations = sorted(tuple(error["loc"]) for error in answer.json()["errors"])
    assert locations == [("body", "?"), ("body", "?"), ("body", "expiry")]
