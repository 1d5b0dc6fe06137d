"""Review 36: an upstream's answer whose bytes the vault cannot read as text.

A relay answer that is no JSON was decoded as UTF-8 with U+FFFD in place of each byte
UTF-8 refuses, and the rest handed to the caller. An echo of the request compressed
and sent without its ``Content-Encoding`` (a proxy that drops the header, a
precompressed error page) then kept about half its bytes and its checksum: the caller,
who knows every byte of the request but the six digits the masked reveal hides, picks
the card among the 10^5 Luhn-valid candidates by compressing each. UTF-16 fullwidth
digits kept their low bytes (U+FF15 is ``15 FF`` in UTF-16-LE: 0x15, the digit 5). A
base64 word is decoded for the echo check, but a gzipped one was not: the request
gzipped in base64 (a debug field) came back whole. Each against a real HTTPS upstream.
"""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.https_server import LoopbackHttps
from tests.vault.conftest import oos_relay_policy, relay_vault
from vault import _relay_answer
from vault.pan import Pan, luhn_valid
from vault.service import CallContext, TokenizeRequest, VaultService

# The answer scan reads the relay's answer bytes: the store and the HSM backend change
# nothing it sees, so this module runs on one cell of the fixtures' matrix (SQLite and
# SoftHSM2; session 47, ~4x faster). tests/vault/test_relay_card.py and test_relay.py
# run the relay itself against both stores and both backends.
pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("hsm_provider", ["softhsm2"], indirect=True),
]

PAN = "5555555555554444"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
ADAPTER = CallContext("spiffe://cofre/oos", "req-relay")
# (status, headers, body) for the request body the upstream received.
Answer = Callable[[bytes], tuple[int, dict[str, str], bytes]]


class _BytesUpstream(LoopbackHttps):
    """An HTTPS upstream that answers the bytes a test gives, headers as given."""

    def __init__(self, acquirer: FakeAcquirer) -> None:
        self.answer: Answer = lambda _body: (200, {}, b"{}")
        self.received: list[bytes] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                upstream.received.append(body)
                status, headers, data = upstream.answer(body)
                self.send_response(status)
                for name, value in {**headers, "content-length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(acquirer.cert), str(acquirer.key))
        self._serve(Handler, context)


@pytest.fixture
def upstream(acquirer: FakeAcquirer) -> Iterator[_BytesUpstream]:
    server = _BytesUpstream(acquirer)
    yield server
    server.stop()


@pytest.fixture
def vault(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer, upstream: _BytesUpstream
) -> Iterator[VaultService]:
    policy = oos_relay_policy(acquirer, ADAPTER.identity).replace(acquirer.url, upstream.url)
    with relay_vault(engine, hsm_provider, acquirer, policy) as service:
        yield service


def _relay(vault: VaultService) -> tuple[int, object]:
    token = vault.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4")).token
    result = vault.relay(ADAPTER, "acq", {"card": {"number": token}, "order_id": "o-1"})
    return result.status, result.body


def _candidates() -> Iterator[str]:
    """Every card the masked reveal ``555555******4444`` leaves: 10^5 with Luhn."""
    for middle in range(10**6):
        card = f"{PAN[:6]}{middle:06d}{PAN[-4:]}"
        if luhn_valid(card):
            yield card


def _as_shown(data: bytes) -> str:
    """`data` as the vault used to hand a text answer over: UTF-8, U+FFFD for each byte it
    refuses, NULs taken out (they would not have changed a masked answer: no run of 12
    digits survives compression)."""
    return data.decode("utf-8", "replace").replace("\x00", "")


def test_a_compressed_echo_without_its_coding_does_not_give_the_card(
    vault: VaultService, upstream: _BytesUpstream
) -> None:
    upstream.answer = lambda body: (402, {"content-type": "application/json"}, zlib.compress(body))
    status, answer = _relay(vault)
    assert status == 402  # the upstream's verdict still reaches the caller
    assert isinstance(answer, dict)
    shown = answer["body"]
    sent = upstream.received[-1]
    # What the caller can do with what it got: compress the request it knows, with each
    # card its masked reveal allows, and keep the one that reads as the answer does.
    found = [
        card
        for card in _candidates()
        if _as_shown(zlib.compress(sent.replace(PAN.encode(), card.encode()))) == shown
    ]
    assert found == [], "the caller picked the card out of the compressed answer"
    assert shown == _relay_answer.NOT_TEXT


def test_fullwidth_digits_in_utf16_do_not_reach_the_caller(
    vault: VaultService, upstream: _BytesUpstream
) -> None:
    def answer(body: bytes) -> tuple[int, dict[str, str], bytes]:
        fullwidth = {ord(d): 0xFF10 + int(d) for d in "0123456789"}
        text = "DECLINED: " + body.decode().translate(fullwidth)
        return 402, {"content-type": "text/plain; charset=utf-16le"}, text.encode("utf-16-le")

    upstream.answer = answer
    status, answer_body = _relay(vault)
    assert status == 402
    assert isinstance(answer_body, dict)
    # The low byte of U+FF10 + d is 0x10 + d.
    low = "".join(str(ord(c) - 0x10) for c in str(answer_body["body"]) if 0x10 <= ord(c) <= 0x19)
    assert PAN not in low, low
    assert answer_body == {"body": _relay_answer.NOT_TEXT}


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress])
def test_a_gzipped_echo_in_base64_is_withheld(
    vault: VaultService, upstream: _BytesUpstream, compress: Callable[[bytes], bytes]
) -> None:
    def answer(body: bytes) -> tuple[int, dict[str, str], bytes]:
        debug = base64.b64encode(compress(b"request: " + body)).decode()
        return 402, {"content-type": "application/json"}, json.dumps({"debug": debug}).encode()

    upstream.answer = answer
    status, answer_body = _relay(vault)
    assert status == 402
    assert isinstance(answer_body, dict)
    debug = str(answer_body["debug"])
    try:
        recovered = zlib.decompress(base64.b64decode(debug), zlib.MAX_WBITS | 32)
    except (ValueError, zlib.error):
        recovered = b""
    assert PAN.encode() not in recovered, recovered


