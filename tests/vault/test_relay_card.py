"""The relay puts the card in (issue 22 item 5): the caller sends only the token; the
vault puts the PAN, the expiry, the name and the held security code at the route's JSON
pointers. The code is taken in the transaction of the `relay.send` audit entry: the
acquirer gets it exactly once, and a second authorization with the same token carries
none. Attacks first."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

import tests.support.fake_acquirer as fake_acquirer_module
from audit.errors import AuditWriteFailed
from hsm.provider import HSMProvider
from tests.support.audit_trail import break_audit_writes
from tests.support.codes import shows_code
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.policies import getnet_card_route
from tests.support.softhsm import destroy_code_epochs
from tests.vault.conftest import TEST_POLICY, relay_vault
from vault.card import SecurityCode
from vault.errors import RelayBodyInvalid, TokenNotFound, UpstreamUnavailable
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

PAN = "5555555555554444"
CODE = "7391"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
GETNET = CallContext("spiffe://cofre/getnet-adapter", "req-relay")


@pytest.fixture
def relay(
    engine: Engine, rotation_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    policy = (
        TEST_POLICY.replace(
            '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize"]',
            '[identities."spiffe://cofre/getnet-adapter"]\noperations = ["detokenize", "relay"]',
        )
        + getnet_card_route(acquirer.url, ca)
        + f"""
[relay_routes.plain]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
ca_bundle = "{ca}"

