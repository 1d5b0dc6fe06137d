"""Session 38: echoes of what the relay sent in encodings its echo checks did not read.

The holder of a stolen adapter certificate (outside PCI scope: it knows the card's BIN
and last four and every byte it sends) relays through a route to an acquirer that
echoes the request, or a part of it, in some encoding. Before session 38:

- the security code, the cardholder's name and the expiry (`withhold_sent`) were looked
  for as written, percent-decoded once and in other scripts' digits only: an echo of
  them in base64, hex, a compressed stream, HTML entities, JSON ``\\u`` escapes, a
  double percent-encoding (a request inside a return URL inside a redirect URL),
  quoted-printable (a soft line break the caller's padding puts inside the code) or
  UTF-7 went back to the adapter whole; the card itself is withheld there
  (`vault._relay_echo`), so an echo of the card object without its number was enough;
- the card (`withhold_echoed_pans`) was not read in base32, Ascii85, base85,
  uuencode, a double percent-encoding of every byte or quoted-printable of every byte,
  nor in base64 of a 13- or 14-digit card alone (18 or 19 characters before the
  padding: shorter than the 20 a word needed).

Each against the real HTTPS fake acquirer, with the real SoftHSM token and database.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import html
import json
import quopri
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

import pytest

from tests.support.codes import shows_code
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.test_relay_card import CODE, GETNET, PAN, PAYMENTS, _body, _card, relay
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

Codec = tuple[Callable[[bytes], str], Callable[[str], bytes]]


def _uu(data: bytes) -> str:
    lines = [binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45)]
    return "begin 644 request.json\n" + "".join(lines) + "`\nend\n"


def _un_uu(text: str) -> bytes:
    lines = text.splitlines()[1:-2]
    return b"".join(binascii.a2b_uu(line) for line in lines)


def _every_byte_percent(data: bytes) -> str:
    return "".join(f"%{b:02X}" for b in data)


def _utf7_all(data: bytes) -> str:
    """UTF-7 with every character in a base64 block (UTF-7 allows it for any)."""
    return "+" + base64.b64encode(data.decode().encode("utf-16-be")).decode().rstrip("=") + "-"


def _un_utf7(text: str) -> bytes:
    return text.encode().decode("utf-7").encode()


# How an acquirer may write the request it echoes, and how the adapter reads it back.
CODECS: dict[str, Codec] = {
    "base32": (lambda d: base64.b32encode(d).decode(), base64.b32decode),
    "base32 without padding": (
        lambda d: base64.b32encode(d).decode().rstrip("="),
        lambda t: base64.b32decode(t + "=" * (-len(t) % 8)),
    ),
    "ascii85 framed": (
        lambda d: base64.a85encode(d, adobe=True).decode(),
        lambda t: base64.a85decode(t, adobe=True),
    ),
    "ascii85": (lambda d: base64.a85encode(d).decode(), base64.a85decode),
    "base85": (lambda d: base64.b85encode(d).decode(), base64.b85decode),
    "uuencode": (_uu, _un_uu),
    "quoted-printable of every byte": (
        lambda d: "".join(f"={b:02X}" for b in d),
        lambda t: quopri.decodestring(t.encode()),
    ),
    "percent of every byte, twice": (
        lambda d: quote(_every_byte_percent(d), safe=""),
        lambda t: unquote(unquote(t)).encode(),
    ),
    "utf-7 in one block": (_utf7_all, _un_utf7),
}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_finding_the_request_echoed_in_an_unread_encoding_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, codec: str
) -> None:
    """High (fixed). The card (and its code) went back to the adapter in each of these
    encodings of the request."""
    encode, decode = CODECS[codec]
    token = _card(relay)
    acquirer.answer = lambda got: (402, {"debug": encode(json.dumps(got).encode())})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    echoed = encode(json.dumps(acquirer.received[-1]).encode())
    assert PAN in decode(echoed).decode()  # the adapter reads the card there
    assert answer.body == {"debug": WITHHELD_DETAIL}, answer.body


def _card_object(got: dict[str, Any]) -> bytes:
    """The card object the vault sent, without its number (the card check's part)."""
    return json.dumps({k: v for k, v in got["card"].items() if k != "number"}).encode()


def _qp_soft_break_in_code(got: dict[str, Any]) -> str:
    """Quoted-printable in 76-column lines: the caller's own padding puts the soft line
    break inside the code."""
    text = f"{'x' * 72} {got['card']['security_code']} approved"
    return quopri.encodestring(text.encode()).decode()


# What an acquirer answers, given the request, and the text of it the adapter reads.
DETAIL_ECHOES: dict[str, tuple[Callable[[dict[str, Any]], str], Callable[[str], str]]] = {
    "base64 of the card object": (
        lambda got: base64.b64encode(_card_object(got)).decode(),
        lambda t: base64.b64decode(t).decode(),
    ),
    "base64 of the code alone": (
        lambda got: base64.b64encode(got["card"]["security_code"].encode()).decode(),
        lambda t: base64.b64decode(t).decode(),
    ),
    "base64 of the name alone": (
        lambda got: base64.b64encode(got["card"]["cardholder_name"].encode()).decode(),
        lambda t: base64.b64decode(t).decode(),
    ),
    "base64 of the expiry": (
        lambda got: base64.b64encode(
            f"{got['card']['expiration_month']}/{got['card']['expiration_year']}".encode()
        ).decode(),
        lambda t: base64.b64decode(t).decode(),
    ),
    "hex of the card object": (
        lambda got: _card_object(got).hex(),
        lambda t: bytes.fromhex(t).decode(),
    ),
    "gzip in base64 of the card object": (
        lambda got: base64.b64encode(gzip.compress(_card_object(got))).decode(),
        lambda t: gzip.decompress(base64.b64decode(t)).decode(),
    ),
    "base64 of UTF-16 of the card object": (
        lambda got: base64.b64encode(_card_object(got).decode().encode("utf-16-le")).decode(),
        lambda t: base64.b64decode(t).decode("utf-16-le"),
    ),
    "HTML entities of the code": (
        lambda got: "".join(f"&#{ord(c)};" for c in "cvv " + got["card"]["security_code"]),
        html.unescape,
    ),
    "percent-encoding, twice": (
        lambda got: quote(quote(_card_object(got).decode(), safe=""), safe=""),
        lambda t: unquote(unquote(t)),
    ),
    "quoted-printable, a soft break in the code": (
        _qp_soft_break_in_code,
        lambda t: quopri.decodestring(t.encode()).decode(),
    ),
    "utf-7 in one block": (
        lambda got: _utf7_all(_card_object(got)),
        lambda t: _un_utf7(t).decode(),
    ),
    "base32 of the card object": (
        lambda got: base64.b32encode(_card_object(got)).decode(),
        lambda t: base64.b32decode(t).decode(),
    ),
}


@pytest.mark.parametrize("shape", sorted(DETAIL_ECHOES))
def test_finding_a_detail_echoed_encoded_without_the_card_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, shape: str
) -> None:
    """High (fixed). The security code, name or expiry went back to the adapter in each
    of these: the card check decodes, `withhold_sent` did not."""
    encode, decode = DETAIL_ECHOES[shape]
    token = _card(relay)
    acquirer.answer = lambda got: (402, {"status": "DECLINED", "debug": encode(got)})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    read = decode(encode(acquirer.received[-1]))
    assert shows_code(read, CODE) or "Ana Souza" in read or "11/31" in read, read
    assert answer.body == {"status": "DECLINED", "debug": WITHHELD_DETAIL}, answer.body


