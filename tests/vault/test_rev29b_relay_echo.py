"""Review 29b: an upstream's echo of the card number the relay sent, in the shapes the
PAN detector does not know, reaching the relaying adapter (out of PCI scope, which must
never receive a PAN).

The detector (`cofre.redaction`) sees the shapes it knows and docs/threat-model.md lists
those it does not (base64, HTML entities, letters or tags between groups, ...). But the
relay is not guessing: it knows the numbers it put in the body, so an echo of one of them
can be found in any shape whose digits, once decoded, read the number in order.

A test named ``test_finding_...`` FAILED on the reviewed main (its docstring: severity,
what the attacker gained, the fix)."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
import unicodedata
from typing import Any
from urllib.parse import unquote

import pytest

from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import GETNET, PAN, _body, _card, relay
from vault.pan import luhn_valid
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

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _groups(pan: str, joint: str) -> str:
    return joint.join(pan[i : i + 4] for i in range(0, len(pan), 4))


# What an upstream answers, given the body it received: each an echo of the number.
ECHOES: dict[str, Any] = {
    # A gateway's debug field: the raw request, base64 (SOAP and XML services do this).
    "base64 of the request": lambda got: {
        "status": "DECLINED",
        "raw_request": base64.b64encode(json.dumps(got).encode()).decode(),
    },
    "base64 of the number": lambda got: {"pan_b64": base64.b64encode(_pan(got).encode()).decode()},
    "json escapes in text": lambda got: {
        "reason": "bad card " + "".join(f"\\u{ord(c):04x}" for c in _pan(got))
    },
    "html hex entities": lambda got: {"html": "".join(f"&#x{ord(c):x};" for c in _pan(got))},
    "superscript digits": lambda got: {"reason": _pan(got).translate(_SUPERSCRIPT)},
    "mixed separators": lambda got: {
        "reason": f"card {_pan(got)[:4]} {_pan(got)[4:8]}-"
        f"{_pan(got)[8:12]}.{_pan(got)[12:]} refused"
    },
    "wide spacing": lambda got: {"reason": _groups(_pan(got), " " * 10)},
    "tags between groups": lambda got: {
        "xml": "".join(f"<g>{_pan(got)[i : i + 4]}</g>" for i in range(0, 16, 4))
    },
    "split across nested objects": lambda got: {
        "a": {"n": _pan(got)[:8]},
        "b": {"n": _pan(got)[8:]},
    },
    "split across keys": lambda got: {"seen": {_pan(got)[:8]: "a", _pan(got)[8:]: "b"}},
    "percent-encoded spaces": lambda got: {"q": _groups(_pan(got), "%20")},
}


def _pan(got: dict[str, Any]) -> str:
    return str(got["card"]["number"])


def _leaves(node: Any) -> list[str]:
    """Every key and value of a JSON answer, as text, in document order."""
    if isinstance(node, dict):
        return [text for k, v in node.items() for text in (str(k), *_leaves(v))]
    if isinstance(node, list):
        return [text for item in node for text in _leaves(item)]
    return [str(node)]


def _digits(text: str) -> str:
    return "".join(str(d) for c in text if (d := unicodedata.digit(c, None)) is not None)


def _readable(text: str) -> list[str]:
    """`text` and what an adapter would decode it into."""
    out = [text, html.unescape(text), unquote(text)]
    out.append(re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text))
    for word in re.findall(r"[A-Za-z0-9+/=]{16,}", text):
        with contextlib.suppress(ValueError):
            out.append(base64.b64decode(word, validate=True).decode("latin-1"))
    return out


def _shows_pan(answer: Any, pan: str) -> bool:
    leaves = _leaves(answer)
    if pan in _digits("".join(leaves)):
        return True
    return any(pan in _digits(shape) for leaf in leaves for shape in _readable(leaf))


@pytest.mark.parametrize("shape", sorted(ECHOES))
def test_finding_an_echo_of_the_sent_number_in_any_shape_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    """Medium (fixed). An acquirer that echoes the request (a debug field with the raw
    request in base64, an error text with the card's groups spread or escaped, the
    card's halves in two objects) handed the card number to getnet-adapter, a service
    outside PCI scope, in clear once decoded: the relay masked what the PAN detector
    recognises and withheld the details it sent (code, name, expiry) in any shape, but
    the number only where the detector saw it or split over one object's values. Now
    every text of the answer (keys and values) whose digits read a number the call
    sent, as it is or once decoded (percent, HTML entities, JSON escapes, base64), is
    withheld whole, and so are the texts a sent number is spread over, in document
    order (`vault.relay.withhold_echoed_pans`)."""
    token = _card(relay)
    echo = ECHOES[shape]
    acquirer.answer = lambda got: (402, echo(got))
    answer = relay.relay(GETNET, "plain", _body(token))
    assert acquirer.received[-1]["card"]["number"] == PAN
    assert not _shows_pan(answer.body, PAN), answer.body


def test_an_answer_without_the_number_keeps_its_digits(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """What is not the number stays: amounts, codes, a base64 nonce, a reference whose
    digits hold no sent number."""
    token = _card(relay)
    nonce = base64.b64encode(b"0123456789abcdef0123").decode()
    answer_body = {
        "status": "APPROVED",
        "amount": 1000,
        "nsu": "000123456",
        "authorization_code": "A1B2C3",
        "nonce": nonce,
        "reference": "order 2031-777",
    }
    acquirer.answer = lambda got: (200, answer_body)
    answer = relay.relay(GETNET, "plain", _body(token))
    assert answer.body == answer_body


def _other_card(pan: str) -> str:
    """A Luhn-valid card with `pan`'s BIN and last four (what its masked reveal shows)
    and another middle: a guess of an adapter that holds `pan`'s token."""
    for middle in range(10**6):
        guess = f"{pan[:6]}{middle:06d}{pan[-4:]}"
        if guess != pan and luhn_valid(guess):
            return guess
    raise AssertionError("no other card")


# How an adapter writes a guess into fields it knows the acquirer echoes (an order id,
# a merchant reference): shapes the echo withholding reads and the detector does not.
GUESSES: dict[str, Any] = {
    "one field, letters between groups": lambda guess: {"order_id": _groups(guess, "x")},
    "two fields": lambda guess: {"order_id": guess[:8], "merchant_ref": guess[8:]},
}


@pytest.mark.parametrize("shape", sorted(GUESSES))
def test_finding_an_echoed_guess_is_answered_the_same_whether_or_not_it_is_the_card(
    relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    """Medium (fixed). The withholding answered whether a text read a number the call
    sent, so it answered whether a guess was the card: an adapter (outside PCI scope)
    that may relay a token and knows its masked reveal (BIN and last four) wrote a guess
    into the fields the acquirer echoes (two short fields, withheld only when they made
    up the card, since review 26; one field with letters between the groups, since the
    withholding of echoes above) and read `[withheld]` for the card, the guess as sent
    for any other. One relay a guess, among the 10^5 Luhn-valid cards of a BIN and last
    four: under getnet-adapter's daily quota of a million. Now an echo is withheld when
    its digits read any number with a sent card's length, shown leading digits and last
    four (`cofre.redaction.masked_leading`): what the masked reveal already shows, so the
    answer is the same for every guess."""
    token = _card(relay)
    write = GUESSES[shape]
    acquirer.answer = lambda got: (
        200,
        {k: got[k] for k in ("order_id", "merchant_ref") if k in got},
    )
    answers = []
    for guess in (PAN, _other_card(PAN)):
        body = {**_body(token), **write(guess)}
        answers.append(relay.relay(GETNET, "plain", body).body)
    # The card's echo is withheld (the finding above), and so must any other guess's
    # be: a guess shown as sent would say it was not the card.
    assert all(set(a.values()) == {WITHHELD_DETAIL} for a in answers), answers


def test_a_bin_a_six_digit_code_and_a_last_four_in_a_row_are_kept(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """What an acquirer answers about the card it charged, in this order, reads like a
    card of the sent one's shape: kept unless those digits together pass the Luhn check
    (a guess an adapter writes is a Luhn-valid card; nine in ten such answers are not)."""
    token = _card(relay)
    code = next(f"{n:06d}" for n in range(10**6) if not luhn_valid(f"{PAN[:6]}{n:06d}{PAN[-4:]}"))
    layout = {"first_six": PAN[:6], "authorization_code": code, "last_four": PAN[-4:]}
    acquirer.answer = lambda got: (200, {"card": layout})
    assert relay.relay(GETNET, "plain", _body(token)).body == {"card": layout}
