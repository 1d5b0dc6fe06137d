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

import audit.log
from cofre.redaction import mask_pan_like
from hsm.keys import KeyHierarchy, KeyKind, key_label, parse_key_label
from hsm.provider import HSMProvider
from tests.support.audit_trail import append_registration
from tests.support.officers import SigningOfficer, signed_approval, signed_proposal
from tests.support.pans import card_number
from tests.vault.conftest import ALICE, BOB, PAYMENTS
from vault._retired_keys import retired_through
from vault.approval_proof import SignedAction
from vault.ceremony import CeremonyState
from vault.errors import KeyNotRegistered
from vault.key_registry import token_identities
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService

CARD = Pan(card_number("453201", 47047))
_REGISTERED = sa.text(
    'SELECT payload FROM audit_entries WHERE payload LIKE \'{"action":"key.register",%\' '
    "ORDER BY id DESC LIMIT 1"
)


def version_of(label: str) -> int:
    parsed = parse_key_label(label)
    assert parsed is not None
    return parsed[1]


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
    else:
        # The completion counts: its ceremony's first start is proven by the officers'
        # signatures read over the paths they signed, so the old data key is retired.
        with engine.connect() as connection:
            assert retired_through(connection, registry.signed_time) == done.old_version
    service.check_ready()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_its_signatures_copied_under_the_unmasked_id_onto_a_planted_kek_fail_closed(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    signing_officers: dict[str, SigningOfficer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 47: the registry takes a masked ceremony id and the id itself as one
    ceremony. A database writer copied the genuine record (its id masked by the log)
    onto a planted next KEK under the id spelt out, and the one-ceremony-one-version
    rule, which grouped the records by the id as written, saw two ceremonies: the
    planted key was registered. Now both labels are unusable, as for any copy
    (tests/vault/test_sign40_planted_rotation.py)."""
    service, rotation = signing_rig
    registry = service.keyring.registry
    proposal = _masked_id_proposal(signing_officers[ALICE], "kek")
    view = rotation.propose(ALICE, "kek", keyid=signing_officers[ALICE].keyid, proof=proposal)
    approval = signed_approval(signing_officers[BOB], view.id)
    rotation.approve(BOB, view.id, keyid=signing_officers[BOB].keyid, proof=approval)
    with engine.connect() as connection:
        record = json.loads(connection.execute(_REGISTERED).scalar_one())
    planted = key_label(KeyKind.KEK, registry.versions(KeyKind.KEK)[-1] + 1)
    KeyHierarchy(rotation_provider).create(KeyKind.KEK, version_of(planted))
    try:
        identity = token_identities(rotation_provider.list_keys())[planted]
        assert identity is not None
        copied = {
            **record["details"],
            **identity.as_details(),
            "ceremony": view.id,
            "how": f"created by key ceremony {view.id}",
        }
        # The writer inserts the row's bytes itself: the id spelt out, where the vault's
        # own append would have masked it again.
        with monkeypatch.context() as unmasked:
            unmasked.setattr(audit.log, "_masked", lambda text: text)
            append_registration(engine, planted, copied, str(record["document"]))
        with engine.connect() as connection:
            assert view.id in connection.execute(_REGISTERED).scalar_one()
        registry.registered(fresh=True)
        with pytest.raises(KeyNotRegistered, match="one ceremony's signatures"):
            sealed = service.tokenize(PAYMENTS, TokenizeRequest(CARD, "pan_bin6_last4"))
            pytest.fail(f"tokenized as {sealed.token} under {registry.current_label(KeyKind.KEK)}")
    finally:
        rotation_provider.destroy_key(planted)
