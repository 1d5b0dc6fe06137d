"""Review 30b: a ``Content-Length`` of more than 4,300 digits (leading zeros: its value
may be the body's true length) passed llhttp and reached the request guard, whose
``int()`` then raised (CPython refuses to convert longer digit strings). The request
was answered ``500 internal_error`` with a traceback logged at ERROR, before its
identity, refusal bucket or audit entry: a stolen certificate (or any the CA issued)
could write tracebacks into the log as fast as it could send, unmetered and with no
audit entry. Now such a length is read by its digits (leading zeros dropped): the
request is answered for what it is, with its entry, as any other.
"""

from __future__ import annotations

import json

import pytest

from api._capture_body import framed_within
from tests.api.conftest import VaultServer
from tests.api.test_rev30b_trailers import _answer, _connect
from tests.support.audit_trail import new_request_id, request_entries

BODY = b'{"pan": "4111111111111111", "format": "uuid"}'


def _send(
    vault: VaultServer, length: bytes, body: bytes, rid: str
) -> tuple[int, dict[str, object]]:
    with _connect(vault) as sock:
        sock.sendall(
            b"POST /v1/tokenize HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            + f"x-request-id: {rid}\r\n".encode()
            + b"content-length: "
            + length
            + b"\r\n\r\n"
            + body
        )
        return _answer(sock)


@pytest.mark.parametrize("zeros", [4300, 5000, 12000])
def test_a_length_with_many_leading_zeros_is_answered_for_what_it_is(
    vault_server: VaultServer, zeros: int
) -> None:
    rid = new_request_id()
    status, answer = _send(vault_server, b"0" * zeros + str(len(BODY)).encode(), BODY, rid)
    assert status == 200, answer
    assert [e["outcome"] for e in request_entries(vault_server.runtime.engine, rid)] == ["success"]


def test_a_long_length_over_the_limit_is_payload_too_large(vault_server: VaultServer) -> None:
    rid = new_request_id()
    # (Past 64 bits llhttp refuses it itself: 400 malformed_http_request.)
    status, answer = _send(vault_server, b"0" * 5000 + b"99999999", b"", rid)
    assert (status, answer.get("code")) == (413, "payload_too_large"), answer
    (entry,) = request_entries(vault_server.runtime.engine, rid)
    assert entry["details"]["code"] == "payload_too_large"


@pytest.mark.parametrize("space", [b" ", b"\t", b" \t "])
def test_a_length_with_trailing_whitespace_is_read_as_llhttp_reads_it(
    vault_server: VaultServer, space: bytes
) -> None:
    """Review 30c: llhttp takes ``Content-Length: 45 `` (optional whitespace after a
    field value, RFC 9110 5.5) as 45 and hands the value on with its whitespace; the
    guard, reading ASCII digits only, refused the request ``422 invalid_request`` that
    the parser had framed. Fail closed, never a smuggle, but a refusal of a length both
    read the same: the guard now drops the whitespace the parser dropped."""
    rid = new_request_id()
    status, answer = _send(vault_server, str(len(BODY)).encode() + space, BODY, rid)
    assert status == 200, answer


def test_no_traceback_was_logged(vault_server: VaultServer) -> None:
    """Run last in this module: nothing above logged an error."""
    lines = [json.loads(line) for line in vault_server.logs.getvalue().splitlines() if line]
    assert not [line for line in lines if line.get("level") == "error"], "an error was logged"


@pytest.mark.parametrize(
    ("length", "framed"),
    [
        ("0" * 5000 + "12", True),
        ("0" * 5000 + "9" * 5000, False),
        ("0" * 5000, True),
        ("²", False),
        ("12 \t", True),
        ("+12", False),
        ("12,12", False),
    ],
)
def test_the_capture_listener_reads_a_long_length_too(length: str, framed: bool) -> None:
    assert framed_within({"content-length": length}, 4096) is framed
