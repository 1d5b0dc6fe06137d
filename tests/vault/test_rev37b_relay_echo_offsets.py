"""Review 37b: an echo in base64 that does not start a word.

The echo check (`vault._relay_echo`) decodes every run of base64 characters from its
first character. A run whose base64 begins after other characters of the alphabet (a
URL path, ``/trace/`` then the request in base64; a word glued to its label) was
decoded out of step, four characters making three bytes across the boundaries of the
real ones, and read as noise: the card went back to the adapter whole, plain or
gzipped. Now a run is also read from its second, third and fourth character.

Against the real HTTPS fake acquirer, with the real SoftHSM token and database.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import GETNET, PAN, _body, _card, relay
from vault.relay import WITHHELD_DETAIL
from vault.service import VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here


def _b64(got: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(got).encode()).decode()


def _b64url_gzip(got: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(gzip.compress(json.dumps(got).encode())).decode()


ECHOES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "a URL path ending in the request": lambda got: {
        "links": {"trace": "https://acquirer.example/v1/trace/" + _b64(got)}
    },
    "a path segment of the gzipped request": lambda got: {
        "next": "/3ds/challenge/" + _b64url_gzip(got) + "/start"
    },
    "a label glued to the request": lambda got: {"debug": "req" + _b64(got)},
    "two letters glued to the request": lambda got: {"debug": "rq" + _b64(got)},
}


def _decoded(text: str) -> str:
    """`text`'s base64 read from each of its first four characters (this test's reader)."""
    out = []
    for word in text.split("/"):
        for start in range(4):
            body = word[start:].rstrip("=").replace("-", "+").replace("_", "/")
            try:
                data = base64.b64decode(body + "=" * (-len(body) % 4))
            except ValueError:
                continue
            out.append(data.decode("latin-1"))
            with contextlib.suppress(OSError, EOFError):
                out.append(gzip.decompress(data).decode("latin-1"))
    return "".join(out)


@pytest.mark.parametrize("shape", sorted(ECHOES))
def test_an_echo_in_base64_that_does_not_start_its_word_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    token = _card(relay)
    acquirer.answer = lambda got: (402, ECHOES[shape](got))
    answer = relay.relay(GETNET, "plain", _body(token))
    echoed = json.dumps(ECHOES[shape](acquirer.received[-1]))
    assert PAN in _decoded(echoed.replace('"', "/"))  # the test reads the card there
    assert PAN not in _decoded(json.dumps(answer.body).replace('"', "/")), answer.body
    assert WITHHELD_DETAIL in json.dumps(answer.body)
