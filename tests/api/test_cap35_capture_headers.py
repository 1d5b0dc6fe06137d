"""Session 35: the capture listener's answers as an anonymous internet client reads them,
every kind side by side: the security headers each carries, and what a CORS preflight
grants (pins properties that held; docs/capture.md, "Running the capture listener")."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import VaultServer
from tests.api.test_capture_listener import SHOP, VISA, _session, capture_vault

__all__ = ["capture_vault"]  # the fixture, imported for the tests here

_EVERY_ANSWER = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "strict-transport-security": "max-age=31536000",
}


def _answers(vault: VaultServer) -> dict[str, httpx.Response]:
    session = _session(vault)
    used = _session(vault)
    path = f"/v1/capture/{session.session_id}"
    card = {"secret": used.secret, "number": VISA, "expiry": "12/29"}
    with vault.capture_client() as client:
        return {
            "script": client.get("/v1/capture.js"),
            "fields script": client.get("/v1/hosted-fields.js"),
            "page": client.get(f"/v1/hosted-fields/{session.session_id}"),
            "unknown page": client.get("/v1/hosted-fields/cs_" + "q" * 32),
            "preflight": client.options(
                path,
                headers={"origin": SHOP, "access-control-request-method": "POST"},
            ),
            "capture": client.post(
                f"/v1/capture/{used.session_id}", json=card, headers={"origin": SHOP}
            ),
            "refusal": client.post(path, json={"number": VISA}, headers={"origin": SHOP}),
            "unknown path": client.get("/v1/nothing"),
            "wrong method": client.put(path, headers={"origin": SHOP}),
        }


@pytest.fixture(scope="module")
def answers(capture_vault: VaultServer) -> dict[str, httpx.Response]:
    return _answers(capture_vault)


def test_every_answer_carries_the_security_headers(answers: dict[str, httpx.Response]) -> None:
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "script": 200,
        "fields script": 200,
        "page": 200,
        "unknown page": 404,
        "preflight": 204,
        "capture": 200,
        "refusal": 401,
        "unknown path": 404,
        "wrong method": 405,
    }
    for name, answer in answers.items():
        for header, value in _EVERY_ANSWER.items():
            assert answer.headers.get(header) == value, (name, header, answer.headers)
        csp = answer.headers.get("content-security-policy", "")
        assert "default-src 'none'" in csp, (name, csp)
        assert "frame-ancestors" in csp, (name, csp)
        # Only the fields' page may be framed, and only by the session's origin.
        framed = f"frame-ancestors {SHOP}" if name == "page" else "frame-ancestors 'none'"
        assert framed in csp, (name, csp)
        assert "*" not in csp, (name, csp)
        assert "access-control-allow-credentials" not in answer.headers, name


def test_only_the_two_static_scripts_and_style_may_be_cached(
    answers: dict[str, httpx.Response],
) -> None:
    for name, answer in answers.items():
        cache = answer.headers.get("cache-control")
        if name in ("script", "fields script"):
            assert cache == "public, max-age=300", name
        else:
            assert cache == "no-store", (name, cache)


def test_the_preflight_grants_post_with_a_json_body_to_the_sessions_origin_alone(
    answers: dict[str, httpx.Response],
) -> None:
    preflight = answers["preflight"]
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == SHOP
    assert preflight.headers["access-control-allow-methods"] == "POST"
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    assert preflight.headers["vary"] == "Origin"
    assert "access-control-expose-headers" not in preflight.headers
    # Any page may load the script (SRI needs CORS), but it carries no credentials.
    assert answers["script"].headers["access-control-allow-origin"] == "*"
    for name in ("page", "unknown page", "unknown path", "wrong method", "fields script"):
        assert "access-control-allow-origin" not in answers[name].headers, name
