"""Session 31 (a security officer's review of dual control): a ceremony starts once.

A ceremony's id derives from its proposal's signature, and a proposal counts for its
life from the signed ``created`` (24 h by default). Within that life an operator who can
write the database took a ceremony that had already run (Alice proposed, Bob approved),
wrote it back as pending and deleted Bob's approval row; Bob, asked to approve "Alice's
data rotation", saw it pending at 0 of 1 and approved: a second rotation ran on one
officer's consent today, under Alice's proposal of yesterday (docs/threat-model.md named
this as left). The vault now refuses to start a ceremony the audit log already shows
started (`key.rotation.start` with its id, the log the database writer cannot rewrite
unseen), 409 ``ceremony_invalid``, audited as a ``key.rotation.approve`` denial. Real
mutual TLS, the officers' second factor, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_forged_ceremony_rows import ROTATIONS, _denials
from vault.storage.schema import key_approvals, key_ceremonies

VISA = "4111111111111111"


def _starts(vault: VaultServer, ceremony: str) -> int:
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
            {"p": '{"action":"key.rotation.start",%'},
        ).scalars()
        return sum(1 for e in map(json.loads, rows) if e["key_id"] == ceremony)


def _completed(vault: VaultServer, client: httpx.Client, ceremony: str) -> dict[str, object]:
    """The ceremony once its migration has run to the end (the rotation job's steps,
    as a node's worker runs them; bounded, failing only on a hang)."""
    for _ in range(100):
        vault.runtime.rotation.run_pending()
        shown = client.get(f"{ROTATIONS}/{ceremony}").json()
        if shown["state"] == "completed":
            return dict(shown)
    raise AssertionError(f"the rotation did not complete: {shown}")


def _written_back_as_pending(vault: VaultServer, ceremony: str) -> None:
    """What the operator does: the ceremony as it was before Bob approved it."""
    with vault.runtime.engine.begin() as connection:
        connection.execute(sa.delete(key_approvals).where(key_approvals.c.ceremony_id == ceremony))
        connection.execute(
            sa.update(key_ceremonies)
            .where(key_ceremonies.c.id == ceremony)
            .values(
                state="pending",
                old_version=None,
                new_version=None,
                progress_done=0,
                progress_total=0,
                completed_at=None,
            )
        )


def test_a_ceremony_that_ran_is_not_run_again_within_its_life(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path / "vault", hsm_provider, database_url) as vault:
        with vault.client() as payments:  # a card stored, under data key v1
            sealed = payments.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})
        assert sealed.status_code in {200, 201}, sealed.text
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
        assert proposed.status_code == 201, proposed.text
        ceremony = proposed.json()["id"]
        with vault.client("officer-bob") as bob:
            first = bob.post(f"{ROTATIONS}/{ceremony}/approve")
            assert (first.status_code, first.json()["state"]) == (200, "running"), first.text
            ran = _completed(vault, bob, ceremony)
            _written_back_as_pending(vault, ceremony)
            # Bob's view: Alice's data rotation, pending, nobody has approved it yet.
            shown = bob.get(f"{ROTATIONS}/{ceremony}").json()
            assert (shown["state"], shown["approvers"]) == ("pending", [])
            again = bob.post(f"{ROTATIONS}/{ceremony}/approve")
            after = bob.get(f"{ROTATIONS}/{ceremony}").json()
            if after["state"] == "pending":
                assert bob.post(f"{ROTATIONS}/{ceremony}/cancel").status_code == 200
        assert _starts(vault, ceremony) == 1, (
            f"ceremony {ceremony} started twice: the second time from data key "
            f"v{after['old_version']} (its first run moved v{ran['old_version']} to "
            f"v{ran['new_version']})"
        )
        assert (again.status_code, again.json()["code"]) == (409, "ceremony_invalid"), again.text
        assert "already started" in again.json()["detail"]
        assert _denials(vault, ceremony) == ["the ceremony already started"]


def test_a_cancelled_ceremony_written_back_as_pending_does_not_start(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    """Alice proposed and then cancelled a data rotation; within its life the operator
    wrote the row back as pending, and Bob's approval alone overrode Alice's cancel
    (rev31c's report named it, untested). The vault now also looks for the ceremony's
    `key.rotation.cancel` in the log (its id, or its signed proposal's mark) and
    refuses, 409 ``ceremony_invalid``, audited."""
    with running_vault(tmp_path / "vault", hsm_provider, database_url) as vault:
        with vault.client() as payments:
            sealed = payments.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})
        assert sealed.status_code in {200, 201}, sealed.text
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
            assert proposed.status_code == 201, proposed.text
            ceremony = proposed.json()["id"]
            cancelled = alice.post(f"{ROTATIONS}/{ceremony}/cancel")
            assert cancelled.status_code == 200, cancelled.text
        with vault.runtime.engine.begin() as connection:
            connection.execute(
                sa.update(key_ceremonies)
                .where(key_ceremonies.c.id == ceremony)
                .values(state="pending")
            )
        with vault.client("officer-bob") as bob:
            again = bob.post(f"{ROTATIONS}/{ceremony}/approve")
        assert _starts(vault, ceremony) == 0, f"cancelled ceremony {ceremony} started"
        assert (again.status_code, again.json()["code"]) == (409, "ceremony_invalid"), again.text
        assert "was cancelled" in again.json()["detail"]
        assert _denials(vault, ceremony) == ["the ceremony was cancelled"]
