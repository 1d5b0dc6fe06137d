"""Session 47: a key ceremony whose id the audit log masks as a card number.

A ceremony's id is derived from its proposal's signature (`SignedAction.ceremony_id`),
and about one id in 280 ends in a group of twelve decimal digits, which the log's PAN
mask (`cofre.redaction.mask_pan_like`) writes masked in an entry's details and document:
the rotation's `key.register` record then held ``details.ceremony``, ``details.how`` and
the approval's signed path masked, its signatures no longer verified over them, and the
registry voided the rotation's own new key. The ceremony's next step refused with
`KeyNotRegistered` ("on the token but not as registered") and the KEK rotation stopped:
one signed ceremony in ~280, in production as in the suite's CI run of session 46
(tests/vault/test_sign40_planted_rotation.py failed there on such an id). The offline
verifier already read such records (`tests/compliance/test_dual_control_evidence.py::
test_a_ceremony_id_the_log_masks_is_still_proven`); the registry now reads them the
same way: the id the proposal's signature derives, where the record holds its masked
form, and each approval verified over the path it really signed.

Real SoftHSM2 and SQLite, officers who sign with their keys. Failed before the fix.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from cofre.redaction import mask_pan_like
from hsm.keys import KeyKind, key_label
from tests.support.officers import SigningOfficer, signed_approval, signed_proposal
from tests.vault.conftest import ALICE, BOB
from vault.approval_proof import SignedAction
from vault.ceremony import CeremonyState
from vault.rotation import KeyRotation
from vault.service import VaultService

_REGISTERED = sa.text(
    'SELECT payload FROM audit_entries WHERE payload LIKE \'{"action":"key.register",%\' '
    "ORDER BY id DESC LIMIT 1"
)


def _masked_id_proposal(officer: SigningOfficer, kind: str) -> SignedAction:
    """A signed proposal whose ceremony id the log masks (one in ~280: a bound of
    20,000 fails only if the derivation changed)."""
    for _ in range(20_000):
        proposal = signed_proposal(officer, kind)
        if mask_pan_like(proposal.ceremony_id()) != proposal.ceremony_id():
            return proposal
    raise AssertionError("no proposal with a ceremony id the log masks in 20,000")


@pytest.mark.parametrize("kind", ["kek", "data"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_rotation_whose_ceremony_id_the_log_masks_completes(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
    kind: str,
) -> None:
    service, rotation = signing_rig
    registry = service.keyring.registry
    proposal = _masked_id_proposal(signing_officers[ALICE], kind)
    view = rotation.propose(ALICE, kind, keyid=signing_officers[ALICE].keyid, proof=proposal)
    assert view.id == proposal.ceremony_id()
    approval = signed_approval(signing_officers[BOB], view.id)
    view = rotation.approve(BOB, view.id, keyid=signing_officers[BOB].keyid, proof=approval)
    for _ in range(1_000):  # bounded: fails only on a hang
        if rotation.status(ALICE, view.id).state in {
            CeremonyState.COMPLETED,
            CeremonyState.DESTROY_PENDING,
        }:
            break
        rotation.run_pending()
    done = rotation.status(ALICE, view.id)
    assert done.state in {CeremonyState.COMPLETED, CeremonyState.DESTROY_PENDING}, done
    if kind == "kek":
        with engine.connect() as connection:
            record = json.loads(connection.execute(_REGISTERED).scalar_one())
        # The log masked the id where it writes it (the premise of this test) ...
        assert record["details"]["ceremony"] == mask_pan_like(view.id) != view.id
        # ... and the registry still takes the officers' new key, and uses it.
        assert registry.current_label(KeyKind.KEK) == key_label(KeyKind.KEK, done.new_version)
        assert not registry.refused()
    service.check_ready()
