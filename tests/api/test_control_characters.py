"""A vault on PostgreSQL (review finding Medium 5, session 8): a NUL character, which
PostgreSQL text refuses, in every string field a caller controls. Expected: 4xx
problem+json with a stable code, never 500/503."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault

NUL = "a\u0000b"
CARD = {"pan": "4111111111111111", "format": "pan_bin6_last4"}


@pytest.fixture
def pg_vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider, pg_database: str
) -> Iterator[VaultServer]:
    with running_vault(tmp_path_factory.mktemp("control-pg"), hsm_provider, pg_database) as vault:
        yield vault


CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "metadata key": ("payments", "/v1/tokenize", {**CARD, "metadata": {NUL: "v"}}),
    "idempotency key": ("payments", "/v1/tokenize", {**CARD, "idempotency_key": NUL}),
    "format": ("payments", "/v1/tokenize", {"pan": CARD["pan"], "format": NUL}),
    "detokenize token": ("ledger", "/v1/detokenize", {"token": NUL}),
    "masked token": ("payments", "/v1/detokenize-masked", {"token": NUL}),
    "lookup format": ("payments", "/v1/lookup", {"pan": CARD["pan"], "format": NUL}),
    "capture origin": (
        "payments",
        "/v1/capture-sessions",
        {"origin": "https://a" + NUL + ".example", "formats": ["pan_bin6_last4"]},
    ),
}


def test_nul_in_a_string_is_a_4xx(pg_vault: VaultServer) -> None:
    # One server for all the cases (pg_database is function-scoped).
    answers = {}
    for case, (identity, path, body) in CASES.items():
        with pg_vault.client(identity) as client:
            response = client.post(path, json=body)
        answers[case] = (response.status_code, response.json().get("code"))
    with pg_vault.client("payments") as client:
        response = client.get("/v1/tokens/a%00b")
    answers["token path"] = (response.status_code, response.json().get("code"))
    bad = {case: answer for case, answer in answers.items() if not 400 <= answer[0] < 500}
    assert not bad, sorted(bad.items())


@pytest.fixture
def sqlite_vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    with running_vault(tmp_path_factory.mktemp("control-sqlite"), hsm_provider) as vault:
        yield vault


def test_nul_in_a_string_is_a_4xx_on_sqlite_too(sqlite_vault: VaultServer) -> None:
    test_nul_in_a_string_is_a_4xx(sqlite_vault)
