"""Review 40's residual: a 1 MiB JSON answer of small objects or arrays parsed and
masked into ~70 MiB of Python objects for one relay (``[{"a":1},...]`` is ~130,000
objects), and a process holds up to 256 relays at once. The relay now counts an
answer's values before it parses it. Upstreams are raw sockets, as in
`test_relay_deadline`."""

from __future__ import annotations

import json
import socket
import tracemalloc
from collections.abc import Callable

import pytest

from tests.support.fake_acquirer import plain_route as _route
from tests.vault.test_relay_deadline import Handler, _Upstream, upstream
from vault._relay_answer import MAX_ANSWER_BYTES, MAX_ANSWER_VALUES, answer_of, values_over
from vault.errors import UpstreamUnavailable
from vault.relay_client import RelayClient

__all__ = ["upstream"]  # the fixture, imported for the tests here


def _json_answer(body: bytes) -> Handler:
    def handler(connection: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        connection.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)

    return handler


def test_an_answer_of_many_small_values_is_refused_before_it_is_parsed(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    """Under the byte bound, over the value bound: 502 (the card has gone to the
    upstream, but its answer is not parsed), holding little more than the answer."""
    unit = b'{"a":1},'
    body = b"[" + unit * (MAX_ANSWER_BYTES // len(unit) - 1) + b"1]"
    assert len(body) <= MAX_ANSWER_BYTES
    server = upstream(_json_answer(body))
    client = RelayClient()
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamUnavailable, match="values"):
            client.send("acq", _route(server.port, timeout_seconds=10.0), {"amount": 1})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        client.close()
    # Parsed, this answer alone was ~70 MiB (review 40); the bound is a few copies of it.
    assert peak < 8 * MAX_ANSWER_BYTES


def test_an_answer_within_the_value_bound_is_answered_whole(
    upstream: Callable[[Handler], _Upstream],
) -> None:
    answer = [{"a": i} for i in range(MAX_ANSWER_VALUES // 3)]
    server = upstream(_json_answer(json.dumps(answer).encode()))
    client = RelayClient()
    try:
        result = client.send("acq", _route(server.port, timeout_seconds=10.0), {"amount": 1})
    finally:
        client.close()
    assert result.body == answer


def test_separators_inside_strings_are_not_values() -> None:
    """A long text in one string (a receipt, a base64 blob with commas) is one value."""
    text = b'{"receipt": "' + b"a, b: [c], {d}; " * 20_000 + b'"}'
    assert not values_over(text, MAX_ANSWER_VALUES)
    # An escaped quote does not end the string.
    assert not values_over(b'["' + b'\\", ' * 30_000 + b'"]', MAX_ANSWER_VALUES)


def test_only_arrays_and_objects_are_counted() -> None:
    """A text that is not JSON is answered as text (``{"body": ...}``), and a scalar is
    one value whatever it holds."""
    assert not values_over(b"a,b," * 30_000, MAX_ANSWER_VALUES)
    assert values_over(b"  [" + b"1," * 30_000 + b"1]", MAX_ANSWER_VALUES)
    assert values_over(b'{"k":' + b"[]," * 30_000 + b"[]}", MAX_ANSWER_VALUES)


def test_an_unclosed_string_is_scanned_once() -> None:
    """Text that does not close its string (not JSON) still has its strings removed in
    one pass: a pattern that failed at an unclosed quote would start again at each of
    the quotes inside it, quadratic in the text."""
    text = b'["' + b'\\"' * 300_000 + b"\\"
    assert not values_over(text, MAX_ANSWER_VALUES)
    many_strings = b'["' + b'",' * 300_000  # ["", ",", ... unclosed: many values
    assert values_over(many_strings, MAX_ANSWER_VALUES)


def _many_values() -> str:
    # A first string holding U+0122: in UTF-16-LE its bytes are 22 01, a quote to a byte
    # scan, which then took every separator after it for the inside of a string.
    return '["\u0122",' + '{"a":1},' * MAX_ANSWER_VALUES + "1]"


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(b"\xef\xbb\xbf" + _many_values().encode(), id="utf-8-bom"),
        pytest.param(_many_values().encode("utf-16"), id="utf-16-bom"),
        pytest.param(_many_values().encode("utf-16-be"), id="utf-16-be"),
        pytest.param(_many_values().encode("utf-16-le"), id="utf-16-le"),
        pytest.param(_many_values().encode("utf-32-le"), id="utf-32-le"),
    ],
)
def test_an_answer_in_any_encoding_json_reads_is_counted(encoded: bytes) -> None:
    """`json.loads` reads bytes after a UTF-8 BOM and in UTF-16 or UTF-32 (it tells
    them from the first bytes): each such answer is counted as it is parsed. Before, a
    BOM or a leading NUL was no container to the count, and the answer was parsed whole."""
    assert len(json.loads(encoded)) > MAX_ANSWER_VALUES  # what the relay parsed before
    with pytest.raises(UpstreamUnavailable, match="values"):
        answer_of("acq", encoded)


def test_an_answer_in_utf_16_within_the_bound_is_parsed_as_before() -> None:
    answer = {"status": "approved", "note": "caf\u00e9 \u0122", "items": [1, 2, 3]}
    for encoding in ("utf-8-sig", "utf-16", "utf-16-be", "utf-32"):
        assert answer_of("acq", json.dumps(answer, ensure_ascii=False).encode(encoding)) == answer
    # Not JSON: its text as before, decoded as UTF-8 whatever it looks like (review 27),
    # without NULs (tests/vault/test_relay_answer_encoding_attacks.py).
    text = "4111 1111".encode("utf-16-le")
    assert answer_of("acq", text) == {"body": "4111 1111"}
