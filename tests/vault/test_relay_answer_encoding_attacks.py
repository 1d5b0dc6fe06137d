"""Attacks on the encodings of an upstream's answer (review 43 read JSON in the
encoding `json.loads` detects: a UTF-8 BOM, UTF-16, UTF-32).

An answer that is not JSON was answered as text decoded as UTF-8 from its raw bytes,
whatever encoding `json.loads` had just told from them. A UTF-16 text (a Windows or
.NET service's error page, `text/plain; charset=utf-16`) then came back as every
character followed by a NUL: the PAN detector skips NULs, but the withholding of the
card details the vault sent (security code, cardholder name, expiry) matches whole
runs, so an acquirer that echoed the request in such an error handed the security
code and the cardholder's name to a caller outside PCI scope (PCI DSS 3.3.1), one NUL
between each of their characters."""

from __future__ import annotations

import json

import pytest

import tests.support.fake_acquirer as fake_acquirer_module
from tests.support.codes import shows_code
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import CODE, GETNET, PAN, _body, _card, _JsonShim, _Raw, relay
from vault.service import VaultService

__all__ = ["relay"]  # the fixture, imported for the tests here


def _utf16le(text: str) -> _Raw:
    """`text` (ASCII) as the fake acquirer sends a `_Raw` answer: its UTF-8 encoding of
    this string is `text` in UTF-16-LE."""
    return _Raw("".join(f"{char}\x00" for char in text))


@pytest.mark.parametrize("shape", ["utf-16 text", "utf-16 json with NaN", "nul then ascii"])
def test_an_echo_in_utf16_text_hands_back_no_code_nor_name(
    relay: VaultService,
    acquirer: FakeAcquirer,
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
) -> None:
    """The last shape is why the text is not decoded as UTF-16 instead: a NUL second
    byte makes `json.detect_encoding` say UTF-16-LE, and ASCII after it reads as CJK,
    which hides the code from the withholding just as well."""
    monkeypatch.setattr(fake_acquirer_module, "json", _JsonShim)
    token = _card(relay)

    def echo(body: dict[str, object]) -> tuple[int, object]:
        card = body["card"]
        assert isinstance(card, dict)
        code, name = card.get("security_code"), str(card.get("cardholder_name", "")).upper()
        if shape == "nul then ascii":
            return 402, _Raw(f"D\x00ECLINED: cvv {code} mismatch for {name}")
        if shape == "utf-16 json with NaN":  # JSON to json.loads, not to its callers
            text = f'{{"status": "DECLINED", "reason": "cvv {code} for {name}", "risk": NaN}}'
        else:
            text = f"DECLINED: cvv {code} mismatch for {name}"
        return 402, _utf16le(text)

    acquirer.answer = echo
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    text = json.dumps(answer.body, ensure_ascii=False).replace("\x00", "").replace("\\u0000", "")
    assert not shows_code(text, CODE), text
    assert "ANA SOUZA" not in text.upper(), text
    assert PAN not in text


@pytest.mark.parametrize("where", ["value", "key"])
def test_an_echo_with_nuls_inside_json_strings_hands_back_no_code_nor_name(
    relay: VaultService, acquirer: FakeAcquirer, where: str
) -> None:
    """The same echo as JSON whose strings carry the NULs (``\\u0000`` escapes, as a
    service that copied UTF-16 text into its JSON error writes them): the strings are
    parsed with a NUL between each character, and the withholding matched whole runs."""
    token = _card(relay)

    def echo(body: dict[str, object]) -> tuple[int, object]:
        card = body["card"]
        assert isinstance(card, dict)
        code, name = card.get("security_code"), str(card.get("cardholder_name", "")).upper()
        spread = "\x00".join(f"cvv {code} mismatch for {name}")
        if where == "key":
            return 402, {"status": "DECLINED", spread: True}
        return 402, {"status": "DECLINED", "reason": spread}

    acquirer.answer = echo
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    text = json.dumps(answer.body, ensure_ascii=False).replace("\x00", "").replace("\\u0000", "")
    assert not shows_code(text, CODE), text
    assert "ANA SOUZA" not in text.upper(), text
