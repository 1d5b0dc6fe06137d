"""Hosted capture sessions in the vault: the attacks first (another origin, an expired
or reused session, a missing or wrong secret, a Luhn-invalid card, a code where the
session forbids one, brute force of a secret), each refused, audited, nothing stored;
then the capture that works."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied, PolicyError, RateLimited
from policies.loader import parse_policy
from policies.models import Policy, RateLimit
from tests.support.policies import clocked_vault_on
from vault.capture import (
    CaptureSession,
    CaptureSessionRequest,
    CardCapture,
    SessionCodeRule,
    normalize_origin,
    refusal_origin,
)
from vault.errors import (
    CaptureRequestInvalid,
    CaptureSessionExpired,
    CaptureSessionUsed,
    CaptureUnauthorized,
    CardExpired,
    InvalidCardholderName,
    InvalidOrigin,
    InvalidPan,
    InvalidSecurityCode,
    InvalidTTL,
    OriginNotAllowed,
    SecurityCodeForbidden,
    SecurityCodeNotAllowed,
)
from vault.pan import Pan
from vault.service import CallContext, VaultService

VISA = "4111111111111111"
LUHN_BAD = "4111111111111112"
SHOP = "https://shop.example"
POLICY = """
[formats.no_code]
type = "random"
security_code = "forbid"

[identities."spiffe://cofre/payments"]
description = "the shop's payments backend, outside PCI scope: opens capture sessions"
scope = "out"
operations = ["capture", "detokenize_masked"]
formats = ["pan_bin6_last4", "uuid", "no_code"]
reveal = "masked"
capture_origins = ["https://shop.example"]

[identities."spiffe://cofre/ledger"]
operations = ["detokenize_masked"]
reveal = "masked"
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-shop")
LEDGER = CallContext("spiffe://cofre/ledger", "req-ledger")
GENEROUS = RateLimit(per_second=100, burst=100)


@pytest.fixture
def clock() -> list[datetime]:
    return [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]


@pytest.fixture
def service(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> Iterator[VaultService]:
    with clocked_vault_on(engine, hsm_provider, POLICY, clock) as svc:
        yield svc


def _session(service: VaultService, **changes: Any) -> CaptureSession:
    request = CaptureSessionRequest(origin=SHOP, formats=("pan_bin6_last4", "uuid"))
    fields = {
        "origin": request.origin,
        "formats": request.formats,
        "ttl_seconds": request.ttl_seconds,
        "max_uses": request.max_uses,
        "security_code": request.security_code,
        **changes,
    }
    return service.create_capture_session(PAYMENTS, CaptureSessionRequest(**fields))


def _card(session: CaptureSession, **changes: Any) -> CardCapture:
    fields: dict[str, Any] = {
        "session_id": session.session_id,
        "secret": session.secret,
        "origin": SHOP,
        "client_address": "192.0.2.7",
        "pan": Pan(VISA),
        "expiry": "12/29",
        **changes,
    }
    return CardCapture(**fields)


def _capture(service: VaultService, card: CardCapture, limit: RateLimit = GENEROUS) -> Any:
    return service.capture_card(card, per_session=limit, per_address=GENEROUS)


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def _audit(engine: Engine, action: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        payloads = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        entries = [json.loads(p) for p in payloads]
    return [e for e in entries if e.get("action") == action]


# ------------------------------------------------------------------ origins
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://shop.example", "https://shop.example"),
        ("https://Shop.Example:443", "https://shop.example"),
        ("https://shop.example/", "https://shop.example"),
        ("https://shop.example:8443", "https://shop.example:8443"),
        ("https://127.0.0.1:9000", "https://127.0.0.1:9000"),
    ],
)
def test_origins_are_normalized_to_scheme_host_port(given: str, expected: str) -> None:
    assert normalize_origin(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "http://shop.example",
        "http://localhost:8000",
        "https://shop.example/checkout",
        "https://shop.example?x=1",
        "https://shop.example#top",
        "https://user@shop.example",
        "https://*.shop.example",
        "null",
        "*",
        "",
        "javascript:alert(1)",
        "https://shop_example.com",
        "https://shop.example:99999",
        " https://shop.example",
        "ftp://shop.example",
    ],
)
def test_anything_but_an_exact_https_origin_is_refused(given: str) -> None:
    with pytest.raises(InvalidOrigin):
        normalize_origin(given)