def _raw_deflate(data: bytes) -> bytes:
    # What .NET's DeflateStream, Java's Deflater(nowrap) and PHP's gzdeflate write.
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _raw_inflate(data: bytes) -> bytes:
    return zlib.decompress(data, -zlib.MAX_WBITS)


def _members(data: bytes) -> bytes:
    # A gzip writer that flushes a member at a time (the request's head, then its body).
    return gzip.compress(data[:20]) + gzip.compress(data[20:])


@pytest.mark.parametrize(
    ("compress", "decompress"),
    [(_raw_deflate, _raw_inflate), (_members, gzip.decompress)],
    ids=["raw-deflate", "gzip-members"],
)
def test_a_deflated_echo_in_base64_is_withheld(
    vault: VaultService,
    upstream: _BytesUpstream,
    compress: Callable[[bytes], bytes],
    decompress: Callable[[bytes], bytes],
) -> None:
    """Review 36b: only a gzip or zlib header was inflated, and a gzip stream only to
    the end of its first member: a raw deflate echo (no header: .NET's DeflateStream)
    and a card in a second gzip member came back whole."""

    def answer(body: bytes) -> tuple[int, dict[str, str], bytes]:
        debug = base64.b64encode(compress(b"request: " + body)).decode()
        return 402, {"content-type": "application/json"}, json.dumps({"debug": debug}).encode()

    upstream.answer = answer
    status, answer_body = _relay(vault)
    assert status == 402
    assert isinstance(answer_body, dict)
    try:
        recovered = decompress(base64.b64decode(str(answer_body["debug"])))
    except (ValueError, zlib.error, OSError, EOFError):
        recovered = b""
    assert PAN.encode() not in recovered, recovered


# ------------------------------------------------------------------ what held
def test_utf8_and_utf16_ascii_text_answers_still_come_back_masked(
    vault: VaultService, upstream: _BytesUpstream
) -> None:
    """What the change keeps: a text answer in UTF-8 (accents and all) and an ASCII one in
    UTF-16 (its NULs taken out) are handed over, the card masked."""
    texts = {
        "utf-8": lambda pan: f"Transação negada: cartão {pan}".encode(),
        "utf-16-le": lambda pan: f"DECLINED card {pan}".encode("utf-16-le"),
    }
    for charset, text in texts.items():
        upstream.answer = lambda _body, text=text: (402, {"content-type": "text/plain"}, text(PAN))
        status, answer = _relay(vault)
        assert status == 402
        assert isinstance(answer, dict)
        assert PAN not in answer["body"], charset
        assert "555555******4444" in answer["body"], (charset, answer)


def test_latin1_text_is_withheld_with_its_status(
    vault: VaultService, upstream: _BytesUpstream
) -> None:
    """The price: an answer in Latin-1 (not UTF-8) is withheld whole; its status stays, so
    a decline still reads as a decline."""
    upstream.answer = lambda _body: (
        402,
        {"content-type": "text/plain; charset=iso-8859-1"},
        f"Transação negada {PAN}".encode("latin-1"),
    )
    assert _relay(vault) == (402, {"body": _relay_answer.NOT_TEXT})