[relay_routes.plain.card]
number = "/card/number"
expiry = "/card/expiry"
expiry_format = "MMYY"
"""
    )
    with relay_vault(engine, rotation_provider, acquirer, policy) as service:
        yield service
    destroy_code_epochs(rotation_provider)


def _card(service: VaultService, code: str | None = CODE, **details: Any) -> str:
    record = service.tokenize(
        PAYMENTS,
        TokenizeRequest(
            Pan(PAN),
            "pan_bin6_last4",
            expiry=details.get("expiry", "11/31"),
            cardholder_name=details.get("name", "Ana Souza"),
            security_code=None if code is None else SecurityCode(code),
        ),
    )
    return record.token


def _body(token: str, **card: Any) -> dict[str, Any]:
    return {"card": {"number": token, **card}, "amount": "10.00", "order_id": "o-1"}


def _entries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        return [json.loads(r) for r in rows]


def _codes(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM security_codes")).scalar_one())


# ------------------------------------------------------------------ attacks
@pytest.mark.parametrize(
    "smuggled",
    [{"security_code": "123"}, {"expiration_month": "01"}, {"cardholder_name": "X"}],
)
def test_a_caller_cannot_put_card_details_in_itself(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer, smuggled: dict[str, str]
) -> None:
    token = _card(relay)
    with pytest.raises(RelayBodyInvalid, match="send only the card token"):
        relay.relay(GETNET, "getnet-authorize", _body(token, **smuggled))
    assert acquirer.received == []
    assert _codes(engine) == 1  # the held code was not spent


def test_nothing_is_sent_and_the_code_stays_when_the_audit_entry_fails(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    token = _card(relay)
    break_audit_writes(engine)
    with pytest.raises(AuditWriteFailed):
        relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received == []
    assert _codes(engine) == 1  # fail closed: not consumed either


def test_an_echoed_code_never_reaches_the_caller(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    token = _card(relay)
    acquirer.answer = lambda body: (200, {"status": "APPROVED", "card": dict(body["card"])})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert "security_code" not in answer.body["card"]
    assert not shows_code(json.dumps(answer.body), CODE)
    assert PAN not in json.dumps(answer.body)


@pytest.mark.parametrize("route", ["getnet-authorize", "plain"])
def test_an_acquirer_echoing_the_request_anywhere_hands_back_no_code_name_or_expiry(
    relay: VaultService, acquirer: FakeAcquirer, route: str
) -> None:
    """Review 26: acquirers echo the request in their errors. Only the code's own
    pointer was dropped; the code in a message, the name and the expiry elsewhere came
    back to the adapter, which is outside PCI scope."""
    token = _card(relay)

    def echo(body: dict[str, Any]) -> tuple[int, Any]:
        card = body["card"]
        code = card.get("security_code", "")
        return 402, {
            "status": "DECLINED",
            "reason": f"cvv {code} mismatch for {str(card.get('cardholder_name', '')).upper()}",
            "request": body,
            "expiry": {card.get("expiry", "none"): int(card.get("expiry", "0"))},
            "amount": 1131,  # a number of the expiry's digits inside a longer run stays
            "order": "o-1",
        }

    acquirer.answer = echo
    answer = relay.relay(GETNET, route, _body(token))
    text = json.dumps(answer.body)
    assert answer.status == 402
    assert not shows_code(text, CODE), text
    assert "ana souza" not in text.lower(), text
    if route == "plain":  # this route sends the expiry as one value, MMYY
        assert "1131" not in text.replace('"amount": 1131', ""), text
    assert PAN not in text
    assert answer.body["order"] == "o-1"
    assert answer.body["request"]["amount"] == "10.00"


def test_a_body_nested_too_deep_is_refused_before_anything_is_sent(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    """Review 26: ~700 levels made the copy of the body raise RecursionError (a 500)."""
    token = _card(relay)
    deep: Any = 1
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(RelayBodyInvalid, match="deeper"):
        relay.relay(GETNET, "getnet-authorize", {**_body(token), "extra": deep})
    assert acquirer.received == []
    assert _codes(engine) == 1
    [refused] = [e for e in _entries(engine) if e["action"] == "relay"]
    assert (refused["outcome"], refused["details"]["error"]) == ("failed", "invalid_relay_body")


def test_an_answer_nested_too_deep_is_an_audited_upstream_failure(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    """Review 26: the card had gone, then masking a 900-level answer raised
    RecursionError: a 500, and no `relay` entry for the outcome."""
    token = _card(relay)
    deep: Any = 1
    for _ in range(900):
        deep = {"x": deep}
    acquirer.answer = lambda body: (200, {"status": "APPROVED", "echo": deep})
    with pytest.raises(UpstreamUnavailable, match="deeper"):
        relay.relay(GETNET, "getnet-authorize", _body(token))
    [outcome] = [e for e in _entries(engine) if e["action"] == "relay"]
    assert (outcome["outcome"], outcome["details"]["error"]) == ("failed", "upstream_unavailable")


def test_a_token_of_another_domain_gets_nothing(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    with pytest.raises(TokenNotFound):
        relay.relay(GETNET, "getnet-authorize", _body("5555550000004444"))
    assert acquirer.received == []


# ------------------------------------------------------------------ the card goes in
def test_the_acquirer_gets_the_card_once_and_the_code_once(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    token = _card(relay)
    first = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert first.status == 200
    assert acquirer.received[-1]["card"] == {
        "number": PAN,
        "expiration_month": "11",
        "expiration_year": "31",
        "security_code": CODE,
        "cardholder_name": "Ana Souza",
    }
    assert _codes(engine) == 0
    # A second authorization with the same token (a retry, a recurring charge).
    second = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert second.status == 200
    assert acquirer.received[-1]["card"] == {
        "number": PAN,
        "expiration_month": "11",
        "expiration_year": "31",
        "cardholder_name": "Ana Souza",
    }
    codes_sent = [body["card"].get("security_code") for body in acquirer.received]
    assert codes_sent == [CODE, None]
    sends = [e for e in _entries(engine) if e["action"] == "relay.send"]
    assert [e["details"]["security_code"] for e in sends] == ["used", "none"]
    assert (
        sends[0]["details"]["card"]
        == "number,expiry_month,expiry_year,security_code,cardholder_name"
    )
    assert not any(shows_code(json.dumps(e), CODE) for e in _entries(engine))
    counts = relay.security_code_counts()
    assert (counts["held"], counts["used"], counts["held_now"]) == (1, 1, 0)


def test_a_card_without_details_sends_the_number_only(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    record = relay.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "card_random"))
    relay.relay(GETNET, "getnet-authorize", _body(record.token))
    assert acquirer.received[-1]["card"] == {"number": PAN}


def test_a_relay_whose_route_sends_no_code_leaves_the_code_held(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    """A bound (review 34, docs/capture.md): a code is taken by the first relay whose
    route names a `security_code` pointer, not by any relay of the token. A relay
    through a route without one (a fraud check or 3-D Secure before the authorization
    needs the code kept) leaves it sealed, and the next relay through a route that
    sends codes, within the code's hour, carries it."""
    token = _card(relay)
    relay.relay(GETNET, "plain", _body(token))
    assert "security_code" not in acquirer.received[-1]["card"]
    assert _codes(engine) == 1
    relay.relay(GETNET, "getnet-authorize", _body(token))
    assert acquirer.received[-1]["card"]["security_code"] == CODE
    assert _codes(engine) == 0


def test_expiry_layouts(relay: VaultService, acquirer: FakeAcquirer) -> None:
    token = _card(relay, code=None, expiry="2031-02")
    relay.relay(GETNET, "plain", _body(token))
    assert acquirer.received[-1]["card"] == {"number": PAN, "expiry": "0231"}


# ------------------------------------------------------------------ review 27: echo shapes
class _Raw(str):
    """An answer the fake acquirer sends as it is (not through json.dumps)."""


class _JsonShim:
    loads = staticmethod(json.loads)

    @staticmethod
    def dumps(payload: Any, *a: Any, **k: Any) -> str:
        return str(payload) if isinstance(payload, _Raw) else json.dumps(payload, *a, **k)


