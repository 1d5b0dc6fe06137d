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


def test_served_document_is_off_in_production(vault_server: VaultServer) -> None:
    """`cofre serve` does not serve the schema (tests/api/test_transport.py checks that
    `cofre dev`'s setting serves exactly the committed document)."""
    with vault_server.client("payments") as c:
        assert c.get("/openapi.json").status_code == 404