def test_http_localhost_only_with_the_development_setting() -> None:
    assert (
        normalize_origin("http://localhost:8000", allow_http_localhost=True)
        == "http://localhost:8000"
    )
    with pytest.raises(InvalidOrigin):
        normalize_origin("http://shop.example", allow_http_localhost=True)


# ------------------------------------------------------------------ opening a session
def test_a_session_is_bound_and_only_the_secret_hash_is_kept(
    service: VaultService, engine: Engine
) -> None:
    session = _session(service, ttl_seconds=300)
    assert session.secret.startswith("cofre_cs_")
    assert session.secret not in repr(session)
    assert session.expires_at == datetime(2026, 12, 1, 12, 5, tzinfo=UTC)
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT * FROM capture_sessions")).mappings().one()
    assert row["origin"] == SHOP
    assert row["owner"] == PAYMENTS.identity
    assert row["domain"] == PAYMENTS.identity
    assert session.secret.encode() not in bytes(row["secret_hash"])
    assert session.secret not in json.dumps([str(v) for v in row.values()])
    [entry] = _audit(engine, "capture.session.create")
    assert entry["details"]["session"] == session.session_id
    assert entry["details"]["origin"] == SHOP
    assert session.secret not in json.dumps(_audit(engine, "capture.session.create"))


def test_opening_a_session_needs_the_capture_operation_and_formats(
    service: VaultService, engine: Engine
) -> None:
    with pytest.raises(PolicyDenied):
        service.create_capture_session(
            LEDGER, CaptureSessionRequest(origin=SHOP, formats=("uuid",))
        )
    with pytest.raises(PolicyDenied):
        _session(service, formats=("pan_fpe",))
    with pytest.raises(InvalidTTL):
        _session(service, ttl_seconds=15 * 60 + 1)
    with pytest.raises(CaptureRequestInvalid):
        _session(service, formats=())
    with pytest.raises(InvalidOrigin):
        _session(service, origin="http://shop.example")
    with pytest.raises(InvalidOrigin, match="IPv6"):  # CSP frame-ancestors has no IPv6 form
        _session(service, origin="https://[2001:db8::1]")
    assert _count(engine, "capture_sessions") == 0
    denied = [e for e in _audit(engine, "capture") if e["outcome"] == "denied"]
    failed = [e for e in _audit(engine, "capture.session.create") if e["outcome"] == "failed"]
    assert len(denied) == 2
    assert {e["details"]["error"] for e in failed} == {
        "invalid_ttl",
        "invalid_capture_request",
        "invalid_origin",
    }


# ------------------------------------------------------------------ attacks
def test_a_capture_from_another_origin_is_refused(service: VaultService, engine: Engine) -> None:
    session = _session(service)
    for origin in ("https://evil.example", "https://shop.example.evil.example", None):
        with pytest.raises(OriginNotAllowed):
            _capture(service, _card(session, origin=origin))
    assert _count(engine, "tokens") == 0
    # The session is still good for its own origin.
    assert _capture(service, _card(session)).masked == "411111******1111"


def test_an_expired_session_is_refused(
    service: VaultService, engine: Engine, clock: list[datetime]
) -> None:
    session = _session(service, ttl_seconds=60)
    clock[0] += timedelta(seconds=60)
    with pytest.raises(CaptureSessionExpired):
        _capture(service, _card(session))
    assert _count(engine, "tokens") == 0


def test_a_used_session_is_refused(service: VaultService, engine: Engine) -> None:
    session = _session(service)
    _capture(service, _card(session))
    with pytest.raises(CaptureSessionUsed):
        _capture(service, _card(session))
    assert _count(engine, "tokens") == 1


def test_a_missing_or_wrong_secret_or_an_unknown_session_is_one_answer(
    service: VaultService, engine: Engine
) -> None:
    session = _session(service)
    for card in (
        _card(session, secret=None),
        _card(session, secret=""),
        _card(session, secret=session.secret[:-1] + "x"),
        _card(session, secret="x" * 10_000),
        _card(session, session_id="cs_" + "a" * 32),
        _card(session, session_id="not-a-session"),
    ):
        with pytest.raises(CaptureUnauthorized) as refused:
            _capture(service, card)
        assert str(refused.value) == "unknown capture session or wrong client secret"
    assert _count(engine, "tokens") == 0
    refusals = [e for e in _audit(engine, "capture") if e["outcome"] == "failed"]
    assert len(refusals) == 6
    assert {e["actor"] for e in refusals} == {PAYMENTS.identity, "capture:unknown-session"}


