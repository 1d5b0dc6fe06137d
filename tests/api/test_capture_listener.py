"""The capture listener (hosted card fields) over real server TLS, no client
certificate: the attacks first, each a 4xx problem+json with a stable code, nothing
stored, the card never echoed; then the headers that keep the fields framed only by
the session's origin; then the capture that works."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.capture import CAPTURE_SCRIPT, asset, sri_hash
from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from policies.errors import PolicyDenied, PolicyInvalid
from tests.api.conftest import VaultServer, running_vault
from tests.support.codes import shows_code
from tests.support.postgres import free_port
from vault.capture import CaptureSession, CaptureSessionRequest, SessionCodeRule
from vault.service import CallContext

VISA = "4111111111111111"
LUHN_BAD = "4111111111111112"
SHOP = "https://shop.example"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-test")
UNKNOWN_SESSION = "cs_" + "q" * 32  # the shape of a session id, of no session


@pytest.fixture(scope="module")
def capture_vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    settings = CaptureSettings(port=free_port(), session_per_second=0.001, session_burst=5)
    with running_vault(tmp_path_factory.mktemp("capture"), hsm_provider, capture=settings) as vault:
        yield vault


def _session(vault: VaultServer, **changes: Any) -> CaptureSession:
    fields: dict[str, Any] = {"origin": SHOP, "formats": ("pan_bin6_last4",), **changes}
    return vault.runtime.service.create_capture_session(PAYMENTS, CaptureSessionRequest(**fields))


def _post(
    vault: VaultServer,
    session: CaptureSession | str,
    body: dict[str, Any] | None = None,
    *,
    origin: str | None = SHOP,
    secret: str | None = "session",  # noqa: S107 - "use the session's own secret"
) -> httpx.Response:
    session_id = session if isinstance(session, str) else session.session_id
    payload: dict[str, Any] = {"number": VISA, "expiry": "12/29", **(body or {})}
    if secret == "session":
        assert not isinstance(session, str)
        payload["secret"] = session.secret
    elif secret is not None:
        payload["secret"] = secret
    headers = {"origin": origin} if origin is not None else {}
    with vault.capture_client() as client:
        return client.post(f"/v1/capture/{session_id}", json=payload, headers=headers)


def _tokens(vault: VaultServer) -> int:
    with vault.runtime.engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM tokens")).scalar_one())


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert VISA not in response.text
    assert LUHN_BAD not in response.text
    assert "Access-Control-Allow-Origin".lower() not in {
        k.lower() for k in response.headers if response.headers[k] == "*"
    }


# ------------------------------------------------------------------ attacks
def test_a_capture_from_another_origin_is_refused(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    before = _tokens(capture_vault)
    for origin in ("https://evil.example", None):
        response = _post(capture_vault, session, origin=origin)
        _refused(response, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in response.headers
    assert _tokens(capture_vault) == before


def test_a_refusal_to_another_origin_is_not_readable_by_it(capture_vault: VaultServer) -> None:
    """The capture review's CORS gap: a refusal carried `Access-Control-Allow-Origin`
    echoing whatever origin asked, so a page of another origin (a phishing checkout)
    could read why the vault refused it: which sessions exist, which are spent, whether
    its guess of a secret was the one refused. CORS headers go only to the session's own
    origin, on every answer; the refusals stay problem+json with their codes."""
    evil = "https://evil.example"
    live = _session(capture_vault)
    spent = _session(capture_vault)
    assert _post(capture_vault, spent).status_code == 200
    refusals = [
        (_post(capture_vault, live, origin=evil), 403, "origin_not_allowed"),
        (_post(capture_vault, live, origin=evil, secret="cofre_cs_wrong"), 401,
         "capture_unauthorized"),
        (_post(capture_vault, spent, origin=evil), 403, "origin_not_allowed"),
        (_post(capture_vault, UNKNOWN_SESSION, origin=evil, secret="cofre_cs_x"), 401,
         "capture_unauthorized"),
        (_post(capture_vault, live, {"number": LUHN_BAD}, origin=evil), 403,
         "origin_not_allowed"),
        # Refused before the vault sees the session: not a number at all.
        (_post(capture_vault, live, {"number": "4111-x"}, origin=evil), 422, "invalid_pan"),
    ]  # fmt: skip
    for response, status, code in refusals:
        _refused(response, status, code)
        cors = {k for k in response.headers if k.lower().startswith("access-control-")}
        assert cors == set(), (code, cors)
    # The session's own origin still reads its refusals once the secret matched (and
    # its preflight passes); a wrong secret is the unknown session's answer to every
    # origin, its own included (review 27).
    own = _post(capture_vault, spent)
    _refused(own, 409, "capture_session_used")
    assert own.headers["access-control-allow-origin"] == SHOP
    wrong = _post(capture_vault, live, secret="cofre_cs_wrong")
    _refused(wrong, 401, "capture_unauthorized")
    assert "access-control-allow-origin" not in wrong.headers
    with capture_vault.capture_client() as client:
        for session_id in (live.session_id, spent.session_id, UNKNOWN_SESSION):
            preflight = client.options(
                f"/v1/capture/{session_id}",
                headers={"origin": evil, "access-control-request-method": "POST"},
            )
            _refused(preflight, 403, "origin_not_allowed")
            assert not any(k.lower().startswith("access-control-") for k in preflight.headers)


def test_the_preflight_answers_only_the_sessions_origin(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    with capture_vault.capture_client() as client:
        ok = client.options(f"/v1/capture/{session.session_id}", headers={"origin": SHOP})
        evil = client.options(
            f"/v1/capture/{session.session_id}", headers={"origin": "https://evil.example"}
        )
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == SHOP
    assert ok.headers["access-control-allow-methods"] == "POST"
    _refused(evil, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in evil.headers


def test_an_expired_session_is_refused(capture_vault: VaultServer) -> None:
    session = _session(capture_vault, ttl_seconds=60)
    before = _tokens(capture_vault)
    # Its minute has passed (moved in the database: no test waits on the wall clock).
    with capture_vault.runtime.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE capture_sessions SET expires_at = :past WHERE id = :id"),
            {"past": datetime.now(UTC) - timedelta(seconds=1), "id": session.session_id},
        )
    _refused(_post(capture_vault, session), 410, "capture_session_expired")
    assert _tokens(capture_vault) == before


def test_a_reused_session_is_refused(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    assert _post(capture_vault, session).status_code == 200
    before = _tokens(capture_vault)
    _refused(_post(capture_vault, session), 409, "capture_session_used")
    assert _tokens(capture_vault) == before


def test_a_missing_or_wrong_secret_is_refused(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    before = _tokens(capture_vault)
    _refused(_post(capture_vault, session, secret=None), 401, "capture_unauthorized")
    _refused(_post(capture_vault, session, secret="cofre_cs_wrong"), 401, "capture_unauthorized")
    _refused(
        _post(capture_vault, "cs_" + "b" * 32, secret="cofre_cs_x"), 401, "capture_unauthorized"
    )
    assert _tokens(capture_vault) == before


def test_a_luhn_invalid_number_is_refused(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    before = _tokens(capture_vault)
    _refused(_post(capture_vault, session, {"number": LUHN_BAD}), 422, "invalid_pan")
    _refused(_post(capture_vault, session, {"number": "4111 1111 x"}), 422, "invalid_pan")
    _refused(_post(capture_vault, session, {"expiry": "13/29"}), 422, "invalid_expiry")
    _refused(_post(capture_vault, session, {"expiry": "9999-12"}), 422, "invalid_expiry")
    _refused(_post(capture_vault, session, {"expiry": "01/20"}), 422, "card_expired")
    _refused(_post(capture_vault, session, {"name": "A 4111 B"}), 422, "invalid_cardholder_name")
    assert _tokens(capture_vault) == before


def test_a_code_on_a_session_that_forbids_it_is_refused(capture_vault: VaultServer) -> None:
    session = _session(capture_vault, security_code=SessionCodeRule.FORBIDDEN)
    before = _tokens(capture_vault)
    response = _post(capture_vault, session, {"security_code": "737"})
    _refused(response, 422, "security_code_not_allowed")
    assert not shows_code(response.text, "737")
    assert _tokens(capture_vault) == before


def test_guessing_a_secret_is_rate_limited(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    statuses = [
        _post(capture_vault, session, secret=f"cofre_cs_guess{n}").status_code for n in range(5)
    ]
    assert statuses == [401] * 5
    response = _post(capture_vault, session, secret="cofre_cs_guess5")
    _refused(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1
    # The right secret is not refused by the guesses (session 37: they came from
    # someone who knows only the id, and blocked the shopper's checkout).
    assert _post(capture_vault, session).status_code == 200


def test_a_forged_forwarded_header_is_not_the_client_address(capture_vault: VaultServer) -> None:
    # Anyone on the Internet reaches this listener: a forwarded header is the caller's
    # own text. If trusted it would give a fresh per-address bucket per request and put
    # any string (a card in 8+8 digits) into rate_state and the audit log.
    session = _session(capture_vault)
    forged = {"x-forwarded-for": "41111111 11111111", "forwarded": "for=10.9.9.9"}
    with capture_vault.capture_client() as client:
        for spoof in ("10.9.9.9", "41111111 11111111"):
            response = client.post(
                f"/v1/capture/{session.session_id}",
                json={"number": VISA, "secret": "cofre_cs_wrong"},
                headers={"origin": SHOP, **forged, "x-forwarded-for": spoof},
            )
            assert response.status_code == 401
    with capture_vault.runtime.engine.connect() as connection:
        keys = connection.execute(sa.text("SELECT identity FROM rate_state")).scalars().all()
        audit = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars().all()
    addresses = [key for key in keys if key.startswith("capture-address")]
    assert addresses == ["capture-address 127.0.0.1"]
    for text in ("10.9.9.9", "41111111 11111111"):
        assert not [payload for payload in audit if text in str(payload)]


def test_a_peer_that_never_starts_tls_is_closed(capture_vault: VaultServer) -> None:
    # Anyone can open connections here: one that never sends a ClientHello is closed at
    # the header deadline (10 s), not asyncio's default 60 s. 40 s is generous both ways.
    assert capture_vault.capture_url is not None
    port = int(capture_vault.capture_url.rsplit(":", 1)[1])
    # A reset is a close all the same; a TimeoutError (still open at 40 s) fails.
    with socket.create_connection(("127.0.0.1", port), timeout=40) as raw:
        assert _closed_by_peer(raw)


def test_failed_handshakes_are_logged_and_counted_as_the_capture_listeners(
    capture_vault: VaultServer,
) -> None:
    """The capture listener runs on a loop of its own: its failed handshakes (here plain
    HTTP to its TLS port) are logged and counted too, labelled ``capture``, apart from
    the mTLS listener's, where a revoked service certificate must not drown in scans."""
    assert capture_vault.capture_url is not None
    port = int(capture_vault.capture_url.rsplit(":", 1)[1])
    key = ("capture", "HTTP_REQUEST")
    before = _handshake_failures(capture_vault).get(key, 0)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _closed_by_peer(raw)
    for _ in range(500):  # the server reports after the client has seen the close
        counted = _handshake_failures(capture_vault)
        if counted.get(key, 0) > before:
            break
        time.sleep(0.02)
    assert counted.get(key, 0) == before + 1
    # The module's other tests fail handshakes too; none is counted as the mTLS one's.
    assert {listener for listener, _ in counted} == {"capture"}
    lines = [json.loads(line) for line in capture_vault.logs.getvalue().splitlines() if line]
    failed = [e for e in lines if e.get("event") == "tls handshake failed"]
    assert ("capture", "127.0.0.1", "HTTP_REQUEST") in {
        (e["listener"], e["peer"], e["reason"]) for e in failed
    }
    assert {e["listener"] for e in failed} == {"capture"}


