"""Session 37 (http37): what a client with one stolen certificate sends that is not
HTTP/1.1 as the vault reads it, on both parsers over real TLS: the HTTP/2 connection
preface (prior knowledge), an h2c upgrade, JSON with duplicate keys, a byte-order mark,
deep nesting and huge numbers, a request head of many fields, and many requests
pipelined at once. Each must be a problem+json answer or a closed connection, never a
500 or a hang of the worker."""

from __future__ import annotations

import json
import re

import pytest

from tests.api.conftest import VaultServer
from tests.api.test_connections import _server
from tests.support.wire import mtls_connect, read_until_closed

WAIT = 10.0
PROTOCOLS = pytest.mark.parametrize("http", ["httptools", "h11"])


def _exchange(vault: VaultServer, port: int, data: bytes) -> tuple[list[bytes], bool, bytes]:
    with mtls_connect(vault.pki, port, timeout=WAIT) as tls:
        tls.sendall(data)
        answer, closed = read_until_closed(tls)
    return re.findall(rb"HTTP/1\.1 (\d{3})", answer), closed, answer


def _post(body: bytes, *fields: str) -> bytes:
    lines = [
        "POST /v1/tokenize HTTP/1.1",
        "Host: vault",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *fields,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CASES = {
    "http2-prior-knowledge": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    "h2c-upgrade": (
        b"GET /healthz HTTP/1.1\r\nHost: vault\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n"
    ),
    "duplicate-keys": _post(b'{"pan": "4111111111111111", "format": "pan_last4", "format": "x"}'),
    "bom": _post(b'\xef\xbb\xbf{"pan": "4111111111111111", "format": "pan_last4"}'),
    "deep-nesting": _post(b'{"pan": ' + b"[" * 50000 + b"]" * 50000 + b"}"),
    "huge-number": _post(b'{"pan": ' + b"9" * 60000 + b', "format": "pan_last4"}'),
    "huge-exponent": _post(b'{"pan": 1e999999999, "format": "pan_last4"}'),
    "charset-utf16": _post(
        '{"pan": "4111111111111111", "format": "pan_last4"}'.encode("utf-16"),
        "Content-Type: application/json; charset=utf-16",
    ),
    "many-fields": (
        b"GET /healthz HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n"
        + b"X-A: b\r\n" * 3000
        + b"\r\n"
    ),
}


@PROTOCOLS
@pytest.mark.parametrize("case", sorted(CASES))
def test_what_is_not_the_vault_s_http_is_answered_plainly_and_closed(
    vault_server: VaultServer, http: str, case: str
) -> None:
    """Held (session 37): the HTTP/2 preface is refused (400 ``malformed_http_request``
    on llhttp; h11 answers its ``PRI *`` line 404 and its frames 400), an h2c upgrade is
    not taken (the request is answered as HTTP/1.1, never ``101``), a head of 3,000
    fields is ``request_head_too_large``, deep nesting is over the body limit, a huge
    number or exponent is a 4xx, a BOM or UTF-16 body is read as JSON (RFC 8259 8.1
    lets a parser accept them) and duplicate keys are read last-wins (see the report's
    open question). Every answer problem+json when it refuses; the connection closed."""
    with _server(vault_server, http_protocol=http) as port:
        statuses, closed, answer = _exchange(vault_server, port, CASES[case])
    assert closed, answer[:300]
    assert statuses, answer[:300]
    assert all(int(status) < 500 for status in statuses), answer[:600]
    assert b"101" not in statuses
    head, _, body = answer.partition(b"\r\n\r\n")
    if int(statuses[0]) >= 400:
        assert b"application/problem+json" in head.lower(), answer[:600]
        assert "code" in json.loads(body.split(b"HTTP/1.1")[0])


@PROTOCOLS
def test_two_thousand_pipelined_requests_are_each_answered(
    vault_server: VaultServer, http: str
) -> None:
    """Held (session 37): 2,000 requests pipelined in one write, then one that closes:
    each answered in order, the connection closed after the last (no hang, no 500)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n\r\n"
    with _server(vault_server, http_protocol=http) as port:
        statuses, closed, _ = _exchange(vault_server, port, request * 2000 + last)
    assert closed
    assert statuses == [b"200"] * 2001
