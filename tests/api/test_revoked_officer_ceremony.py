"""An officer whose client certificate the CRL revokes (they left, their laptop was
stolen) keeps no say in a ceremony still pending: the CRL refuses their next request,
and an approval of a ceremony they proposed (or approved) is refused too, 409
``ceremony_invalid``, audited as a ``key.rotation.approve`` denial. Before, the second
officer's approval completed the quorum and started the rotation. Each proposal and
approval stores the client certificate it came with (migration 0020). Real mutual TLS
with a CRL, a data rotation (no key on the shared token), SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import string
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from api.pki import revoke_clients
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_crl import _crl
from tests.api.test_forged_ceremony_rows import BOB, _carol, third_officer

ROTATIONS = "/v1/admin/keys/rotations"


def _rid() -> str:
    return "rid-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))


def _audited(vault: VaultServer, rid: str, action: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        with vault.runtime.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p ORDER BY id"),
                {"p": f'%"request_id":"{rid}"%'},
            ).scalars()
            entries = [e for e in map(json.loads, rows) if e["action"] == action]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_a_revoked_proposer_s_pending_ceremony_is_refused_at_its_quorum(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    crl_path = tmp_path / "crl.pem"
    with running_vault(
        tmp_path / "vault", hsm_provider, database_url, crl=lambda p: _crl(p, crl_path)
    ) as vault:
        assert vault.crl_watcher is not None
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
        assert proposed.status_code == 201, proposed.text
        ceremony = proposed.json()["id"]
        revoke_clients(vault.pki, ["officer-alice"], crl_path)
        assert vault.crl_watcher.reload_if_changed()
        rid = _rid()
        with vault.client("officer-bob") as bob:
            approved = bob.post(f"{ROTATIONS}/{ceremony}/approve", headers={"x-request-id": rid})
            assert approved.status_code == 409, approved.text
            assert approved.json()["code"] == "ceremony_invalid"
            assert "officer-alice's certificate is revoked" in approved.json()["detail"]
            # Nothing started: the ceremony is still pending, for Bob to cancel.
            status = bob.get(f"{ROTATIONS}/{ceremony}").json()
            assert (status["state"], status["approvers"]) == ("pending", [])
            assert bob.post(f"{ROTATIONS}/{ceremony}/cancel").status_code == 200
        [denial] = _audited(vault, rid, "key.rotation.approve")
        assert denial["outcome"] == "denied"
        assert "officer-alice's certificate is revoked" in denial["details"]["reason"]


def test_a_ceremony_whose_officers_are_not_revoked_still_runs(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """The CRL revokes someone else: Alice's proposal, Bob's approval start it."""
    crl_path = tmp_path / "crl.pem"
    with running_vault(tmp_path / "vault", hsm_provider, crl=lambda p: _crl(p, crl_path)) as vault:
        assert vault.crl_watcher is not None
        revoke_clients(vault.pki, ["ledger"], crl_path)
        assert vault.crl_watcher.reload_if_changed()
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
        assert proposed.status_code == 201, proposed.text
        with vault.client("officer-bob") as bob:
            approved = bob.post(f"{ROTATIONS}/{proposed.json()['id']}/approve")
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "running"


def test_the_officers_view_counts_no_approval_while_the_proposer_is_revoked(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    """Three officers required: Bob's approval counts, then Alice (the proposer) is
    revoked. The ceremony takes no approval from then on, and the status and the list
    say so before anyone tries: no approval counts (session 29; before, the view showed
    Bob's approval counting until Carol's approval was refused)."""
    crl_path = tmp_path / "crl.pem"
    with (
        running_vault(
            tmp_path / "vault", hsm_provider, database_url, crl=lambda p: _crl(p, crl_path)
        ) as vault,
        third_officer(vault) as carol_key,
    ):
        assert vault.crl_watcher is not None
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
        assert proposed.status_code == 201, proposed.text
        ceremony = proposed.json()["id"]
        with vault.client("officer-bob") as bob:
            approved = bob.post(f"{ROTATIONS}/{ceremony}/approve")
            assert approved.status_code == 200, approved.text
            assert approved.json()["approvals_counting"] == [BOB]
            revoke_clients(vault.pki, ["officer-alice"], crl_path)
            assert vault.crl_watcher.reload_if_changed()
            status = bob.get(f"{ROTATIONS}/{ceremony}").json()
            listed = [c for c in bob.get(ROTATIONS).json() if c["id"] == ceremony]
        assert (status["state"], status["approvers"]) == ("pending", [BOB])
        assert status["approvals_counting"] == []
        assert [c["approvals_counting"] for c in listed] == [[]]
        with _carol(vault, carol_key) as carol:
            refused = carol.post(f"{ROTATIONS}/{ceremony}/approve")
        assert refused.status_code == 409, refused.text
        assert "officer-alice's certificate is revoked" in refused.json()["detail"]
