"""Review 39b: the relay's echo checks against a hex dump of the request and against an
answer of many small compressed texts.

The holder of a stolen adapter certificate (outside PCI scope: it knows the card's BIN
and last four and every byte it sends) relays through a route to an acquirer that
echoes the request, or is hostile. Before this review:

- a hex dump of the request in the layouts tools print (``hexdump -C``, ``xxd``,
  ``od -A x -t x1z``: an offset, the bytes, the bytes as text; ``xxd -i``'s ``0x35,``)
  went back to the adapter with the card's middle digits and the code readable: each
  line's hex was read alone (16 bytes: the card spans two), and its offset and text
  column broke the runs of hex, so the card check read no card;
- every text of an answer could read 64 KiB beyond 32 times its length, so an answer of
  thousands of short base64 words of compressed escapes read tens of times what one
  text of the same size may (the price docs/threat-model.md states per 1 MiB).

Each against the real HTTPS fake acquirer, with the real SoftHSM token and database.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Callable
from typing import Any

import pytest

import vault.relay as relay_module
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import CODE, GETNET, PAN, _body, _card, relay
from vault._relay_echo import HEADROOM, RATIO
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

# The card's middle digits (what its masked reveal hides) and its code.
HIDDEN = PAN[6:12]


def _printable(chunk: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)


def _hexdump_c(data: bytes) -> str:
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        left = " ".join(f"{b:02x}" for b in chunk[:8])
        right = " ".join(f"{b:02x}" for b in chunk[8:])
        lines.append(f"{at:08x}  {left:<23}  {right:<23}  |{_printable(chunk)}|")
    return "\n".join([*lines, f"{len(data):08x}"]) + "\n"


def _xxd(data: bytes) -> str:
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        groups = " ".join(chunk[i : i + 2].hex() for i in range(0, len(chunk), 2))
        lines.append(f"{at:08x}: {groups:<39}  {_printable(chunk)}")
    return "\n".join(lines) + "\n"


def _od(data: bytes) -> str:
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        lines.append(f"{at:06x} {hexes:<47}  >{_printable(chunk)}<")
    return "\n".join([*lines, f"{len(data):06x}"]) + "\n"


def _c_array(data: bytes) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 12]) for i in range(0, len(data), 12)]
    return "unsigned char request[] = {\n  " + ",\n  ".join(rows) + "\n};"


DUMPS: dict[str, Callable[[bytes], str]] = {
    "hexdump -C": _hexdump_c,
    "xxd": _xxd,
    "od -A x -t x1z": _od,
    "xxd -i": _c_array,
}


@pytest.mark.parametrize("dump", sorted(DUMPS))
@pytest.mark.parametrize("padding", [0, 5, 11])
def test_finding_a_hex_dump_of_the_request_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, dump: str, padding: int
) -> None:
    """High (fixed). The acquirer answers a trace: the request as a tool dumps it. The
    adapter reads the card's hidden digits and the code from the dump's text column or
    its bytes; the caller's padding (an order id) puts the card where it likes."""
    token = _card(relay)
    body = {**_body(token), "order_id": "o" * (padding + 1)}
    acquirer.answer = lambda got: (402, {"trace": DUMPS[dump](json.dumps(got).encode())})
    answer = relay.relay(GETNET, "getnet-authorize", body)
    echoed = DUMPS[dump](json.dumps(acquirer.received[-1]).encode())
    assert HIDDEN in _read_back(echoed)  # what the adapter would read there
    assert answer.body == {"trace": WITHHELD_DETAIL}, answer.body


def _read_back(dump: str) -> str:
    """The request as the adapter reads it back from a dump: its bytes, line by line."""
    if "0x" in dump:
        return bytes(int(h, 16) for h in dump.split("0x")[1:] for h in [h[:2]]).decode()
    out = bytearray()
    for line in dump.splitlines():
        parts = line.split("  ")[0] if ":" in line else line
        fields = parts.replace(":", " ").split()[1:]
        if "|" in line:
            fields = line.split("|")[0].split()[1:]
        elif ">" in line:
            fields = line.split(">")[0].split()[1:]
        out += bytes.fromhex("".join(fields))
    return out.decode("latin-1")