def _handshake_failures(vault: VaultServer) -> dict[tuple[str, str], int]:
    data = vault.metrics.get_metrics_data()
    if data is None:
        return {}
    return {
        (str((p.attributes or {})["listener"]), str((p.attributes or {})["reason"])): int(p.value)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "cofre.tls.handshake_failures"
        for p in m.data.data_points  # type: ignore[union-attr]
    }


def _closed_by_peer(raw: socket.socket) -> bool:
    try:
        return raw.recv(1) == b""
    except ConnectionResetError:
        return True


def test_bodies_that_are_not_small_json_are_refused(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    with capture_vault.capture_client() as client:
        url = f"/v1/capture/{session.session_id}"
        form = client.post(url, content=b"number=" + VISA.encode(), headers={"origin": SHOP})
        big = client.post(
            url,
            content=b'{"number": "' + b"1" * 5000 + b'"}',
            headers={"origin": SHOP, "content-type": "application/json"},
        )
        extra = client.post(url, json={"number": VISA, "cvv": "123"}, headers={"origin": SHOP})
    _refused(form, 415, "unsupported_media_type")
    _refused(big, 413, "payload_too_large")
    _refused(extra, 422, "invalid_request")
    assert "123" not in extra.text
    # Refused before any operation ran: the listener audits each one itself.
    with capture_vault.runtime.engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :a"),
            {"a": '%"action":"capture.request"%'},
        ).scalars()
        codes = [json.loads(p)["details"]["code"] for p in payloads]
    for code in ("unsupported_media_type", "payload_too_large", "invalid_request"):
        assert code in codes


