"""PATCH /v1/tokens/{token} over real mutual TLS, on SQLite and PostgreSQL: the shop's
backend (payments, granted ``update`` in the dev policy) sends a reissued card's new
expiry for a token it holds, and a full reveal then shows it.

Attacks first. What a stolen certificate granted ``update`` can and cannot do:

- it can rewrite the metadata, life (down to a second, or for ever, as tokenize could),
  expiry and cardholder name of its own domain's live tokens, each write audited as
  ``token.update`` with the changed parts' names, never their values;
- it cannot learn anything new from the answer: `GET /v1/tokens/{token}`'s body, never
  a PAN, an expiry or a name;
- it cannot send a PAN or a security code (unknown fields: 422 ``invalid_request``), nor
  hide one in metadata or the name (422 as tokenize refuses them);
- it cannot tell another domain's token from a deleted, expired or never-made one: the
  same 404, body and headers alike, as GET answers for a token that never existed;
- an identity without ``update`` is refused 403 ``policy_denied`` (audited).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.codes import shows_code

PAN = "4111111111111111"
OTHER_PAN = "5555555555554444"
CARD = {"pan": PAN, "format": "pan_bin6_last4"}
# Headers that differ between any two answers, whatever they say.
PER_ANSWER = {"date", "x-request-id"}


@pytest.fixture
def vault(tmp_path: Path, hsm_provider: HSMProvider, database_url: str) -> Iterator[VaultServer]:
    with running_vault(tmp_path / "vault", hsm_provider, database_url) as server:
        yield server


def _call(vault: VaultServer, who: str, method: str, path: str, body: Any = None) -> httpx.Response:
    with vault.client(who) as client:
        return client.request(method, path, json=body, headers={"x-request-id": "req-update-test"})


def _tokenize(vault: VaultServer, who: str = "payments", **extra: Any) -> str:
    answer = _call(vault, who, "POST", "/v1/tokenize", {**CARD, **extra})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def _entries(vault: VaultServer, action: str = "token.update") -> list[str]:
    with vault.runtime.engine.connect() as c:
        payloads = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        return [p for p in payloads if f'"action":"{action}"' in p]


def _comparable(answer: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in PER_ANSWER}
    return answer.status_code, headers, answer.content


# ------------------------------------------------------------------ attacks
def test_every_miss_is_the_same_404_as_get_gives(vault: VaultServer) -> None:
    """Another identity's token, a deleted one, an expired one and one never made: one
    404, byte for byte and header for header, the one GET answers for a token that never
    existed. And nothing of theirs changes."""
    theirs = _tokenize(vault, "store", metadata={"order": "theirs"}, format="uuid")
    deleted = _tokenize(vault, pan=OTHER_PAN)
    assert _call(vault, "payments", "DELETE", f"/v1/tokens/{deleted}").status_code == 200
    expired = _tokenize(vault, pan="4000056655665556", ttl_seconds=3600)
    with vault.runtime.engine.begin() as c:  # its life ended (no wait on the clock)
        c.execute(
            sa.text("UPDATE tokens SET expires_at = :t WHERE token = :token"),
            {"t": datetime.now(UTC) - timedelta(hours=1), "token": expired},
        )
    expected = _comparable(_call(vault, "payments", "GET", "/v1/tokens/tok_never_made"))
    assert expected[0] == 404
    body = {"expiry": "03/30", "metadata": {"order": "mine"}}
    for token in (theirs, deleted, expired, "tok_never_made"):
        assert _comparable(_call(vault, "payments", "PATCH", f"/v1/tokens/{token}", body)) == (
            expected
        )
    answer = _call(vault, "store", "GET", f"/v1/tokens/{theirs}")
    assert answer.json()["metadata"] == {"order": "theirs"}
    assert sum('"outcome":"failed"' in e for e in _entries(vault)) == 4


def test_an_identity_without_update_is_refused_and_audited(vault: VaultServer) -> None:
    token = _tokenize(vault, metadata={"order": "1"})
    # store may read payments' tokens, and may not write them; stranger is in no policy.
    for who in ("store", "stranger"):
        answer = _call(vault, who, "PATCH", f"/v1/tokens/{token}", {"metadata": {"o": "2"}})
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "policy_denied"
    assert _call(vault, "payments", "GET", f"/v1/tokens/{token}").json()["metadata"] == {
        "order": "1"
    }
    denied = [e for e in _entries(vault) if '"outcome":"denied"' in e]
    assert len(denied) == 2


BAD_BODIES: list[tuple[Any, str]] = [
    ({}, "invalid_request"),
    ({"pan": PAN}, "invalid_request"),
    ({"pan": PAN, "expiry": "03/30"}, "invalid_request"),
    ({"security_code": "737", "expiry": "03/30"}, "invalid_request"),
    ({"metadata": None}, "invalid_request"),
    ({"expiry": None}, "invalid_request"),
    ({"ttl_seconds": 0}, "invalid_request"),
    ({"ttl_seconds": "60"}, "invalid_request"),
    ({"metadata": {"note": PAN}}, "invalid_metadata"),
    ({"metadata": {"cvv": "737"}}, "sensitive_authentication_data"),
    ({"expiry": "10/26"}, "card_expired"),
    ({"expiry": "2026-13"}, "invalid_expiry"),
    ({"cardholder_name": f"ZOE {PAN}"}, "invalid_cardholder_name"),
    ({"metadata": {"order": "2"}, "cardholder_name": "A" * 65}, "invalid_cardholder_name"),
]


def test_bad_bodies_are_problems_and_change_nothing(vault: VaultServer) -> None:
    token = _tokenize(vault, metadata={"order": "1"}, expiry="03/29")
    before = _call(vault, "payments", "GET", f"/v1/tokens/{token}").json()
    for body, code in BAD_BODIES:
        answer = _call(vault, "payments", "PATCH", f"/v1/tokens/{token}", body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == code, (body, answer.text)
        for secret in (PAN, "4111 1111", "ZOE"):
            assert secret not in answer.text
        assert not shows_code(answer.text, "737")
    assert _call(vault, "payments", "GET", f"/v1/tokens/{token}").json() == before
    revealed = _call(vault, "settlement", "POST", "/v1/detokenize", {"token": token}).json()
    assert revealed["expiry"] == "2029-03"
    for entry in _entries(vault) + _entries(vault, "api.request"):
        for secret in (PAN, "ZOE"):
            assert secret not in entry
        assert not shows_code(entry, "737")


# ------------------------------------------------------------------ the interface
def test_a_late_keyed_retry_does_not_undo_an_update(vault: VaultServer) -> None:
    """The shop's first tokenize timed out on its side, the card was reissued and
    updated, then the shop's retry of that first call arrived: a retry with its
    idempotency key is a replay (the token as it stands), so the reissued card's expiry
    stays. Before, the retry resealed the expiry it carried, the old one, and the
    card's next authorisations were declined until the shop sent the new one again."""
    first = {**CARD, "idempotency_key": "order-late", "expiry": "03/27"}
    token = _tokenize(vault, **first)
    answer = _call(vault, "payments", "PATCH", f"/v1/tokens/{token}", {"expiry": "03/30"})
    assert answer.status_code == 200, answer.text
    retry = _call(vault, "payments", "POST", "/v1/tokenize", {**CARD, **first})
    assert (retry.status_code, retry.json()["token"]) == (200, token)
    full = _call(vault, "settlement", "POST", "/v1/detokenize", {"token": token}).json()
    assert (full["pan"], full["expiry"]) == (PAN, "2030-03")


