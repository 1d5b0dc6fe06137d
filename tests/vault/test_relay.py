"""The relay at the service: the audit entry is durable before the PAN goes upstream
(fail closed), every representation of a PAN in the answer is masked, and the token
`response_tokenize` puts in the answer is a usable token."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.errors import AuditWriteFailed
from hsm.provider import HSMProvider
from policies.errors import RateLimited
from tests.support.audit_trail import break_audit_writes
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.conftest import TEST_POLICY, relay_vault
from vault.errors import UpstreamBusy, UpstreamUnavailable
from vault.pan import Pan, luhn_check_digit
from vault.service import CallContext, TokenizeRequest, VaultService

PAN = "5555555555554444"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
RELAYER = CallContext("spiffe://cofre/relayer", "req-relay-1")


def _policy(acquirer: FakeAcquirer, route: str) -> str:
    """TEST_POLICY with the relayer and route `acq` to `acquirer`, its other settings
    (TOML lines) `route`."""
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    return (
        TEST_POLICY
        + f"""
[identities."spiffe://cofre/relayer"]
operations = ["relay", "detokenize"]
reveal = "full"
read_domains = ["spiffe://cofre/payments"]

[relay_routes.acq]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/relayer"]
detokenize = ["/card/number"]
ca_bundle = "{ca}"
{route}
"""
    )


@pytest.fixture
def relay_service(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    route = """response_tokenize = { "/card/number" = "pan_bin6_last4" }
timeout_seconds = 5"""
    with relay_vault(engine, hsm_provider, acquirer, _policy(acquirer, route)) as svc:
        yield svc


def _relay_entries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        entries = [json.loads(r) for r in rows]
    return [e for e in entries if str(e["action"]).startswith("relay")]


def _token(service: VaultService) -> tuple[str, str]:
    record = service.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4"))
    return record.token, record.token_id


def test_audit_entry_is_durable_before_the_pan_leaves(
    relay_service: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    token, token_id = _token(relay_service)
    seen_by_upstream: list[list[dict[str, Any]]] = []

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        # What the audit log held at the moment the PAN arrived upstream.
        seen_by_upstream.append(_relay_entries(engine))
        return 200, {"status": "APPROVED"}

    acquirer.answer = answer
    result = relay_service.relay(RELAYER, "acq", {"card": {"number": token}})
    assert result.status == 200
    assert acquirer.received[-1]["card"]["number"] == PAN
    (at_send,) = seen_by_upstream
    assert [(e["action"], e["outcome"], e["token_id"]) for e in at_send] == [
        ("relay.send", "success", token_id)
    ]
    assert at_send[0]["details"]["route"] == "acq"
    entries = _relay_entries(engine)
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("relay.send", "success"),
        ("relay", "success"),
    ]
    assert entries[1]["details"]["status"] == 200
    assert {e["request_id"] for e in entries} == {RELAYER.request_id}


def test_nothing_is_sent_when_the_audit_entry_cannot_be_written(
    relay_service: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    token, _ = _token(relay_service)
    break_audit_writes(engine)
    with pytest.raises(AuditWriteFailed):
        relay_service.relay(RELAYER, "acq", {"card": {"number": token}})
    assert acquirer.received == []


def test_failed_upstream_leaves_the_send_entry_and_a_failed_outcome(
    relay_service: VaultService, engine: Engine, acquirer: FakeAcquirer
) -> None:
    token, token_id = _token(relay_service)
    acquirer.answer = lambda body: (503, {"status": "DOWN"})
    with pytest.raises(UpstreamUnavailable):
        relay_service.relay(RELAYER, "acq", {"card": {"number": token}})
    entries = _relay_entries(engine)
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("relay.send", "success"),
        ("relay", "failed"),
    ]
    assert entries[0]["token_id"] == token_id
    assert entries[1]["details"]["error"] == "upstream_unavailable"


def test_every_representation_of_the_pan_in_the_answer_is_masked(
    relay_service: VaultService, acquirer: FakeAcquirer
) -> None:
    token, _ = _token(relay_service)
    spaced = " ".join(PAN[i : i + 4] for i in range(0, 16, 4))

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {
            "dotted": "5555.5555.5555.4444",
            "spaced": spaced,
            "number": float(PAN),
            "integer": int(PAN),
            "digits": [int(d) for d in PAN],
            "digit_strings": list(PAN),
            "message": f"approved for {PAN}",
        }

    acquirer.answer = answer
    result = relay_service.relay(RELAYER, "acq", {"card": {"number": token}})
    text = json.dumps(result.body)
    digits_only = "".join(c for c in text if c.isdigit())
    assert PAN not in digits_only.replace(" ", "")
    for key in ("dotted", "spaced", "number", "integer", "message"):
        assert PAN not in "".join(c for c in str(result.body[key]) if c.isdigit()), key
    for key in ("digits", "digit_strings"):
        assert "".join(str(d) for d in result.body[key]) == "555555******4444", key


def test_response_tokenize_gives_a_usable_token(
    relay_service: VaultService, acquirer: FakeAcquirer
) -> None:
    token, _ = _token(relay_service)
    acquirer.answer = lambda body: (200, {"card": {"number": body["card"]["number"]}})
    result = relay_service.relay(RELAYER, "acq", {"card": {"number": token}})
    answered = result.body["card"]["number"]
    assert "*" not in answered
    assert relay_service.detokenize(RELAYER, answered).pan == Pan(PAN)


def test_response_tokenize_stores_each_cards_fingerprint(
    relay_service: VaultService, acquirer: FakeAcquirer, engine: Engine
) -> None:
    """Review of 202a436: the relay's answer was stored with an empty fingerprint, so the
    second card a domain's relay tokenized met the convergent index and the call failed
    503 after the card had gone upstream. Two cards, each stored under its own HMAC."""
    second = "555555123456444" + luhn_check_digit("555555123456444")
    answers = []
    for card in (PAN, second):
        token = relay_service.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_last4")).token
        acquirer.answer = lambda body: (200, {"card": {"number": body["card"]["number"]}})
        answers.append(relay_service.relay(RELAYER, "acq", {"card": {"number": token}}))
    tokens = [result.body["card"]["number"] for result in answers]
    for answered, card in zip(tokens, (PAN, second), strict=True):
        assert relay_service.detokenize(RELAYER, answered).pan == Pan(card)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT fingerprint, fp_version FROM tokens WHERE token IN (:a, :b)"),
            {"a": tokens[0], "b": tokens[1]},
        ).all()
    assert len(rows) == 2
    assert all(len(bytes(fp)) == 32 and version >= 1 for fp, version in rows), rows


def test_a_route_with_its_relays_all_waiting_refuses_the_next_at_once(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> None:
    """Review 37: one pool of relay threads served every route, so an upstream that
    stalls took them all and every other route's relays queued behind it. A route holds
    at most `max_in_flight` relays under way per process; the next is refused at once
    (503 upstream_busy, audited), nothing revealed or sent, and the places come back."""
    policy = _policy(acquirer, "timeout_seconds = 30\nmax_in_flight = 2")
    release = threading.Event()

    def stall(body: dict[str, Any]) -> tuple[int, Any]:
        release.wait(30)
        return 200, {"status": "APPROVED"}

    with relay_vault(engine, hsm_provider, acquirer, policy) as service:
        token, _ = _token(service)
        acquirer.answer = stall
        body = {"card": {"number": token}}
        with ThreadPoolExecutor(2) as pool:
            stalled = [pool.submit(service.relay, RELAYER, "acq", body) for _ in range(2)]
            for _ in range(300):
                if len(acquirer.received) == 2:
                    break
                time.sleep(0.05)
            try:
                with pytest.raises(UpstreamBusy) as refused:
                    service.relay(RELAYER, "acq", body)
            finally:
                release.set()
            assert [call.result(30).status for call in stalled] == [200, 200]
        assert refused.value.retry_after > 0
        assert len(acquirer.received) == 2
        entries = _relay_entries(engine)
        assert sorted((e["action"], e["outcome"]) for e in entries) == [
            ("relay", "failed"),
            ("relay", "success"),
            ("relay", "success"),
            ("relay.send", "success"),
            ("relay.send", "success"),
        ]
        (busy,) = [e for e in entries if e["outcome"] == "failed"]
        assert busy["details"]["error"] == "upstream_busy"
        acquirer.answer = None
        assert service.relay(RELAYER, "acq", body).status == 200  # the places came back


def test_a_busy_route_costs_its_caller_a_rate_unit(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> None:
    """Review 40: a relay refused upstream_busy costs a rate unit, as a relay does, with
    its entry in the same transaction: the entries such refusals write stay within the
    caller's rate limit (they were charged to the API's refusal bucket instead, which
    held a caller with relays waiting on a stalled upstream back from every route)."""
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    policy = (
        TEST_POLICY
        + f"""