# ------------------------------------------------------------------ framing and scripts
def test_the_hosted_fields_are_framed_only_by_the_sessions_origin(
    capture_vault: VaultServer,
) -> None:
    session = _session(capture_vault)
    with capture_vault.capture_client() as client:
        page = client.get(f"/v1/hosted-fields/{session.session_id}")
        unknown = client.get("/v1/hosted-fields/cs_" + "c" * 32)
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert f"frame-ancestors {SHOP}" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    # No inline script or style: every script has a src, no on* handlers, no style=.
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert scripts
    # Named with its version (session 38: a new copy is a new URL to every cache).
    assert all('src="/v1/hosted-fields.js?v=' in s for s in scripts)
    assert not re.search(r"\son[a-z]+=|style=|<style", page.text)
    assert f'data-parent-origin="{SHOP}"' in page.text
    _refused(unknown, 404, "not_found")
    assert "frame-ancestors 'none'" in unknown.headers["content-security-policy"]


def test_the_documented_sri_hash_is_the_served_scripts() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "capture.md").read_text()
    documented = set(re.findall(r'integrity="(sha384-[A-Za-z0-9+/=]+)"', guide))
    assert documented == {sri_hash(asset(CAPTURE_SCRIPT))}, (
        "docs/capture.md shows another SRI hash than api/capture_assets/capture.js has"
    )


