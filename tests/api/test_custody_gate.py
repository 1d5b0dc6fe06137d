"""PCI DSS 4.0.1 req. 3.7.8: key custodians acknowledge their responsibilities before
they act as custodians. The vault recorded signed acknowledgements, yet an officer who
never made one could propose and approve a key rotation, and it ran (review of session
34). A proposal or an approval by an officer with no acknowledgement of the custody
statement in force is now refused (`409 custody_not_acknowledged`) and audited as
denied; once they acknowledge, the same ceremony goes ahead. Real mutual TLS, the
officers' second factor, a private token (the rotation runs), SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.custody import acknowledge_custody
from tests.support.officers import software_officers

ROTATIONS = "/v1/admin/keys/rotations"
ALICE, BOB = (f"spiffe://cofre/officer-{n}" for n in ("alice", "bob"))


def _denied(vault: VaultServer, action: str) -> list[dict[str, object]]:
    with vault.runtime.engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        entries = [json.loads(p) for p in payloads]
    return [e for e in entries if e["action"] == action and e["outcome"] == "denied"]


def test_an_officer_who_never_acknowledged_custody_cannot_propose_or_approve(
    tmp_path: Path, rotation_provider: HSMProvider, database_url: str
) -> None:
    """Alice and Bob never signed the custody statement. Alice's proposal of a kek
    rotation is refused; once she acknowledges it is accepted, and Bob's approval is
    refused until he acknowledges too; then the rotation runs."""
    officers = software_officers()
    with (
        running_vault(tmp_path / "v", rotation_provider, database_url, custodians=()) as vault,
        vault.client("officer-alice") as alice,
        vault.client("officer-bob") as bob,
    ):
        refused = alice.post(ROTATIONS, json={"kind": "kek"})
        assert refused.status_code == 409, f"proposed without custody: {refused.text}"
        problem = refused.json()
        assert problem["code"] == "custody_not_acknowledged", problem
        assert "acknowledge-custody" in problem["detail"], problem
        assert refused.headers["content-type"].startswith("application/problem+json")
        [denial] = _denied(vault, "key.rotation.propose")
        assert denial["actor"] == ALICE
        assert "custody" in str(denial["details"]), denial

        acknowledge_custody(alice, officers["officer-alice"])
        proposed = alice.post(ROTATIONS, json={"kind": "kek"})
        assert proposed.status_code == 201, proposed.text
        ceremony = proposed.json()["id"]

        approved = bob.post(f"{ROTATIONS}/{ceremony}/approve")
        assert approved.status_code == 409, f"approved without custody: {approved.text}"
        assert approved.json()["code"] == "custody_not_acknowledged"
        assert bob.get(f"{ROTATIONS}/{ceremony}").json()["state"] == "pending"
        [denial] = _denied(vault, "key.rotation.approve")
        assert (denial["actor"], denial["key_id"]) == (BOB, ceremony)

        acknowledge_custody(bob, officers["officer-bob"])
        approved = bob.post(f"{ROTATIONS}/{ceremony}/approve")
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] in {"running", "destroy_pending", "completed"}
