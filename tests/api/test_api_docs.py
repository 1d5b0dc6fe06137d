"""docs/api.md names every route the app serves, and the health listener's."""

from __future__ import annotations

from pathlib import Path

from api.app import openapi_document

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_route_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [
        f"{method.upper()} {path}"
        for path, operations in openapi_document()["paths"].items()
        for method in operations
        if path not in text
    ]
    assert missing == []
    for path in ("/livez", "COFRE_SERVER__HEALTH_PORT", "/metrics"):
        assert path in text