def test_the_shop_script_is_served_for_sri(capture_vault: VaultServer) -> None:
    with capture_vault.capture_client() as client:
        script = client.get("/v1/capture.js")
        fields = client.get("/v1/hosted-fields.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["access-control-allow-origin"] == "*"
    assert sri_hash(script.content) == sri_hash(asset(CAPTURE_SCRIPT))
    assert fields.status_code == 200
    # Neither script evaluates strings.
    for source in (script.text, fields.text):
        assert not re.search(r"\beval\(|new Function|setTimeout\(\s*['\"]", source)


# ------------------------------------------------------------------ the capture that works
def test_a_capture_from_the_hosted_fields_answers_a_token(capture_vault: VaultServer) -> None:
    session = _session(capture_vault)
    response = _post(capture_vault, session, origin=capture_vault.capture_url)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"token", "format", "masked_pan", "expiry"}
    assert answer["masked_pan"] == "411111******1111"
    assert answer["expiry"] == "2029-12"
    assert answer["token"] != VISA
    assert "access-control-allow-origin" not in response.headers
    with capture_vault.runtime.engine.connect() as connection:
        stored = connection.execute(
            sa.text("SELECT domain FROM tokens WHERE token = :t"), {"t": answer["token"]}
        ).scalar_one()
    assert stored == PAYMENTS.identity
    # The shop's backend (the session's creator) reads it masked.
    with capture_vault.client("payments") as payments:
        masked = payments.post("/v1/detokenize-masked", json={"token": answer["token"]})
    assert masked.json()["masked_pan"] == "411111******1111"


def test_a_capture_from_the_sessions_origin_may_read_the_answer(
    capture_vault: VaultServer,
) -> None:
    session = _session(capture_vault)
    response = _post(capture_vault, session)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP


# ------------------------------------------------------------------ opening sessions over mTLS
def test_the_shop_backend_opens_a_session_over_mutual_tls(capture_vault: VaultServer) -> None:
    with capture_vault.client("payments") as payments:
        response = payments.post(
            "/v1/capture-sessions",
            json={"origin": SHOP, "formats": ["pan_bin6_last4"], "ttl_seconds": 300},
        )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    session = response.json()
    assert session["origin"] == SHOP
    assert session["capture_origin"] == capture_vault.capture_url
    assert session["client_secret"].startswith("cofre_cs_")
    body = {"number": VISA, "secret": session["client_secret"]}
    with capture_vault.capture_client() as client:
        captured = client.post(
            f"/v1/capture/{session['session_id']}", json=body, headers={"origin": SHOP}
        )
    assert captured.status_code == 200, captured.text