def test_a_luhn_invalid_number_is_refused_and_leaves_the_session_usable(
    service: VaultService, engine: Engine
) -> None:
    session = _session(service)
    with pytest.raises(InvalidPan) as refused:
        _capture(service, _card(session, pan=Pan(LUHN_BAD)))
    assert LUHN_BAD not in str(refused.value)
    assert _count(engine, "tokens") == 0
    _capture(service, _card(session))
    assert _count(engine, "tokens") == 1


def test_a_security_code_where_the_session_forbids_one_is_refused(
    service: VaultService, engine: Engine
) -> None:
    session = _session(service, security_code=SessionCodeRule.FORBIDDEN)
    with pytest.raises(SecurityCodeNotAllowed) as refused:
        _capture(service, _card(session, security_code="123"))
    assert "123" not in str(refused.value)
    required = _session(service, security_code=SessionCodeRule.REQUIRED)
    with pytest.raises(CaptureRequestInvalid):
        _capture(service, _card(required))
    with pytest.raises(InvalidSecurityCode):
        _capture(service, _card(required, security_code="12a"))
    # A format may forbid codes too (policies.formats: security_code = "forbid").
    open_session = _session(service, formats=("no_code",))
    with pytest.raises(SecurityCodeForbidden):
        _capture(service, _card(open_session, security_code="123"))
    assert _count(engine, "tokens") == 0


def test_an_expired_card_or_a_name_hiding_digits_is_refused(
    service: VaultService, engine: Engine
) -> None:
    session = _session(service)
    with pytest.raises(CardExpired):
        _capture(service, _card(session, expiry="11/26"))
    with pytest.raises(InvalidCardholderName) as refused:
        _capture(service, _card(session, name="Ana 4111 Souza"))
    assert "4111" not in str(refused.value)
    assert _count(engine, "tokens") == 0
    result = _capture(service, _card(session, expiry="2030-01", name="Ana  Souza"))
    assert result.expiry == "2030-01"
    # Stored, but not answered to this shop's backend: it is outside PCI scope, and a
    # capture answers anyone typing a card number the token (review 31, R31-1).
    assert service.detokenize_masked(PAYMENTS, result.token.token).expiry is None


def test_guessing_a_secret_is_rate_limited_per_session(
    service: VaultService, engine: Engine
) -> None:
    session = _session(service)
    tight = RateLimit(per_second=0.001, burst=3)
    for attempt in range(3):
        with pytest.raises(CaptureUnauthorized):
            _capture(service, _card(session, secret=f"cofre_cs_guess{attempt}"), tight)
    # The fourth guess is refused; the right secret is not (session 37: the guesses of
    # someone who knows only the id no longer block the shopper).
    with pytest.raises(RateLimited):
        _capture(service, _card(session, secret="cofre_cs_guess3"), tight)
    _capture(service, _card(session), tight)
    assert _count(engine, "tokens") == 1


def test_guessing_sessions_is_rate_limited_per_client_address(service: VaultService) -> None:
    tight = RateLimit(per_second=0.001, burst=2)
    session = _session(service)
    for _ in range(2):
        with pytest.raises(CaptureUnauthorized):
            service.capture_card(
                _card(session, secret="wrong"), per_session=GENEROUS, per_address=tight
            )
    with pytest.raises(RateLimited):
        service.capture_card(_card(session), per_session=GENEROUS, per_address=tight)
    # Another address is not held back by the first one's guesses.
    service.capture_card(
        _card(session, client_address="198.51.100.9"), per_session=GENEROUS, per_address=tight
    )


# ------------------------------------------------------------------ the capture that works
def test_a_capture_tokenizes_into_the_creators_domain_and_is_audited(
    service: VaultService, engine: Engine
) -> None:
    session = _session(service, max_uses=2)
    result = _capture(service, _card(session, frame=True, origin="https://vault.example"))
    assert result.masked == "411111******1111"
    assert result.expiry == "2029-12"
    assert result.token.format == "pan_bin6_last4"
    assert result.token.token != VISA
    # The token belongs to the session creator's domain: it may read it masked.
    assert service.detokenize_masked(PAYMENTS, result.token.token).masked == "411111******1111"
    second = _capture(service, _card(session, token_format="uuid"))
    assert second.token.format == "uuid"
    with pytest.raises(CaptureSessionUsed):
        _capture(service, _card(session))
    [first_entry, second_entry] = [
        e for e in _audit(engine, "capture") if e["outcome"] == "success"
    ]
    assert first_entry["actor"] == PAYMENTS.identity
    assert first_entry["token_id"] == result.token.token_id
    assert first_entry["details"]["session"] == session.session_id
    assert first_entry["details"]["origin"] == SHOP
    assert second_entry["token_id"] == second.token.token_id
    with engine.connect() as connection:
        uses = connection.execute(sa.text("SELECT uses FROM capture_sessions")).scalar_one()
    assert uses == 2


