"""Review 34b: the capture listener's ``Connection: close`` (review 34, for a request
framed ambiguously or with a body left unread) never ends a browser's ordinary
connection: a CORS preflight, a capture with an empty body, and a capture sent with
``Expect: 100-continue`` whose body was read keep it for the next request."""

from __future__ import annotations

import pytest

from tests.api.conftest import VaultServer
from tests.api.test_capture_listener import _session, capture_vault
from tests.api.test_rev34_capture import _NEXT, _exchange, _head

__all__ = ["capture_vault"]  # the fixture, imported for the tests here

_BODY = b'{"secret": "cofre_cs_wrong", "number": "4111111111111111"}'


@pytest.mark.parametrize(
    ("method", "fields", "body"),
    [
        # A CORS preflight: no body, no Content-Length.
        (
            "OPTIONS",
            ("Access-Control-Request-Method: POST", "Access-Control-Request-Headers: content-type"),
            b"",
        ),
        # A capture whose body is empty (Content-Length: 0): nothing is left unread.
        ("POST", ("Content-Type: application/json", "Content-Length: 0"), b""),
        # Expect: 100-continue, the body sent and read: the connection stays.
        (
            "POST",
            (
                "Content-Type: application/json",
                f"Content-Length: {len(_BODY)}",
                "Expect: 100-continue",
            ),
            _BODY,
        ),
    ],
)
def test_a_browsers_ordinary_requests_keep_their_connection(
    capture_vault: VaultServer, method: str, fields: tuple[str, ...], body: bytes
) -> None:
    session = _session(capture_vault)
    request = _head(method, f"/v1/capture/{session.session_id}", *fields) + body
    statuses, closed = _exchange(capture_vault, request + _NEXT)
    assert [s for s in statuses if s != b"HTTP/1.1 100"][-1] == b"HTTP/1.1 200", statuses
    assert len([s for s in statuses if s != b"HTTP/1.1 100"]) == 2, statuses
    assert not closed
