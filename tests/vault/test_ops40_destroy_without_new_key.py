"""A rotation's last step destroyed the old key without asking whether the new one was
still on the token (session 40, on call: "a Cofre key missing from the token").

When the newest version of a kind is gone from the HSM (destroyed with the PIN, or a
CloudHSM cluster restored from a backup taken before the rotation made it), the vault
serves with the version before it, the one the rotation is retiring (a bound,
docs/threat-model.md). At the end of the grace period the rotation then destroyed that
key too, on schedule: the token held no key of the kind at all, and what the runbook says
to do (restore the missing key from the HSM's backup) had, meanwhile, lost the only key
serving. The destroy step now first checks the rotation's new key is on the token, and
otherwise holds the old one (the rotation stays `destroy_pending`, the worker's loop
failing with `hsm_key_not_found`) until the new key is restored.
"""

from __future__ import annotations

import pytest

from hsm.errors import HSMKeyNotFound
from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.vault.conftest import ALICE, CAROL, PAYMENTS, until_destroy_pending
from vault.ceremony import CeremonyState
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService


@pytest.mark.parametrize("kind", ["fingerprint", "kek"])
def test_the_old_key_is_kept_while_the_new_one_is_missing(
    rig: tuple[VaultService, KeyRotation], rotation_provider: HSMProvider, kind: str
) -> None:
    service, rotation = rig
    service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("4", 40)), "pan_bin6_last4"))
    ceremony = rotation.propose(ALICE, kind)
    rotation.approve(CAROL, ceremony.id)
    assert until_destroy_pending(rotation, ceremony.id)
    status = rotation.status(ALICE, ceremony.id)
    prefix = "kek" if kind == "kek" else "fp"
    old, new = f"cofre-{prefix}-v{status.old_version}", f"cofre-{prefix}-v{status.new_version}"
    rotation_provider.destroy_key(new)  # gone from the HSM while the grace ran

    for _ in range(3):
        with pytest.raises(HSMKeyNotFound, match=new):
            rotation.run_pending()
    assert rotation_provider.has_key(old), f"{old} destroyed: no {kind} key left on the token"
    assert rotation.status(ALICE, ceremony.id).state == CeremonyState.DESTROY_PENDING
    service.keyring.wipe_all()


def test_a_rotation_held_for_its_missing_key_does_not_stop_the_others(
    rig: tuple[VaultService, KeyRotation], rotation_provider: HSMProvider
) -> None:
    """atk49o: the worker's pass stopped at the first rotation that raised, so while a
    fingerprint rotation was held for its missing new key, a data rotation listed after
    it never advanced. Now every rotation has its turn; the pass still raises, so the
    worker's loop keeps failing with `hsm_key_not_found` (readiness, the runbook)."""
    service, rotation = rig
    service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("4", 41)), "pan_bin6_last4"))
    held = rotation.propose(ALICE, "fingerprint")
    rotation.approve(CAROL, held.id)
    assert until_destroy_pending(rotation, held.id)
    status = rotation.status(ALICE, held.id)
    rotation_provider.destroy_key(f"cofre-fp-v{status.new_version}")
    data = rotation.propose(ALICE, "data")
    rotation.approve(CAROL, data.id)

    for _ in range(10):
        with pytest.raises(HSMKeyNotFound):
            rotation.run_pending()
    assert rotation.status(ALICE, data.id).state == CeremonyState.COMPLETED
    assert rotation.status(ALICE, held.id).state == CeremonyState.DESTROY_PENDING
    service.keyring.wipe_all()
