"""The committed OpenAPI document is the app's, and the served one is the same."""

from __future__ import annotations

import json
from pathlib import Path

from api.app import openapi_document
from tests.api.conftest import VaultServer

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_document_matches_the_app() -> None:
    committed = json.loads(COMMITTED.read_text())
    assert committed == openapi_document(), (
        "docs/openapi.json is stale: run `.venv/bin/cofre api openapi --out docs/openapi.json`"
    )


def test_served_document_matches(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as c:
        served = c.get("/openapi.json").json()
    assert served == json.loads(COMMITTED.read_text())
