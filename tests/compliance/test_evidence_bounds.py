"""Evidence bundles from the outside review: a previous head must be one this log
signed and the verifier proves it; an export's period is capped and exports are
rate-limited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cofre.settings import EvidenceSettings
from cofre_evidence_verifier.bundle import read_bundle
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.vault_evidence import verify_unwitnessed, write_members

PAN = "4111111111111111"


@pytest.fixture(scope="module")
def vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    with running_vault(
        tmp_path_factory.mktemp("evidence-bounds"), hsm_provider, evidence=EvidenceSettings()
    ) as vault:
        with vault.client("payments") as c:
            assert c.post("/v1/tokenize", json={"pan": PAN, "format": "uuid"}).status_code == 200
        vault.runtime.sequencer.drain(force_sign=True)
        yield vault


def _export(vault: VaultServer, who: str = "auditor", **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "from": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "to": (datetime.now(UTC) + timedelta(seconds=5)).isoformat(),
        **extra,
    }
    with vault.client(who) as c:
        return c.post("/v1/evidence", json=body)


def _public_key(vault: VaultServer) -> bytes:
    # The HSM signer's public key, as `cofre evidence verify --public-key` takes it.
    return vault.runtime.sequencer.signer.public_key_pem()


def test_made_up_previous_head_is_refused(vault: VaultServer) -> None:
    response = _export(vault, previous_head={"tree_size": 99_999_999, "root_hash": "x"})
    assert response.status_code == 422, response.text
    assert "not a tree head this log signed" in response.json()["detail"]

    real = json.loads(
        read_bundle(_write(vault, _export(vault, who="officer-alice")))["manifest.json"]
    )["covering_head"]
    wrong_root = {"tree_size": real["tree_size"], "root_hash": "A" * 44}
    response = _export(vault, who="officer-alice", previous_head=wrong_root)
    assert response.status_code == 422, response.text


def _write(vault: VaultServer, response: httpx.Response) -> Path:
    assert response.status_code == 200, response.text
    path = vault.tmp / f"bundle-{len(list(vault.tmp.glob('bundle-*')))}.tar.gz"
    path.write_bytes(response.content)
    return path


def _rewrite(bundle: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    files = read_bundle(bundle)
    for name, data in change.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    return write_members(out, dict(sorted(files.items())))


def test_verifier_proves_the_previous_head(vault: VaultServer, tmp_path: Path) -> None:
    """A manifest signed with a made-up previous head (what the vault did before) fails
    verification even without the previous bundle at hand."""
    first = _write(vault, _export(vault, who="officer-bob"))
    previous = json.loads(read_bundle(first)["manifest.json"])["covering_head"]
    with vault.client("payments") as c:
        assert c.post("/v1/tokenize", json={"pan": PAN, "format": "uuid"}).status_code == 200
    vault.runtime.sequencer.drain(force_sign=True)
    second = _write(vault, _export(vault, who="officer-bob", previous_head=previous))
    key = _public_key(vault)
    report = verify_unwitnessed(second, key)
    assert report.ok, report.problems
    signer = vault.runtime.sequencer.signer
    manifest = json.loads(read_bundle(second)["manifest.json"])
    for forged in (
        {"tree_size": 99_999_999, "root_hash": "eA=="},
        {"tree_size": previous["tree_size"], "root_hash": "A" * 43 + "="},
    ):
        manifest["previous_head"] = forged
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        tampered = _rewrite(
            second,
            tmp_path / "forged.tar.gz",
            {"manifest.json": data, "manifest.sig": signer.sign(data)},
        )
        report = verify_unwitnessed(tampered, key)
        assert not report.ok
        assert any("previous_head" in p for p in report.problems), report.problems


def test_period_is_capped(vault: VaultServer) -> None:
    response = _export(vault, **{"from": "1970-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
    assert response.status_code == 422, response.text
    assert "at most 31 days" in response.json()["detail"]


def _export_budget(vault: VaultServer) -> list[tuple[str, float]]:
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT identity, tat FROM rate_state WHERE identity LIKE '%evidence-export'")
        ).all()
    return sorted((str(identity), float(tat)) for identity, tat in rows)


@pytest.mark.parametrize(
    ("period_from", "period_to"),
    [
        ("2026-11-01T00:00:00", "2026-11-02T00:00:00"),  # no time zone: ambiguous
        ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00"),
        ("2026-11-02T00:00:00Z", "2026-11-01T00:00:00Z"),  # inverted
    ],
)
def test_a_period_the_request_alone_refuses_is_a_problem_and_costs_no_export(
    vault: VaultServer, period_from: str, period_to: str
) -> None:
    # A naive time against the vault's aware clock was a TypeError (a 500), charged to
    # the exporter's rate limit before it failed.
    before = _export_budget(vault)
    for _ in range(4):
        response = _export(vault, **{"from": period_from, "to": period_to})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert _export_budget(vault) == before


def test_exports_are_rate_limited(vault: VaultServer) -> None:
    # The default bucket holds three exports per identity, refilled at 12 an hour: four
    # in a row cannot all pass (alice may have spent some earlier in this module).
    statuses = [_export(vault, who="officer-alice").status_code for _ in range(4)]
    assert statuses[-1] == 429, statuses
