"""Session 32 (an on-call engineer's review): the status view of a replayed ceremony.

Session 31 made the vault refuse the approval of a ceremony the audit log shows already
started or cancelled (409 ``ceremony_invalid``), but the officers' view still listed it
as pending, 0 of 1, waiting for the approval that would be refused: an officer learnt of
the replay only by trying. The view now says such a ceremony takes no approval, and
why, from the same check the approval runs (`vault._ceremony_guards.replay_refusal`), so
the two cannot disagree: the reason shown is the reason the denial records. Real mutual
TLS, the officers' second factor, SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_forged_ceremony_rows import ROTATIONS, _denials
from tests.api.test_sec31_ceremony_replay import VISA, _completed, _written_back_as_pending
from vault.storage.schema import key_ceremonies


def _seal_a_card(vault: VaultServer) -> None:
    with vault.client() as payments:
        sealed = payments.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})
    assert sealed.status_code in {200, 201}, sealed.text


def _listed(client: httpx.Client, ceremony: str) -> dict[str, object]:
    [shown] = [c for c in client.get(ROTATIONS).json() if c["id"] == ceremony]
    return dict(shown)


def _shown_then_refused(vault: VaultServer, bob: httpx.Client, ceremony: str) -> None:
    """The view says the ceremony takes no approval, in the single view and the list
    alike, counts nobody, and names the reason Bob's approval is then denied with."""
    shown = bob.get(f"{ROTATIONS}/{ceremony}").json()
    assert _listed(bob, ceremony) == shown
    assert shown["state"] == "pending"  # the row's own state, as the database holds it
    assert shown["approvals_counting"] == []
    reason = shown.get("approval_refused")
    assert reason, f"the view shows ceremony {ceremony} approvable: {shown}"
    refused = bob.post(f"{ROTATIONS}/{ceremony}/approve")
    assert (refused.status_code, refused.json()["code"]) == (409, "ceremony_invalid")
    assert _denials(vault, ceremony) == [reason]


def test_a_ceremony_that_ran_shows_as_not_approvable(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path / "vault", hsm_provider, database_url) as vault:
        _seal_a_card(vault)
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
        assert proposed.status_code == 201, proposed.text
        ceremony = proposed.json()["id"]
        with vault.client("officer-bob") as bob:
            first = bob.post(f"{ROTATIONS}/{ceremony}/approve")
            assert first.status_code == 200, first.text
            _completed(vault, bob, ceremony)
            _written_back_as_pending(vault, ceremony)
            _shown_then_refused(vault, bob, ceremony)
        assert _denials(vault, ceremony) == ["the ceremony already started"]


def test_a_cancelled_ceremony_written_back_shows_as_not_approvable(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path / "vault", hsm_provider, database_url) as vault:
        _seal_a_card(vault)
        with vault.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "data"})
            assert proposed.status_code == 201, proposed.text
            ceremony = proposed.json()["id"]
            assert alice.post(f"{ROTATIONS}/{ceremony}/cancel").status_code == 200
        with vault.runtime.engine.begin() as connection:
            connection.execute(
                sa.update(key_ceremonies)
                .where(key_ceremonies.c.id == ceremony)
                .values(state="pending")
            )
        with vault.client("officer-bob") as bob:
            _shown_then_refused(vault, bob, ceremony)
        assert _denials(vault, ceremony) == ["the ceremony was cancelled"]


def test_a_fresh_proposal_shows_as_approvable(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    """The check names nothing for a ceremony that never ran: no false alarm."""
    with (
        running_vault(tmp_path / "vault", hsm_provider, database_url) as vault,
        vault.client("officer-alice") as alice,
    ):
        proposed = alice.post(ROTATIONS, json={"kind": "kek"})
        assert proposed.status_code == 201, proposed.text
        shown = alice.get(f"{ROTATIONS}/{proposed.json()['id']}").json()
    assert shown["state"] == "pending"
    assert shown.get("approval_refused", "absent") is None
