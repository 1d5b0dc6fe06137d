"""Is a capture session's origin still allowed *now*? Review 27 (F7) made a capture for
a session whose origin its creator's policy no longer names 403 `policy_denied`; its
hosted-fields page and its CORS preflight still answered for the rest of the session's
life (up to 15 minutes), and an `http://localhost` session opened while the dev setting
`COFRE_CAPTURE__ALLOW_HTTP_LOCALHOST` was on survived a restart with it off.

Now the page, the preflight and the capture ask one question: the creator's current
policy names the session's origin AND the current settings accept that origin's form.
Real server TLS, a real vault, real reloads and a real restart. The review-27
properties are pinned beside: no second read of the session on these refusals, the
preflight charged to the client address before the read, no CORS on the refusals."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.leakguard import record_responses
from tests.support.policies import TEST_CAPTURE_ORIGINS, with_capture_origins
from tests.support.postgres import free_port
from tests.support.statements import capture_session_reads
from vault.capture import CaptureSession, CaptureSessionRequest
from vault.service import CallContext

VISA = "4111111111111111"
SHOP = "https://shop.example"
PHISHING = "https://shop-example.net"
LOCAL = "http://localhost:3000"  # in the tests' policy; a dev-setting-only origin
PAYMENTS = CallContext("spiffe://cofre/payments", "req-origin-now")
DENIED_REASON = "no longer"


@pytest.fixture(scope="module")
def vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    """A production-like capture listener (`allow_http_localhost` off, the default)."""
    settings = CaptureSettings(port=free_port())
    with running_vault(tmp_path_factory.mktemp("origin-now"), hsm_provider, capture=settings) as v:
        yield v


def _session(vault: VaultServer, origin: str, **options: bool) -> CaptureSession:
    return vault.runtime.service.create_capture_session(
        PAYMENTS, CaptureSessionRequest(origin=origin, formats=("pan_bin6_last4",)), **options
    )


@contextmanager
def _dropped_session(vault: VaultServer) -> Iterator[CaptureSession]:
    """A live session for `PHISHING`, opened while the policy named it; inside the block
    the policy in force (reloaded) no longer does."""
    runtime = vault.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    original = policy_file.read_text()
    try:
        policy_file.write_text(with_capture_origins(original, [*TEST_CAPTURE_ORIGINS, PHISHING]))
        assert runtime.reload_policy()
        session = _session(vault, PHISHING)
        policy_file.write_text(original)
        assert runtime.reload_policy()
        yield session
    finally:
        policy_file.write_text(original)
        runtime.reload_policy()


def _client(vault: VaultServer, address: str) -> httpx.Client:
    """A browser-like client of the capture listener speaking from `address`."""
    assert vault.capture_url is not None
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    return httpx.Client(
        base_url=vault.capture_url,
        transport=httpx.HTTPTransport(verify=context, local_address=address),
        timeout=10,
        event_hooks=record_responses(vault.tmp / "responses.log"),
    )


def _page(client: httpx.Client, session_id: str) -> httpx.Response:
    return client.get(f"/v1/hosted-fields/{session_id}")


def _preflight(client: httpx.Client, session_id: str, origin: str) -> httpx.Response:
    return client.options(
        f"/v1/capture/{session_id}",
        headers={"origin": origin, "access-control-request-method": "POST"},
    )


def _post(client: httpx.Client, session: CaptureSession, origin: str) -> httpx.Response:
    body = {"number": VISA, "expiry": "12/29", "secret": session.secret}
    return client.post(f"/v1/capture/{session.session_id}", json=body, headers={"origin": origin})


def _cors(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-")}


def _refusal(response: httpx.Response) -> tuple[int, str | None, dict[str, str]]:
    """Status, problem code (None for a page or a 204) and CORS headers."""
    code = None
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        code = response.json().get("code")
    return response.status_code, code, _cors(response)


def _denials(vault: VaultServer, session_id: str) -> list[dict[str, Any]]:
    """The `capture` denials that name the session."""
    with vault.runtime.engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
            {"p": f"%{session_id}%"},
        ).scalars()
        entries = [json.loads(p) for p in payloads]
    return [e for e in entries if e["action"] == "capture" and e["outcome"] == "denied"]


def _entries_of(vault: VaultServer, request_id: str) -> list[dict[str, Any]]:
    with vault.runtime.engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
            {"p": f"%{request_id}%"},
        ).scalars()
        return [json.loads(p) for p in payloads]


def _uses(vault: VaultServer, session_id: str) -> int:
    with vault.runtime.engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT uses FROM capture_sessions WHERE id = :id"), {"id": session_id}
            ).scalar_one()
        )


# ------------------------------------------------- 1. an origin the policy dropped
def test_the_page_of_a_session_whose_origin_the_policy_dropped_is_refused(
    vault: VaultServer,
) -> None:
    """The fields' page rendered, framed by the dropped origin (`frame-ancestors`), for
    the session's whole life: a phishing page kept showing the vault's genuine fields
    and only the final POST was refused. Now 403 `policy_denied`, audited as the
    capture is (creator, session, origin, reason), with one read of the session."""
    with _dropped_session(vault) as session, _client(vault, "127.0.8.1") as client:
        with capture_session_reads(vault.runtime.engine) as reads:
            page = _page(client, session.session_id)
        assert _refusal(page) == (403, "policy_denied", {}), page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert PHISHING not in page.text
        assert len(reads) == 1
    denied = _denials(vault, session.session_id)
    assert [(e["actor"], e["details"]["origin"]) for e in denied] == [
        ("spiffe://cofre/payments", PHISHING)
    ]
    # The vault's entry is the request's one entry: the listener's guard adds none.
    assert _entries_of(vault, page.headers["x-request-id"]) == denied
    assert DENIED_REASON in str(denied[0]["details"]["reason"])
    assert denied[0]["details"]["client"] == "127.0.8.1"


def test_the_preflight_of_a_session_whose_origin_the_policy_dropped_is_refused(
    vault: VaultServer,
) -> None:
    """The preflight from the dropped origin answered 204 with CORS for it: the browser
    then sent the card. Now 403 `policy_denied` without CORS, audited; one read of the
    session, charged to the address before it."""
    with _dropped_session(vault) as session, _client(vault, "127.0.8.2") as client:
        with capture_session_reads(vault.runtime.engine) as reads:
            answer = _preflight(client, session.session_id, PHISHING)
        assert _refusal(answer) == (403, "policy_denied", {}), answer.text
        assert len(reads) == 1
    denied = _denials(vault, session.session_id)
    assert [(e["details"]["origin"], e["details"]["client"]) for e in denied] == [
        (PHISHING, "127.0.8.2")
    ]


def test_a_preflight_from_another_origin_is_still_the_unknown_sessions_answer(
    vault: VaultServer,
) -> None:
    """Only the session's own origin reaches the policy check: from another, the
    dropped session's preflight is what an unknown session's is, and nothing of the
    policy is written for it."""
    with _dropped_session(vault) as session, _client(vault, "127.0.8.3") as client:
        other = _preflight(client, session.session_id, SHOP)
        unknown = _preflight(client, "cs_" + "z" * 32, SHOP)
    assert _refusal(other) == _refusal(unknown) == (403, "origin_not_allowed", {})
    assert _denials(vault, session.session_id) == []


def test_a_session_serves_again_once_the_policy_names_its_origin_again(
    vault: VaultServer,
) -> None:
    """The question is asked of the policy in force at each request, not once: the
    operator who puts the origin back (a reload) gets the session back while it lives,
    and an origin the policy always named is untouched by the check."""
    runtime = vault.runtime
    policy_file = runtime.settings.policy_file
    assert policy_file is not None
    with _dropped_session(vault) as session, _client(vault, "127.0.8.4") as client:
        assert _page(client, session.session_id).status_code == 403
        original = policy_file.read_text()
        policy_file.write_text(with_capture_origins(original, [*TEST_CAPTURE_ORIGINS, PHISHING]))
        assert runtime.reload_policy()
        page = _page(client, session.session_id)
        preflight = _preflight(client, session.session_id, PHISHING)
    assert page.status_code == 200
    assert f"frame-ancestors {PHISHING}" in page.headers["content-security-policy"]
    assert preflight.status_code == 204
    assert _cors(preflight)["access-control-allow-origin"] == PHISHING
    kept = _session(vault, SHOP)
    with _client(vault, "127.0.8.5") as client:
        assert _page(client, kept.session_id).status_code == 200
        assert _preflight(client, kept.session_id, SHOP).status_code == 204
        assert _post(client, kept, SHOP).status_code == 200


# ------------------------------------------------- 2. a dev-only origin after a restart
def test_an_http_localhost_session_does_not_outlive_the_dev_setting(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> None:
    """A vault runs with `allow_http_localhost` (development) and a backend opens a
    session for `http://localhost:3000`, which the policy names; the vault restarts with
    the setting off (production). The session's page rendered, its preflight passed
    and a capture over plain http took the card, for the rest of its life. Now each is
    403 `policy_denied` (no CORS), audited; nothing is stored, the session unspent. An
    https session opened before the restart serves on: the restart refuses nothing."""
    tmp = tmp_path_factory.mktemp("origin-restart")
    dev = CaptureSettings(port=free_port(), allow_http_localhost=True)
    with running_vault(tmp, hsm_provider, capture=dev) as before, before.client() as backend:
        opened = {
            origin: backend.post(
                "/v1/capture-sessions", json={"origin": origin, "formats": ["pan_bin6_last4"]}
            )
            for origin in (LOCAL, SHOP)
        }
    for answer in opened.values():
        assert answer.status_code == 201, answer.text
    local, shop = (opened[o].json() for o in (LOCAL, SHOP))
    session = CaptureSession(
        session_id=local["session_id"],
        origin=LOCAL,
        formats=("pan_bin6_last4",),
        expires_at=local["expires_at"],
        max_uses=1,
        security_code=local["security_code"],
        secret=local["client_secret"],
    )
    production = CaptureSettings(port=free_port())
    with running_vault(tmp, hsm_provider, capture=production) as after:
        with _client(after, "127.0.9.1") as client:
            kept = _page(client, shop["session_id"])
            page = _page(client, session.session_id)
            preflight = _preflight(client, session.session_id, LOCAL)
            captured = _post(client, session, LOCAL)
        assert kept.status_code == 200
        assert _refusal(page) == (403, "policy_denied", {}), page.text
        assert _refusal(preflight) == (403, "policy_denied", {}), preflight.text
        assert _refusal(captured) == (403, "policy_denied", {}), captured.text
        assert _uses(after, session.session_id) == 0
        denied = _denials(after, session.session_id)
        assert len(denied) == 3
        assert {e["details"]["origin"] for e in denied} == {LOCAL}
