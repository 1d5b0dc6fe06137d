"""Review 35b: a stolen client certificate against the mTLS guard's framing close
(`api.guard._closing`, session 35) through a proxy that pools connections.

The guard keeps a connection whose refused ``POST`` body, within the limit and framed by
``Content-Length`` alone, comes "whatever the answer": one sent without ``Expect:
100-continue``. It read that from a dict of the request's headers, the last of each
name kept; both parsers (llhttp through uvicorn, h11) wait for the 100 when any of the
``Expect`` fields asks for it. ``Expect: 100-continue`` then ``Expect: x`` was kept open
with the parser waiting for a body that never comes, and the next request on the
connection (another client's, through the proxy) was read as that body: the smuggling
session 35 closed, back.

Raw HTTP/1.1 over real mutual TLS on both parsers, as tests/api/test_cap35_mtls_framing.py
(whose helpers it uses); a connection kept open is seen by a bounded read ending (a
hang's bound, never a judgement of time)."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import VaultServer
from tests.api.test_cap35_mtls_framing import _NEXT, PROTOCOLS, _exchange, _head
from tests.api.test_connections import _server

_REFUSED = ("POST", "/v1/tokenize", "Content-Type: text/plain", "Content-Length: 5000")


@PROTOCOLS
@pytest.mark.parametrize(
    "expect",
    [
        pytest.param(("Expect: 100-continue", "Expect: x-other"), id="two-fields-100-first"),
        pytest.param(("Expect: x-other", "Expect: 100-continue"), id="two-fields-100-last"),
        pytest.param(("Expect: 100-Continue",), id="odd-case"),
    ],
)
def test_finding_an_expect_field_behind_another_still_ends_the_connection(
    vault_server: VaultServer, http: str, expect: tuple[str, ...]
) -> None:
    """Medium (fixed, review 35b): see the module text. A 415 answered from the head
    of a request that awaits a 100 ends its connection, whichever of its ``Expect``
    fields asks for the 100; the request behind it is not answered there."""
    with _server(vault_server, http_protocol=http) as port:
        statuses, closed, answer = _exchange(vault_server, port, _head(*_REFUSED, *expect) + _NEXT)
    assert statuses == [b"HTTP/1.1 415"], statuses
    assert re.search(rb"\r\nconnection: close\r\n", answer, re.IGNORECASE), statuses
    assert closed


@PROTOCOLS
@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param(("Content-Length: 2", "Content-Length: 40"), id="differing"),
        pytest.param(("Content-Length: 2, 40",), id="listed"),
    ],
)
def test_a_request_with_two_lengths_is_not_answered_past(
    vault_server: VaultServer, http: str, lengths: tuple[str, ...]
) -> None:
    """A property that held: two differing ``Content-Length`` values (two fields or a
    list) are refused by both parsers and the connection ends; the guard's dict (the
    last field) never frames the body its own way."""
    request = _head("POST", "/v1/tokenize", "Content-Type: application/json", *lengths) + b"{}"
    with _server(vault_server, http_protocol=http) as port:
        statuses, closed, _ = _exchange(vault_server, port, request + _NEXT)
    assert len(statuses) <= 1, statuses
    assert statuses != [b"HTTP/1.1 200"], statuses
    assert closed
