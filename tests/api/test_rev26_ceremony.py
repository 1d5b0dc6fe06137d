"""Review 26: a proposal counts only within its life from its signed `created` (af723f5),
attacked. Each test fails where the claim does not hold today."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.api.conftest import VaultServer
from tests.api.test_forged_ceremony_rows import (
    ROTATIONS,
    _denials,
    bobs_proposal_written,
)


def test_a_proposal_signed_for_the_future_counts_only_within_its_life(
    vault_server: VaultServer,
) -> None:
    """`signed_since` is a lower bound only. A proposal Bob's token signed with a
    `created` three days ahead (his client's clock wrong: the vault refused it at
    submission, 300 s window, and never claimed its nonce) is a genuine signature the
    operator can write in as pending on any of the next four days; Alice's approval then
    runs a rotation Bob's token signed for no ceremony the vault ever accepted. The
    check should bound `created` on both sides (within the MFA window of now at most)."""
    three_days_ahead = int(datetime.now(UTC).timestamp()) + 3 * 86_400
    with bobs_proposal_written(vault_server, created=three_days_ahead) as (ceremony, alice):
        approved = alice.post(f"{ROTATIONS}/{ceremony}/approve")
        assert approved.status_code == 409, (
            f"a proposal signed three days ahead counted: {approved.json().get('state')}"
        )


def test_the_officers_view_of_a_replayed_ceremony_agrees_with_the_approval(
    vault_server: VaultServer,
) -> None:
    """The executor refuses a past ceremony written back as pending; the officers' view
    (`GET .../rotations/<id>`, evidence bundles' `ceremonies()`) still shows it pending
    until the expiry the database holds, and `propose` (which uses the view) refuses any
    new rotation of that kind while it is there. The view should judge the proposal as
    the approval does (expired, or invalid, once its signed life is over). The denial it
    audits also says "not signed by the officer's token", of a proposal that was."""
    two_days_ago = int(datetime.now(UTC).timestamp()) - 2 * 86_400
    with bobs_proposal_written(vault_server, created=two_days_ago) as (ceremony, alice):
        refused = alice.post(f"{ROTATIONS}/{ceremony}/approve")
        assert refused.status_code == 409
        shown = alice.get(f"{ROTATIONS}/{ceremony}").json()
        reasons = _denials(vault_server, ceremony)
        assert shown["state"] != "pending", (
            "the view shows pending a ceremony no approval can count"
        )
        assert not any(r.startswith("not signed by the officer's token") for r in reasons), reasons
