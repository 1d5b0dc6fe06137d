"""Session 40: the relay's echo checks against the shapes rev39b left "not read".

The holder of a stolen adapter certificate (outside PCI scope: it knows the card's BIN
and last four and every byte it sends) relays through a route to an acquirer that
echoes the request in a shape of its choosing, or is hostile. The card must not come
back to it, whatever the shape:

- the request in base64, its lines (76 characters, MIME's) as the items of a JSON array,
  the card crossing a line break;
- the request dumped by ``hexdump`` without ``-C`` (16-bit little-endian words) and by
  ``od`` (``-x``, ``-c``, ``-b``, ``-t u1``, and its default, octal words);
- the request's bytes as decimal numbers, in a text or as a JSON array of numbers;
- the card's digits in other scripts, as words, and spelled with separators.

Each against the real HTTPS fake acquirer, with the real SoftHSM token and database.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest

import vault.relay as relay_module
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.pans import card_number
from tests.vault.test_relay_card import GETNET, PAYMENTS, _body, relay
from vault._relay_dumps import dump_readings
from vault._relay_echo import HEADROOM, RATIO
from vault.card import SecurityCode
from vault.pan import Pan
from vault.relay import WITHHELD_DETAIL
from vault.service import TokenizeRequest, VaultService

# The answer scan reads the relay's answer bytes: the store and the HSM backend change
# nothing it sees, so this module runs on one cell of the fixtures' matrix (SQLite and
# SoftHSM2; session 47, ~4x faster). tests/vault/test_relay_card.py and test_relay.py
# run the relay itself against both stores and both backends.
pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True),
]

__all__ = ["relay"]  # the fixture, imported for the tests here

# A card whose digits differ pair by pair (a 16-bit word's two bytes swapped read
# another number): 4111 1111 1111 1111 would read itself in some of the shapes below.
PAN = card_number("412345", 678901)
HIDDEN = PAN[6:12]


def _card(service: VaultService) -> str:
    request = TokenizeRequest(
        Pan(PAN), "pan_bin6_last4", expiry="11/31", security_code=SecurityCode("7391")
    )
    return service.tokenize(PAYMENTS, request).token


def _request(got: dict[str, Any]) -> bytes:
    return json.dumps(got).encode()


def _base64_lines(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode()
    return [text[i : i + 76] for i in range(0, len(text), 76)]


def _words16(data: bytes, *, octal: bool, offset_base: int) -> str:
    """``hexdump`` (hex words, hex offsets) and ``od -x`` / ``od`` (octal offsets): each
    line an offset, then eight 16-bit little-endian words."""
    if len(data) % 2:
        data += b"\x00"
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        words = [chunk[i] | chunk[i + 1] << 8 for i in range(0, len(chunk), 2)]
        shown = " ".join(f"{w:06o}" if octal else f"{w:04x}" for w in words)
        offset = f"{at:07o}" if offset_base == 8 else f"{at:07x}"
        lines.append(f"{offset} {shown}")
    return "\n".join([*lines, f"{len(data):07o}" if offset_base == 8 else f"{len(data):07x}"])


def _od_bytes(data: bytes, cell: Callable[[int], str]) -> str:
    lines = [
        f"{at:07o}" + "".join(cell(b) for b in data[at : at + 16]) for at in range(0, len(data), 16)
    ]
    return "\n".join([*lines, f"{len(data):07o}"]) + "\n"


_OD_ESCAPES = {0: "\\0", 7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def _od_c(byte: int) -> str:
    if byte in _OD_ESCAPES:
        return f"{_OD_ESCAPES[byte]:>4}"
    return f"{chr(byte):>4}" if 0x20 <= byte < 0x7F else f" {byte:03o}"


ECHOES: dict[str, Callable[[bytes], Any]] = {
    "base64 lines in a JSON array": _base64_lines,
    "base64 wrapped at 76 in one text": lambda data: "\n".join(_base64_lines(data)),
    "base64 wrapped at 76, CRLF": lambda data: "\r\n".join(_base64_lines(data)),
    "hexdump": lambda data: _words16(data, octal=False, offset_base=16),
    "od -x": lambda data: _words16(data, octal=False, offset_base=8),
    "od": lambda data: _words16(data, octal=True, offset_base=8),
    "od -c": lambda data: _od_bytes(data, _od_c),
    "od -b": lambda data: _od_bytes(data, lambda b: f" {b:03o}"),
    "od -t u1": lambda data: _od_bytes(data, lambda b: f" {b:3d}"),
    "decimal bytes": lambda data: ",".join(str(b) for b in data),
    "decimal bytes, spaced": lambda data: ", ".join(str(b) for b in data),
    "decimal bytes as JSON numbers": list,
    "octal escapes": lambda data: "".join(f"\\{b:03o}" for b in data),
}


@pytest.mark.parametrize("echo", sorted(ECHOES))
@pytest.mark.parametrize("padding", [0, 7, 30, 40])
def test_an_echo_of_the_request_in_a_dump_or_list_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, echo: str, padding: int
) -> None:
    """High. The acquirer answers the request it got in a shape the echo check did not
    read; the adapter reads the card's hidden digits back from it. The caller's padding
    (a reference before the card) puts the card where it likes: across a dump's line,
    a 16-bit word, a base64 line (at 40 the card crosses the first 57 bytes)."""
    token = _card(relay)
    body = {"reference": "r" * (padding + 1), **_body(token)}
    acquirer.answer = lambda got: (402, {"trace": ECHOES[echo](_request(got))})
    answer = relay.relay(GETNET, "getnet-authorize", body)
    assert acquirer.received[-1]["card"]["number"] == PAN
    assert answer.status == 402
    trace = answer.body["trace"]
    assert trace in (WITHHELD_DETAIL, [WITHHELD_DETAIL] * len(trace)), answer.body


_WORDS_EN = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_WORDS_PT = ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove")
_ZERO_WIDTH = "\u200b"


def _spelled(pan: str, digits: str, separator: str, group: int = 4) -> str:
    shown = "".join(digits[int(d)] for d in pan)
    return separator.join(shown[i : i + group] for i in range(0, len(shown), group))


SPELLINGS: dict[str, Callable[[str], Any]] = {
    "fullwidth": lambda pan: _spelled(pan, "０１２３４５６７８９", " "),
    "arabic-indic": lambda pan: _spelled(pan, "٠١٢٣٤٥٦٧٨٩", ""),
    "mathematical bold": lambda pan: _spelled(pan, "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "-"),
    "spaces": " ".join,
    "dashes": lambda pan: _spelled(pan, "0123456789", "-"),
    "dots": lambda pan: _spelled(pan, "0123456789", "."),
    "slashes": lambda pan: _spelled(pan, "0123456789", "/"),
    "zero-width": _ZERO_WIDTH.join,
    "digits as JSON numbers": lambda pan: [int(d) for d in pan],
    "digits as JSON strings": list,
    "English words": lambda pan: " ".join(_WORDS_EN[int(d)] for d in pan),
    "English words, capitalised, hyphens": lambda pan: "-".join(
        _WORDS_EN[int(d)].title() for d in pan
    ),
    "Portuguese words": lambda pan: ", ".join(_WORDS_PT[int(d)] for d in pan),
    "digits as decimal bytes": lambda pan: ",".join(str(ord(d)) for d in pan),
    "pieces each in base64": lambda pan: [
        base64.b64encode(pan[i : i + 4].encode()).decode() for i in range(0, len(pan), 4)
    ],
    "pieces each in base64url": lambda pan: [
        base64.urlsafe_b64encode(pan[i : i + 5].encode()).decode() for i in range(0, len(pan), 5)
    ],
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_the_card_spelled_otherwise_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, spelling: str
) -> None:
    """High (digit words; the rest held before). The acquirer answers the card's number
    spelled otherwise; withheld, or masked as the PAN detector masks a card (its hidden
    digits starred), the adapter reads no more than its masked reveal."""
    token = _card(relay)
    acquirer.answer = lambda got: (200, {"echo": SPELLINGS[spelling](got["card"]["number"])})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert HIDDEN not in _readable(answer.body["echo"]), answer.body


def _readable(echo: Any) -> str:
    """The digits an adapter reads in `echo`: every digit character (any script), every
    digit word, and the bytes a list of decimal numbers names."""
    text = json.dumps(echo, ensure_ascii=False) if isinstance(echo, list) else echo
    numbers = [n for n in text.replace(" ", "").split(",") if n.isdigit()]
    named = "".join(chr(int(n)) for n in numbers if int(n) < 0x80)
    if isinstance(echo, list) and all(isinstance(item, str) for item in echo):
        named += "".join(base64_or_empty(item) for item in echo)
    for words in (_WORDS_EN, _WORDS_PT):
        for digit, word in enumerate(words):
            text = text.replace(word, str(digit)).replace(word.title(), str(digit))
    return "".join(str(unicodedata.digit(c)) for c in text + named if unicodedata.digit(c, -1) >= 0)


def base64_or_empty(item: str) -> str:
    try:
        return base64.urlsafe_b64decode(item.replace("+", "-").replace("/", "_")).decode()
    except ValueError:
        return ""


GENUINE: dict[str, Any] = {
    "status": "APPROVED",
    "message": "Transaction one of two approved; retry in five minutes",
    "amounts": [1000, 250, 13, 7],
    "rgb": [52, 53, 49, 50, 51, 52, 53, 54],
    "lines": ["QVBQUk9WRUQgYnkgaXNzdWVy", "b3JkZXIgbnVtYmVyIDQy"],
    "dump": "0000000 4f4b 200a 3432\n0000006\n",
    "ids": "3f2a 9c41 0b77 1d20 4e55 6a01 7c3b 8d9e",
}


def test_a_genuine_answer_in_these_shapes_is_kept(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """What the new readings must not take: words that are numbers in prose, short
    lists of numbers, base64 lines and dumps of the acquirer's own bytes."""
    token = _card(relay)
    acquirer.answer = lambda got: (200, GENUINE)
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert WITHHELD_DETAIL not in json.dumps(answer.body), answer.body
    assert {key: answer.body[key] for key in ("message", "lines", "dump", "ids")} == {
        key: GENUINE[key] for key in ("message", "lines", "dump", "ids")
    }