[identities."spiffe://cofre/relayer"]
operations = ["relay", "detokenize"]
reveal = "full"
read_domains = ["spiffe://cofre/payments"]
rate_limit = {{ per_second = 0.01, burst = 3 }}

[relay_routes.acq]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/relayer"]
detokenize = ["/card/number"]
ca_bundle = "{ca}"
timeout_seconds = 30
max_in_flight = 1
"""
    )
    release = threading.Event()

    def stall(body: dict[str, Any]) -> tuple[int, Any]:
        release.wait(30)
        return 200, {"status": "APPROVED"}

    with relay_vault(engine, hsm_provider, acquirer, policy) as service:
        token, _ = _token(service)
        acquirer.answer = stall
        body = {"card": {"number": token}}
        with ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(service.relay, RELAYER, "acq", body)
            for _ in range(300):
                if acquirer.received:
                    break
                time.sleep(0.05)
            try:
                refused = []
                for _ in range(3):
                    with pytest.raises((UpstreamBusy, RateLimited)) as caught:
                        service.relay(RELAYER, "acq", body)
                    refused.append(caught.value.code)
            finally:
                release.set()
            assert stalled.result(30).status == 200
        assert refused == ["upstream_busy", "upstream_busy", "rate_limited"]
        errors = sorted(
            e["details"]["error"] for e in _relay_entries(engine) if e["outcome"] == "failed"
        )
        assert errors == ["rate_limited", "upstream_busy", "upstream_busy"]