def test_a_text_answer_echoing_the_code_in_json_escapes_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text answer (no JSON) is not parsed, so its ``\\u0037`` escapes stay escapes."""
    import tests.support.fake_acquirer as fake_acquirer_module  # noqa: PLC0415
    from tests.vault.test_relay_card import _JsonShim, _Raw  # noqa: PLC0415

    monkeypatch.setattr(fake_acquirer_module, "json", _JsonShim)
    token = _card(relay)

    def echo(got: dict[str, Any]) -> tuple[int, Any]:
        code = "".join(f"\\u{ord(c):04x}" for c in got["card"]["security_code"])
        return 402, _Raw(f'error: {{"cvv": "{code}"}} rejected')

    acquirer.answer = echo
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert answer.body == {"body": WITHHELD_DETAIL}, answer.body


@pytest.mark.parametrize("holds_the_card_code", [True, False])
def test_an_encoded_echo_of_the_callers_guesses_tells_nothing(
    relay: VaultService, acquirer: FakeAcquirer, holds_the_card_code: bool
) -> None:
    """The caller writes code guesses into a field the acquirer echoes in base64. The
    answer is the same whether the guesses hold the card's code or not (withheld in
    both): were only the card's code looked for in decodings, the one relay that sends
    the code would say whether the guesses held it, and a caller halving its guesses
    across fields would read it."""
    token = _card(relay)
    guesses = [f"{n:04d}" for n in range(7300, 7400)]
    if not holds_the_card_code:
        guesses.remove(CODE)
    body = {**_body(token), "order_id": " ".join(guesses)}
    acquirer.answer = lambda got: (
        402,
        {"ref": base64.b64encode(got["order_id"].encode()).decode()},
    )
    answer = relay.relay(GETNET, "getnet-authorize", body)
    assert answer.body == {"ref": WITHHELD_DETAIL}


# A 14-digit Diners Club test card: in base64 alone, 19 characters and one "=".
DINERS = "36006666333344"


@pytest.mark.parametrize("encode", ["base64", "base64url"])
def test_finding_a_short_card_in_base64_alone_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer, encode: str
) -> None:
    """Medium (fixed). A word needed 20 base64 characters before its padding: a 13- or
    14-digit card base64-encoded alone has 18 or 19."""
    token = relay.tokenize(PAYMENTS, TokenizeRequest(Pan(DINERS), "pan_bin6_last4")).token
    coder = base64.b64encode if encode == "base64" else base64.urlsafe_b64encode
    acquirer.answer = lambda got: (402, {"pan": coder(got["card"]["number"].encode()).decode()})
    answer = relay.relay(GETNET, "plain", {"card": {"number": token}})
    assert acquirer.received[-1]["card"]["number"] == DINERS
    assert answer.body == {"pan": WITHHELD_DETAIL}, answer.body


def test_a_genuine_answer_of_tokens_nonces_and_digests_is_kept(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """What holds neither the card, its details nor the caller's numbers stays: a JWT,
    base64 and base32 nonces, a hex digest, a UUID, a URL, a plain message."""
    token = _card(relay)
    header = base64.urlsafe_b64encode(b'{"alg":"ES256","typ":"JWT"}').decode().rstrip("=")
    claims = base64.urlsafe_b64encode(b'{"sub":"acq","iat":1765000000,"st":"OK"}')
    kept = {
        "jwt": f"{header}.{claims.decode().rstrip('=')}.c2lnbmF0dXJlLWJ5dGVzLWhlcmU",
        "nonce": base64.b64encode(bytes(range(32))).decode(),
        "otp_seed": base64.b32encode(b"0123456789abcdefghij").decode(),
        "digest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "id": "6f1c2e4a-8b7d-4c3e-9a1f-2d5e6b7c8a9f",
        "next": "https://acquirer.example/v1/payments/pay_2Zx9QmT4/capture?lang=pt-BR",
        "message": "Transação aprovada. Obrigado!",
    }
    acquirer.answer = lambda got: (200, kept)
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert answer.body == kept


def test_an_echo_in_the_upstreams_headers_never_reaches_the_caller(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """Sound (held): a redirect whose `Location`, a `Set-Cookie` and a header of the
    upstream's own echo the card and its code. The relay's answer is its status and
    body only (`vault.relay.RelayResult`), a redirect is never followed, and the API
    route builds its response from those alone."""
    token = _card(relay)
    acquirer.headers = lambda got: {
        "location": f"https://acq.example/retry?pan={got['card']['number']}",
        "set-cookie": f"cvv={got['card']['security_code']}; Path=/",
        "x-echo": base64.b64encode(json.dumps(got).encode()).decode(),
    }
    acquirer.answer = lambda got: (302, {"status": "MOVED"})
    try:
        answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    finally:
        acquirer.headers = None
    assert (answer.status, answer.body) == (302, {"status": "MOVED"})
    assert set(vars(answer)) == {"status", "body"}