@pytest.mark.parametrize(
    ("client", "body", "status", "code"),
    [
        ("ledger", {"origin": SHOP, "formats": ["uuid"]}, 403, "policy_denied"),
        ("payments", {"origin": "http://shop.example", "formats": ["uuid"]}, 422, "invalid_origin"),
        (
            "payments",
            {"origin": "https://shop.example/pay", "formats": ["uuid"]},
            422,
            "invalid_origin",
        ),
        (
            "payments",
            {"origin": SHOP, "formats": ["uuid"], "ttl_seconds": 901},
            422,
            "invalid_request",
        ),
        ("payments", {"origin": SHOP, "formats": []}, 422, "invalid_request"),
        ("payments", {"origin": SHOP, "formats": ["not-a-format"]}, 403, "policy_denied"),
    ],
)
def test_a_session_request_out_of_bounds_is_refused(
    capture_vault: VaultServer, client: str, body: dict[str, Any], status: int, code: str
) -> None:
    before = _sessions(capture_vault)
    with capture_vault.client(client) as c:
        response = c.post("/v1/capture-sessions", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert _sessions(capture_vault) == before


def _sessions(vault: VaultServer) -> int:
    with vault.runtime.engine.connect() as connection:
        return int(
            connection.execute(sa.text("SELECT count(*) FROM capture_sessions")).scalar_one()
        )


# ------------------------------------------------------------------ no input is a 500
_TEXT = st.text(max_size=40)
_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "secret": st.one_of(_TEXT, st.none(), st.integers()),
        "number": st.one_of(_TEXT, st.from_regex(r"[0-9 -]{10,25}", fullmatch=True)),
        "expiry": st.one_of(_TEXT, st.from_regex(r"[0-9]{2}/[0-9]{2}", fullmatch=True)),
        "security_code": st.one_of(_TEXT, st.integers()),
        "name": _TEXT,
        "format": _TEXT,
        "extra": _TEXT,
    },
)


@pytest.fixture(scope="module")
def fuzz_session(capture_vault: VaultServer) -> CaptureSession:
    return _session(capture_vault, max_uses=20)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=_BODIES,
    session_id=st.one_of(
        st.just("session"), st.from_regex(r"[A-Za-z0-9_.~-]{1,40}", fullmatch=True)
    ),
)
def test_no_body_is_a_server_error_or_echoed(
    capture_vault: VaultServer, fuzz_session: CaptureSession, body: dict[str, Any], session_id: str
) -> None:
    path = f"/v1/capture/{fuzz_session.session_id if session_id == 'session' else session_id}"
    with capture_vault.capture_client() as client:
        response = client.post(path, json=body, headers={"origin": SHOP})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        for value in body.values():
            for digits in re.findall(r"[0-9]{6,}", str(value)):
                assert digits not in response.text


@pytest.mark.parametrize("field", ["max_uses", "ttl_seconds"])
@pytest.mark.parametrize("value", [True, "1", 1.0])
def test_a_sessions_numbers_are_json_integers(
    capture_vault: VaultServer, field: str, value: object
) -> None:
    """Review 26: `max_uses` took `true` as 1 (ttl_seconds was already strict)."""
    with capture_vault.client("payments") as client:
        response = client.post(
            "/v1/capture-sessions",
            json={"origin": SHOP, "formats": ["pan_bin6_last4"], field: value},
        )
    _refused(response, 422, "invalid_request")


def test_a_reload_that_drops_capture_origins_keeps_the_policy_in_force(
    capture_vault: VaultServer,
) -> None:
    """A policy edited to grant `capture` without `capture_origins` is refused on reload
    as at start (`PolicyInvalid` naming the identity, logged by the SIGHUP handler):
    the policy in force stays, and with it the origins it names."""
    runtime = capture_vault.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    original = policy_file.read_text()
    in_force = runtime.policy_sha256
    edited = re.sub(r"(?m)^capture_origins = .*\n", "", original) + "# edited\n"
    try:
        policy_file.write_text(edited)
        with pytest.raises(PolicyInvalid, match=r"'spiffe://cofre/payments'.*capture_origins"):
            runtime.reload_policy()
        assert runtime.policy_sha256 == in_force
        assert _session(capture_vault).origin == SHOP
        with pytest.raises(PolicyDenied, match="origin"):
            _session(capture_vault, origin="https://evil.example")
    finally:
        policy_file.write_text(original)
    assert runtime.reload_policy() is False  # the file is the policy in force again