def test_an_identity_opens_sessions_only_for_its_policys_origins(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> None:
    """The capture review's trade-off 5: a stolen certificate of the shop's backend
    could open sessions for any origin, and so host the vault's card fields on a page
    of its own choosing, tokenizing into the shop's domain. A policy's
    `capture_origins` now names the origins an identity may open sessions for,
    compared as browsers spell them (upper case and ``:443`` are the same origin)."""
    listed = POLICY.replace(
        'capture_origins = ["https://shop.example"]',
        'capture_origins = ["https://Shop.Example:443"]',
    )
    svc = VaultService(
        engine, hsm_provider, PolicyEngine(parse_policy(listed, kind="toml").policy),
        clock=lambda: clock[0],
    )  # fmt: skip
    svc.initialize()
    try:
        assert _session(svc).origin == SHOP
        with pytest.raises(PolicyDenied, match="origin"):
            _session(svc, origin="https://shop.example.evil.example")
        with pytest.raises(PolicyDenied, match="origin"):
            _session(svc, origin="https://other-shop.example")
    finally:
        svc.close()
    assert _count(engine, "capture_sessions") == 1
    denied = [e for e in _audit(engine, "capture") if e["outcome"] == "denied"]
    assert [e["details"]["origin"] for e in denied] == [
        "https://shop.example.evil.example",
        "https://other-shop.example",
    ]


@pytest.mark.parametrize("origin", ["shop.example", "https://shop.example/pay", "ftp://shop"])
def test_a_policy_names_capture_origins_as_origins(origin: str) -> None:
    listed = POLICY.replace(
        'capture_origins = ["https://shop.example"]', f'capture_origins = ["{origin}"]'
    )
    with pytest.raises(PolicyError, match="capture_origins"):
        parse_policy(listed, kind="toml")


def test_an_identity_without_capture_origins_opens_no_session(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> None:
    """The loader refuses `capture` without `capture_origins`; a policy that reached
    the vault without that check (built in code, not loaded) still opens no session:
    no list is no origin, refused 403 `policy_denied` and audited, never "any"."""
    loaded = parse_policy(POLICY, kind="toml").policy
    payments = loaded.identities[PAYMENTS.identity].model_copy(update={"capture_origins": None})
    unchecked = Policy.model_construct(
        **{**dict(loaded), "identities": {**loaded.identities, PAYMENTS.identity: payments}}
    )
    svc = VaultService(engine, hsm_provider, PolicyEngine(unchecked), clock=lambda: clock[0])
    svc.initialize()
    try:
        with pytest.raises(PolicyDenied, match="origin"):
            _session(svc)
    finally:
        svc.close()
    assert _count(engine, "capture_sessions") == 0
    denied = [e for e in _audit(engine, "capture") if e["outcome"] == "denied"]
    assert [e["details"]["origin"] for e in denied] == [SHOP]


def test_a_refusal_names_the_sessions_origin_only_once_its_secret_matched(
    service: VaultService, clock: list[datetime]
) -> None:
    """What the listener lets an origin read a refusal by (CORS), with no second read
    of the session (review 27): the session's origin on a refusal raised once the
    secret matched (spent, expired, another origin, a card the vault refuses), none on
    one before (an unknown session, a wrong or missing secret, a rate limit)."""
    spent = _session(service)
    _capture(service, _card(spent))
    live = _session(service)
    expired = _session(service, ttl_seconds=60)
    clock[0] += timedelta(minutes=2)
    after = [
        (_card(spent), CaptureSessionUsed),
        (_card(expired), CaptureSessionExpired),
        (_card(live, origin="https://evil.example"), OriginNotAllowed),
        (_card(live, pan=Pan(LUHN_BAD)), InvalidPan),
    ]
    for card, error in after:
        with pytest.raises(error) as refused:
            _capture(service, card)
        assert refusal_origin(refused.value) == SHOP, error
    unknown = _card(live, session_id="cs_" + "q" * 32)
    before = [_card(spent, secret="cofre_cs_x"), _card(live, secret=None), unknown]
    for card in before:
        with pytest.raises(CaptureUnauthorized) as refused:
            _capture(service, card)
        assert refusal_origin(refused.value) is None
    fresh, once = _session(service), RateLimit(per_second=0.001, burst=1)
    with pytest.raises(CaptureUnauthorized):
        _capture(service, _card(fresh, secret="cofre_cs_x"), once)
    with pytest.raises(RateLimited) as limited:  # a wrong secret, past the limit
        _capture(service, _card(fresh, secret="cofre_cs_y"), once)
    assert refusal_origin(limited.value) is None
    with pytest.raises(InvalidPan):  # the right secret has a bucket of its own
        _capture(service, _card(fresh, pan=Pan(LUHN_BAD)), once)
    with pytest.raises(RateLimited) as limited:  # the right secret, past its limit
        _capture(service, _card(fresh), once)
    assert refusal_origin(limited.value) is None


def test_a_session_whose_origin_the_policy_no_longer_names_captures_nothing(
    service: VaultService, engine: Engine
) -> None:
    """Review 27: an origin taken out of `capture_origins` (a reload) stops the sessions
    already open for it, with the right secret and from its own origin: 403
    `policy_denied`, audited with the session and the origin, nothing stored, and not
    marked readable by the origin (the shop no longer vouches for it)."""
    session = _session(service)
    moved = POLICY.replace(
        f'capture_origins = ["{SHOP}"]', 'capture_origins = ["https://pay.example"]'
    )
    assert moved != POLICY
    service.replace_policy(
        PolicyEngine(parse_policy(moved, kind="toml").policy), actor="test", source="test"
    )
    tokens = _count(engine, "tokens")
    with pytest.raises(PolicyDenied, match="no longer names") as refused:
        _capture(service, _card(session))
    assert refusal_origin(refused.value) is None
    assert _count(engine, "tokens") == tokens
    denied = [e for e in _audit(engine, "capture") if e["outcome"] == "denied"]
    assert [(e["details"]["session"], e["details"]["origin"]) for e in denied] == [
        (session.session_id, SHOP)
    ]


def test_a_session_whose_origin_is_not_allowed_now_serves_neither_page_nor_capture(
    service: VaultService, engine: Engine
) -> None:
    """An http://localhost session opened with the development setting on: the page,
    the preflight and the capture ask with the setting as it is now (off by default,
    fail closed), each refusal audited with the session and the origin; with the
    setting on they serve. An origin the policy dropped is refused by the page too."""
    local = "http://localhost:3000"
    named = POLICY.replace(
        f'capture_origins = ["{SHOP}"]', f'capture_origins = ["{SHOP}", "{local}"]'
    )
    service.replace_policy(
        PolicyEngine(parse_policy(named, kind="toml").policy), actor="test", source="test"
    )
    request = CaptureSessionRequest(origin=local, formats=("pan_bin6_last4",))
    session = service.create_capture_session(PAYMENTS, request, allow_http_localhost=True)
    shop = _session(service)
    rule = SessionCodeRule.OPTIONAL
    assert service.hosted_fields_session(session.session_id, allow_http_localhost=True) == (
        local,
        rule,
    )
    tokens = _count(engine, "tokens")
    with pytest.raises(PolicyDenied, match="development setting"):
        service.hosted_fields_session(session.session_id)
    with pytest.raises(PolicyDenied, match="development setting"):
        service.hosted_fields_session(session.session_id, origin=local)
    with pytest.raises(PolicyDenied, match="development setting") as refused:
        _capture(service, _card(session, origin=local))
    assert refusal_origin(refused.value) is None
    assert _count(engine, "tokens") == tokens
    # Another origin's preflight is an unknown session's answer: nothing is checked.
    assert service.hosted_fields_session(session.session_id, origin=SHOP) is None
    denied = [e for e in _audit(engine, "capture") if e["outcome"] == "denied"]
    assert [(e["details"]["session"], e["details"]["origin"]) for e in denied] == [
        (session.session_id, local)
    ] * 3
    assert [e["details"].get("request") for e in denied] == ["hosted_fields", "preflight", None]
    service.capture_card(
        _card(session, origin=local),
        per_session=GENEROUS,
        per_address=GENEROUS,
        allow_http_localhost=True,
    )
    service.replace_policy(
        PolicyEngine(parse_policy(POLICY.replace(SHOP, "https://pay.example"), kind="toml").policy),
        actor="test",
        source="test",
    )
    with pytest.raises(PolicyDenied, match="no longer names"):
        service.hosted_fields_session(shop.session_id)
