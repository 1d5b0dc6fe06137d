"""Card bundles and security codes over the API (mTLS, real server): each bad card
detail is a problem+json with its own code, nothing stored; reveals per level; the
security-code counts on /metrics."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hsm.keys import KeyHierarchy
from hsm.provider import HSMProvider, provider_from_settings
from tests.api.conftest import VaultServer, running_vault
from tests.support.codes import shows_code
from tests.support.softhsm import SoftHSMToken, destroy_code_epochs

NO_CODE_FORMAT = """
[formats.card_nocode]
type = "random"
security_code = "forbid"

[identities."spiffe://cofre/stranger"]
operations = ["tokenize", "detokenize_masked"]
formats = ["card_nocode"]
reveal = "masked"
"""
PAN = "4111111111111111"
CARD = {"pan": PAN, "format": "pan_bin6_last4"}


@pytest.fixture(scope="module")
def cards_vault(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: SoftHSMToken
) -> Iterator[VaultServer]:
    # The session's second token: the epoch keys this vault makes (registered in its
    # own database) never sit beside another test vault's keys.
    provider: HSMProvider = provider_from_settings(
        softhsm_token.settings(token_label=softhsm_token.label + "-rot")
    )
    KeyHierarchy(provider).initialize()
    tmp = tmp_path_factory.mktemp("cards")
    try:
        with running_vault(tmp, provider, extra_policy=NO_CODE_FORMAT) as vault:
            yield vault
    finally:
        destroy_code_epochs(provider)
        provider.close()


def _tokens(vault: VaultServer) -> int:
    with vault.runtime.engine.connect() as c:
        return int(c.exec_driver_sql("SELECT count(*) FROM tokens").scalar_one())


def _post(vault: VaultServer, who: str, path: str, body: dict[str, Any]) -> Any:
    with vault.client(who) as c:
        return c.post(path, json=body)


# ------------------------------------------------------------------ attacks
@pytest.mark.parametrize(
    ("who", "extra", "status", "code"),
    [
        ("payments", {"cardholder_name": "A" * 65}, 422, "invalid_cardholder_name"),
        ("payments", {"cardholder_name": "A" * 300}, 422, "invalid_request"),
        ("payments", {"cardholder_name": f"ZOE {PAN}"}, 422, "invalid_cardholder_name"),
        ("payments", {"cardholder_name": "ZOE 4111 1111 1111"}, 422, "invalid_cardholder_name"),
        ("payments", {"expiry": "10/26"}, 422, "card_expired"),
        ("payments", {"expiry": "2026-13"}, 422, "invalid_expiry"),
        ("payments", {"expiry": "9999-12"}, 422, "invalid_expiry"),
        ("payments", {"expiry": "0000-01"}, 422, "invalid_expiry"),
        ("payments", {"expiry": "1" * 100}, 422, "invalid_request"),
        ("payments", {"ttl_seconds": "60"}, 422, "invalid_request"),
        ("payments", {"ttl_seconds": True}, 422, "invalid_request"),
        ("payments", {"security_code": "12"}, 422, "invalid_security_code"),
        ("payments", {"security_code": "12345"}, 422, "invalid_security_code"),
        ("payments", {"security_code": 737}, 422, "invalid_request"),
        ("payments", {"metadata": {"cvv": "737"}}, 422, "sensitive_authentication_data"),
        ("stranger", {"format": "card_nocode", "security_code": "737"}, 422,
         "security_code_forbidden"),
    ],
)  # fmt: skip
def test_bad_card_details_are_problems_and_store_nothing(
    cards_vault: VaultServer, who: str, extra: dict[str, Any], status: int, code: str
) -> None:
    before = _tokens(cards_vault)
    answer = _post(cards_vault, who, "/v1/tokenize", {**CARD, **extra})
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == code
    for secret in (PAN, "4111 1111", "ZOE"):
        assert secret not in answer.text
    assert not shows_code(answer.text, "737")
    assert _tokens(cards_vault) == before
    # In a batch the same item is named, nothing of the batch stored.
    first = {**CARD, "format": extra.get("format", CARD["format"])}
    batch = _post(cards_vault, who, "/v1/tokenize/batch", {"items": [first, {**CARD, **extra}]})
    assert batch.status_code == 422
    if status == 422 and code != "invalid_request":
        assert (batch.json()["item"], batch.json()["item_code"]) == (1, code)
    assert _tokens(cards_vault) == before


# ------------------------------------------------------------------ bundles
def test_bundle_round_trip_per_reveal_level(cards_vault: VaultServer) -> None:
    details = {"expiry": "03/29", "cardholder_name": "Zoe Doe", "security_code": "737"}
    answer = _post(cards_vault, "payments", "/v1/tokenize", {**CARD, **details})
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    full = _post(cards_vault, "settlement", "/v1/detokenize", {"token": token}).json()
    assert full == {
        "token": token,
        "pan": PAN,
        "reveal": "full",
        "expiry": "2029-03",
        "cardholder_name": "Zoe Doe",
    }
    masked = _post(cards_vault, "ledger", "/v1/detokenize", {"token": token}).json()
    assert masked == {
        "token": token,
        "pan": "411111******1111",
        "reveal": "masked",
        "expiry": "2029-03",
        "cardholder_name": None,
    }
    only_masked = _post(cards_vault, "payments", "/v1/detokenize-masked", {"token": token})
    assert only_masked.json() == {
        "token": token,
        "masked_pan": "411111******1111",
        "expiry": "2029-03",
    }
    for answer in (full, masked, only_masked.json()):
        assert not shows_code(str(answer), "737")
    assert _gauges(cards_vault, "cofre.security_codes") == {
        "held": 1,
        "used": 0,
        "expired": 0,
        "held_now": 1,
    }

    # The key inventory lists the hour's key: registered, sensitive, never extractable.
    with cards_vault.client("officer-alice") as c:
        inventory = c.get("/v1/admin/keys").json()
    [epoch] = inventory["security_code_epochs"]
    assert epoch["label"].startswith("cofre-csc-e")
    assert epoch["destroyed_at"] is None
    [key] = [k for k in inventory["token_keys"] if k["label"] == epoch["label"]]
    assert (key["registered"], key["sensitive"], key["extractable"]) == (True, True, False)
    # The evidence bundle counts them too (3.3.1, 3.3.2); never a code.
    since = datetime.now(UTC) - timedelta(hours=1)
    with cards_vault.client("auditor") as c:
        bundle = c.post(
            "/v1/evidence",
            json={
                "from": since.isoformat(),
                "to": (datetime.now(UTC) + timedelta(seconds=5)).isoformat(),
            },
        )
    assert bundle.status_code == 200, bundle.text
    with tarfile.open(fileobj=io.BytesIO(bundle.content), mode="r:gz") as archive:
        member = archive.extractfile("security_codes/counts.json")
        assert member is not None
        counts = json.loads(member.read())["counts"]
        entries = archive.extractfile("audit/entries.jsonl")
        assert entries is not None
        payloads = [json.loads(json.loads(line)["payload"]) for line in entries.read().splitlines()]
    assert counts == {"held": 1, "used": 0, "expired": 0, "held_now": 1}
    [held] = [p for p in payloads if p["action"] == "security_code.hold"]
    assert sorted(held["details"]) == ["key", "ttl_seconds"]  # which key, never the code
    assert held["details"]["key"].startswith("cofre-csc-e")


def _gauges(vault: VaultServer, name: str) -> dict[str, int]:
    data = vault.metrics.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    return {
                        str(point.attributes["count"]): int(point.value)  # type: ignore[union-attr,index]
                        for point in metric.data.data_points
                    }
    return {}
