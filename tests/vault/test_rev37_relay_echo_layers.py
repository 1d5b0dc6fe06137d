"""Review 37: echoes of the card the relay sent that `withhold_echoed_pans` read past.

Session 36 taught the echo check to inflate a gzip, zlib or raw deflate stream in a
base64 word. An adapter holding a stolen certificate (outside PCI scope, it knows its
card's BIN and last four and every byte of the body it sends) still got the card back
from an acquirer that echoes the request:

- compressed, with a field of its own before the card: 5,000 ``A`` compress to a few
  bytes, the echo's stream then inflated more than 32 times its size, and the check
  read only that much of it, so the card after the padding was never read and came back
  whole (the caller chooses the padding, so any compressed echo was readable);
- in hex (a trace's hex dump of the request, ``raw_request_hex``), each digit then
  ``3`` and the digit, which no decoding read;
- encoded twice: base64 of a base64 payload (a SOAP envelope's), base64 whose MIME
  line breaks were JSON-escaped once more (``\\r\\n`` as text), hex of a gzip stream,
  gzip of gzip (a compressed archive of a compressed log).

Each against the real HTTPS fake acquirer, with the real SoftHSM token and database.
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

# The answer scan reads the relay's answer bytes: the store and the HSM backend change
# nothing it sees, so this module runs on one cell of the fixtures' matrix (SQLite and
# SoftHSM2; session 47, ~4x faster). tests/vault/test_relay_card.py and test_relay.py
# run the relay itself against both stores and both backends.
pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

__all__ = ["relay"]  # the fixture, imported for the tests here


def _request(got: dict[str, Any]) -> bytes:
    return json.dumps(got).encode()


def _mime(data: bytes) -> str:
    """base64 in MIME's 76-column lines, the line breaks JSON-escaped as text (a JSON
    string holding the field, encoded once more)."""
    text = base64.b64encode(data).decode()
    return "\\r\\n".join(text[i : i + 76] for i in range(0, len(text), 76))


# What an acquirer answers, given the request it received: each holds the card.
ECHOES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "gzip of the padded request in base64": lambda got: {
        "debug": base64.b64encode(gzip.compress(_request(got))).decode()
    },
    "hex of the request": lambda got: {"raw_request_hex": _request(got).hex()},
    "hex dump of the request": lambda got: {"trace": " ".join(f"{b:02X}" for b in _request(got))},
    "base64 of base64": lambda got: {
        "envelope": base64.b64encode(base64.b64encode(_request(got))).decode()
    },
    "base64 with escaped line breaks": lambda got: {"payload": _mime(_request(got))},
    "hex of a gzip stream": lambda got: {"blob": gzip.compress(_request(got)).hex()},
    "gzip of gzip in base64": lambda got: {
        "archive": base64.b64encode(gzip.compress(gzip.compress(_request(got)))).decode()
    },
}


def _readable(answer: Any) -> str:
    """Every way this test can read the card out of `answer`'s texts, joined."""
    texts = [json.dumps(answer)]
    for value in answer.values():
        text = str(value).replace("\\r\\n", "").replace(" ", "")
        for decode in (bytes.fromhex, base64.b64decode):
            try:
                data = decode(text)
            except ValueError:
                continue
            for inner in (data, _maybe_base64(data)):
                texts.append(inner.decode("latin-1"))
                with contextlib.suppress(OSError, EOFError):
                    plain = gzip.decompress(inner)
                    texts.append(plain.decode("latin-1"))
                    with contextlib.suppress(OSError, EOFError):
                        texts.append(gzip.decompress(plain).decode("latin-1"))
    return "".join(texts)


def _maybe_base64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return b""


@pytest.mark.parametrize("shape", sorted(ECHOES))
def test_finding_an_echo_encoded_past_the_checks_reach_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    """Medium (fixed). The card went back to the adapter in each of these echoes: the
    check read a compressed word only to 32 times its size (the caller's own padding
    before the card took all of that), read no hex, and decoded one layer only. Now a
    word's decoded bytes are read again (hex and base64, inside JSON escapes, up to
    three layers), and a text whose decoding stops short of its end is withheld whole
    (`vault._relay_echo`)."""
    token = _card(relay)
    acquirer.answer = lambda got: (402, ECHOES[shape](got))
    # The caller's own field before the card: highly compressible.
    body = {"memo": "A" * 5000, **_body(token)}
    answer = relay.relay(GETNET, "plain", body)
    assert acquirer.received[-1]["card"]["number"] == PAN
    assert PAN in _readable(ECHOES[shape](acquirer.received[-1]))  # the test reads it
    assert PAN not in _readable(answer.body), answer.body
    assert set(answer.body.values()) == {WITHHELD_DETAIL}


def test_an_answer_of_hex_digests_and_base64_nonces_is_kept(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """What is not the card stays: a SHA-256 in hex, a nonce in base64 of base64, a
    small gzipped receipt."""
    token = _card(relay)
    answer_body = {
        "digest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "nonce": base64.b64encode(base64.b64encode(b"0123456789abcdef0123")).decode(),
        "receipt": base64.b64encode(gzip.compress(b"approved 10.00 " * 20)).decode(),
    }
    acquirer.answer = lambda got: (200, answer_body)
    answer = relay.relay(GETNET, "plain", _body(token))
    assert answer.body == answer_body