def test_a_reissued_cards_new_expiry_over_the_api(vault: VaultServer) -> None:
    token = _tokenize(vault, expiry="03/27", cardholder_name="Zoe Doe", metadata={"o": "1"})
    answer = _call(vault, "payments", "PATCH", f"/v1/tokens/{token}", {"expiry": "03/30"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    info = _call(vault, "payments", "GET", f"/v1/tokens/{token}")
    assert answer.json() == info.json()
    assert PAN not in answer.text
    assert "2030" not in answer.text  # the expiry is a reveal's, never this answer's
    full = _call(vault, "settlement", "POST", "/v1/detokenize", {"token": token}).json()
    assert (full["pan"], full["expiry"], full["cardholder_name"]) == (PAN, "2030-03", "Zoe Doe")
    masked = _call(vault, "payments", "POST", "/v1/detokenize-masked", {"token": token}).json()
    assert masked["expiry"] == "2030-03"
    # The name, the metadata and the life together; then the life for ever.
    answer = _call(
        vault,
        "payments",
        "PATCH",
        f"/v1/tokens/{token}",
        {"cardholder_name": "Zoe Roe", "metadata": {"o": "2"}, "ttl_seconds": 3600},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"] == {"o": "2"}
    assert answer.json()["expires_at"] is not None
    full = _call(vault, "settlement", "POST", "/v1/detokenize", {"token": token}).json()
    assert (full["expiry"], full["cardholder_name"]) == ("2030-03", "Zoe Roe")
    forever = _call(vault, "payments", "PATCH", f"/v1/tokens/{token}", {"ttl_seconds": None})
    assert forever.status_code == 200, forever.text
    assert forever.json()["expires_at"] is None
    assert forever.json()["metadata"] == {"o": "2"}
    # Three entries, naming the parts and never their values.
    entries = _entries(vault)
    assert len(entries) == 3
    assert '"fields":"expiry"' in entries[0]
    assert '"fields":"cardholder_name,metadata,ttl_seconds"' in entries[1]
    assert '"expires_at":"never"' in entries[2]
    for entry in entries:
        assert '"outcome":"success"' in entry
        for value in ("2030", "03/30", "Zoe", "Roe", '"o"'):
            assert value not in entry