def test_a_genuine_dump_of_other_bytes_is_kept(relay: VaultService, acquirer: FakeAcquirer) -> None:
    """A dump of bytes holding no card, code or guess (a TLV of the acquirer's own) is not
    withheld (the PAN detector may star a run of its digit groups, as before)."""
    token = _card(relay)
    mine = bytes(range(0x41, 0x7B)) * 3
    kept = {"trace": _hexdump_c(mine), "xxd": _xxd(mine), "c": _c_array(mine)}
    acquirer.answer = lambda got: (200, kept)
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert WITHHELD_DETAIL not in json.dumps(answer.body), answer.body


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _escape_bombs(count: int) -> list[str]:
    """`count` texts of base64 of a zlib stream that inflates about 31 times to text
    holding every escape the check undoes: each reads close to its own bound."""
    units = ["%41", "&amp;", "\\u0041", "=41", "+ADc-", "%2541", " "]
    texts = []
    for seed in range(count):
        # Deterministic, and unlike any other text's: a choice per byte of a digest.
        picks = b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(6))
        choices = [*units, *(c * 3 for c in "abcdefgh")]
        period = "".join(choices[b % len(choices)] for b in picks[:170])
        content = (period * 20)[:8000].encode()
        texts.append(base64.b64encode(zlib.compress(content, 9)).decode())
    return texts


@pytest.fixture
def read_characters(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many characters the card check reads in all (every shape it compares)."""
    count = [0]
    digits_of = relay_module._digits_of

    def counted(text: str) -> str:
        count[0] += len(text)
        return digits_of(text)

    monkeypatch.setattr(relay_module, "_digits_of", counted)
    return count


def test_an_answer_of_many_small_bombs_reads_no_more_than_one_text_of_its_size(
    relay: VaultService, acquirer: FakeAcquirer, read_characters: list[int]
) -> None:
    """Medium (fixed). Each text may read `RATIO` times its length and `HEADROOM`: one
    1 MiB text reads at most 32 MiB, but 2,800 texts of 360 characters read 64 KiB
    each beyond that, about 170 MiB (28 s of CPU measured on this machine, where
    docs/threat-model.md says about 6 s for a hostile 1 MiB answer). The whole answer
    now reads at most what one text of its size may."""
    token = _card(relay)
    bombs = _escape_bombs(150)
    acquirer.answer = lambda got: (200, {"items": bombs})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    size = sum(map(len, bombs))
    assert answer.status == 200
    assert CODE not in json.dumps(answer.body)
    assert read_characters[0] <= 2 * (RATIO * size + HEADROOM), (read_characters[0], size)


def test_a_genuine_answer_of_many_short_texts_is_kept(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """What the answer-wide bound must not take: thousands of short words, UUIDs and
    nonces, each of which reads several times its length (each decoding counts). Fixed
    bytes: random nonces are withheld one in a few hundred (raw deflate of noise past
    its bound, docs/threat-model.md), before this review as after."""
    token = _card(relay)
    kept = {
        "status": ["APPROVED"] * 500,
        "ids": [_digest(f"id/{i}")[:16].hex() for i in range(500)],
        "nonces": [base64.b64encode(_digest(f"nonce/{i}")[:24]).decode() for i in range(500)],
    }
    acquirer.answer = lambda got: (200, kept)
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert WITHHELD_DETAIL not in json.dumps(answer.body)
    assert answer.body["status"] == kept["status"]
    assert answer.body["nonces"] == kept["nonces"]


NAME = "João Conceição"


@pytest.mark.parametrize("encode", ["base64", "hex"])
def test_a_name_past_ascii_echoed_encoded_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, encode: str
) -> None:
    """Low (fixed). The card object echoed without its number, its UTF-8 in base64 or
    hex: decoded bytes are read as Latin-1, where ``João`` is ``JoÃ£o``, so a name
    holding a letter past ASCII was never found (the code and expiry were)."""
    token = _card(relay, code=None, name=NAME)

    def echo(got: dict[str, Any]) -> tuple[int, Any]:
        card = {"holder": got["card"]["cardholder_name"], "brand": "master"}
        data = json.dumps(card, ensure_ascii=False).encode()
        return 402, {"debug": base64.b64encode(data).decode() if encode == "base64" else data.hex()}

    acquirer.answer = echo
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received[-1]["card"]["cardholder_name"] == NAME
    assert answer.body == {"debug": WITHHELD_DETAIL}, answer.body