def _hostile(kind: str, size: int) -> Any:
    """An answer of about `size` characters made to cost the new readings the most."""
    if kind == "od lines":
        line = " 061 062 063 064 065 066 067 070 071 060 061 062 063 064 065 066"
        return "\n".join(f"{i * 16:07o}{line}" for i in range(size // (len(line) + 8)))
    if kind == "decimal run":
        return ",".join(["1"] * (size // 2))
    if kind == "digit words":
        return " ".join(["one"] * (size // 4))
    if kind == "short items":
        return ["QUJDREVGR0hJSktM"] * (size // 19)
    return list(range(10**6, 10**6 + size // 9))  # eight characters each, joined


@pytest.fixture
def read_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many characters the card check reads in all: every shape it compares
    (`vault.relay._digits_of`) and every text the dump readings scan."""
    count = [0]
    digits_of, readings = relay_module._digits_of, dump_readings

    def counted_digits(text: str) -> str:
        count[0] += len(text)
        return digits_of(text)

    def counted_readings(form: str) -> Any:
        count[0] += len(form)
        return readings(form)

    monkeypatch.setattr(relay_module, "_digits_of", counted_digits)
    monkeypatch.setattr("vault._relay_echo.dump_readings", counted_readings)
    return count


@pytest.mark.parametrize(
    "kind", ["od lines", "decimal run", "digit words", "short items", "numbers"]
)
def test_the_new_readings_cost_is_linear_in_the_answer(
    relay: VaultService, acquirer: FakeAcquirer, read_steps: list[int], kind: str
) -> None:
    """Medium (the bound). Each new reading is one pass over a text and decodes at most
    its length, spent from the answer's bound; the joined arrays count in that bound.
    Steps counted, not time: four times the answer reads at most about four times as
    much, and never past twice what `RATIO` and `HEADROOM` allow the answer."""
    steps = []
    for size in (40 * 1024, 160 * 1024):  # (an answer holds 20,000 values at most)
        token = _card(relay)
        hostile = _hostile(kind, size)
        acquirer.answer = lambda got, hostile=hostile: (200, {"x": hostile})
        read_steps[0] = 0
        answer = relay.relay(GETNET, "getnet-authorize", _body(token))
        assert answer.status == 200
        length = len(json.dumps(hostile))
        assert read_steps[0] <= 2 * (RATIO * 2 * length + HEADROOM), (kind, size, read_steps[0])
        steps.append(read_steps[0])
    assert steps[1] <= 4.5 * steps[0], (kind, steps)