def test_a_code_with_a_leading_zero_echoed_as_a_number_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """Review 27: a code "0123" that the acquirer types as an integer comes back as
    123: the digit run "0123" is not in "123", so the code reaches getnet-adapter."""
    token = _card(relay, code="0123")

    def echo(body: dict[str, Any]) -> tuple[int, Any]:
        code = body["card"]["security_code"]
        return 402, {"status": "DECLINED", "cvv": int(code), "reason": f"cvv {int(code)} mismatch"}

    acquirer.answer = echo
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    text = json.dumps(answer.body)
    assert answer.body["cvv"] != 123, text
    assert not shows_code(text, "123"), text


def test_an_answer_deeper_than_the_json_parser_is_an_audited_upstream_failure(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 27: json.loads raises RecursionError (not ValueError) past ~1000 levels,
    before nested_deeper_than looks: a 500 after the card has gone, no `relay` outcome."""
    monkeypatch.setattr(fake_acquirer_module, "json", _JsonShim)
    token = _card(relay)
    acquirer.answer = lambda body: (200, _Raw("[" * 100_000 + "]" * 100_000))
    with pytest.raises(UpstreamUnavailable):
        relay.relay(GETNET, "getnet-authorize", _body(token))
    outcomes = [e for e in _entries(engine) if e["action"] == "relay"]
    assert [(e["outcome"], e["details"].get("error")) for e in outcomes] == [
        ("failed", "upstream_unavailable")
    ]


def test_an_answer_exactly_64_deep_passes_and_65_is_refused(
    relay: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    token = _card(relay)
    deep: Any = "leaf"
    for _ in range(64):
        deep = [deep]
    acquirer.answer = lambda body: (200, deep)
    assert relay.relay(GETNET, "getnet-authorize", _body(token)).body == deep
    token = _card(relay)
    acquirer.answer = lambda body: (200, [deep])
    with pytest.raises(UpstreamUnavailable):
        relay.relay(GETNET, "getnet-authorize", _body(token))


def test_a_spaced_pan_in_the_answer_stays_masked_whatever_is_withheld(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """Review 27: withholding ran before the PAN masking; a withheld group took a
    spaced PAN below the detector: an Amex "3782 822463 10005" whose CID is 3782 comes back
    with 11 of its 15 digits in clear."""
    token = _card(relay, code="3782")
    acquirer.answer = lambda body: (402, {"reason": "card 3782 822463 10005 declined"})
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    assert "822463" not in json.dumps(answer.body), answer.body


def test_a_text_answer_in_an_odd_charset_hides_the_code_and_the_pan(
    relay: VaultService, acquirer: FakeAcquirer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 27: a non-JSON answer was decoded with the charset the upstream declares
    (`response.text`). Declared cp500 (EBCDIC), the ASCII bytes of the echo decode to
    other characters: neither the withholding nor the PAN masking sees them, and the
    caller gets them back with `.encode("cp500")`."""
    original = BaseHTTPRequestHandler.send_header

    def send_header(self: Any, keyword: str, value: str) -> None:
        if keyword.lower() == "content-type":
            value = "text/plain; charset=cp500"
        original(self, keyword, value)

    monkeypatch.setattr(BaseHTTPRequestHandler, "send_header", send_header)
    monkeypatch.setattr(fake_acquirer_module, "json", _JsonShim)
    token = _card(relay)

    def echo(body: dict[str, Any]) -> tuple[int, Any]:
        card = body["card"]
        return 402, _Raw(f"DECLINED card {card['number']} cvv {card['security_code']}")

    acquirer.answer = echo
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    recovered = answer.body["body"].encode("cp500", "replace").decode("ascii", "replace")
    assert PAN not in recovered, recovered
    assert not shows_code(recovered, "7391"), recovered


def test_a_url_encoded_echo_hands_back_no_code_name_or_expiry(
    relay: VaultService, acquirer: FakeAcquirer
) -> None:
    """Review 27: an echo percent-encoded in a URL (a 3-D Secure/redirect link carrying
    the request): "%22" and "%20" end in a digit, so the code after them is not a
    whole digit run; the name's "%20" is not a space. The PAN masker does see the
    PAN there; the withholding does not see the code."""
    token = _card(relay)

    def echo(body: dict[str, Any]) -> tuple[int, Any]:
        data = quote(json.dumps(body["card"]))
        return 402, {"status": "DECLINED", "retry_url": f"https://acq.example/retry?req={data}"}

    acquirer.answer = echo
    answer = relay.relay(GETNET, "getnet-authorize", _body(token))
    decoded = unquote(json.dumps(answer.body))
    assert PAN not in decoded
    assert not shows_code(decoded, "7391"), decoded
    assert "ana souza" not in decoded.lower(), decoded
