"""Session 39: key registrations the security officers sign (the repair rev38 left open).

A writer of the database without the HSM PIN appends a `key.register` for the current
KEK's label naming another key: since session 37 the label is never used, and no
unsigned record restores it (the lead rejected "first record wins": retention appends
carried copies at the log's end). The repair is a ``register`` key ceremony: Alice
proposes "this label is the key with this CKA_ID and check value", signed by her token,
Bob approves with his; its start writes a `key.register` carrying both signed requests,
which the registry takes for the label over every unsigned record, before or after it
(`vault._signed_registration`).

The attacks on the repair itself: a copy of a signed registration naming another key or
another label, an older signed registration replayed after a newer one, one signed for
another vault, a ceremony replayed, one officer alone, and a registration naming a key
the token does not hold as one sensitive, never extractable key."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from tests.support.audit_trail import append_registration
from tests.support.officers import SigningOfficer, signed_approval, signed_registration
from tests.support.pans import card_number
from tests.support.softhsm import settled_ready
from tests.vault.conftest import ALICE, BOB, CAROL, PAYMENTS, reregister
from tests.vault.test_weak_token_keys import planted_kek  # noqa: F401 - a fixture
from vault._signed_registration import signed_document, signed_registration_time
from vault.ceremony import CeremonyState
from vault.errors import CeremonyError, CeremonyRefused, KeyNotRegistered
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService

FORGED = {"cka_id": "00", "check": "000000", "how": "init"}
_REGISTER = sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p ORDER BY id")


def _tokenizes(service: VaultService) -> bool:
    pan = Pan(card_number("411111", 3939))
    try:
        return bool(service.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4")).token)
    except KeyNotRegistered:
        return False


def _kek(service: VaultService) -> dict[str, str | None]:
    """The current KEK's registration as the token shows it."""
    label = service.keyring.registry.current_label(KeyKind.KEK)
    return service.keyring.registry.registered(fresh=True)[label].as_details()


def _signed_entry(engine: Engine, label: str) -> dict[str, object]:
    """The last `key.register` entry of `label` that carries a ceremony."""
    with engine.connect() as connection:
        payloads = connection.execute(_REGISTER, {"p": '{"action":"key.register",%'}).scalars()
        entries = [json.loads(p) for p in payloads]
    return [e for e in entries if e["details"].get("ceremony") and e["key_id"] == label][-1]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_officers_reregister_a_label_a_forged_row_stopped(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    service, rotation, officers = *signing_rig, signing_officers
    genuine = _kek(service)
    label = str(genuine["label"])
    append_registration(engine, label, {"label": label, **FORGED})
    service.keyring.registry.registered(fresh=True)
    assert not _tokenizes(service)  # fail closed, as since session 37
    done = reregister(rotation, officers, genuine)
    assert done.state == CeremonyState.COMPLETED
    service.keyring.registry.registered(fresh=True)
    assert _tokenizes(service)
    settled_ready(service.check_ready)
    # Any number of unsigned records after it change nothing either.
    append_registration(engine, label, {"label": label, **FORGED})
    append_registration(engine, label, {**genuine, "check": "111111", "how": "init"})
    assert service.keyring.registry.registered(fresh=True)[label].as_details() == genuine
    assert _tokenizes(service)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_signed_registration_copied_under_another_key_or_label_counts_for_nothing(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    service, rotation, officers = *signing_rig, signing_officers
    genuine = _kek(service)
    label = str(genuine["label"])
    reregister(rotation, officers, genuine)
    entry = _signed_entry(engine, label)
    document, details = str(entry["document"]), dict(entry["details"])  # type: ignore[call-overload]
    # The signed document under a forged key of the same label: not the officers' word.
    append_registration(engine, label, {**details, **FORGED}, document)
    assert service.keyring.registry.registered(fresh=True)[label].as_details() == genuine
    assert _tokenizes(service)
    # Under the fingerprint key's label: unsigned, so that label is now registered twice.
    fp = service.keyring.registry.current_label(KeyKind.FINGERPRINT)
    append_registration(engine, fp, {**details, "label": fp, **FORGED}, document)
    assert service.keyring.registry.registered(fresh=True)[fp].check != FORGED["check"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_an_older_signed_registration_replayed_after_a_newer_one_never_wins(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    """The writer holds two genuine signed registrations of one label: an old one (of a
    key since replaced: here a key that is not the token's) and today's. Appended in
    any order, the one proposed last is the label's."""
    service, officers = signing_rig[0], signing_officers
    genuine = _kek(service)
    label = str(genuine["label"])
    old = {**genuine, **FORGED, "how": "registered by key ceremony"}
    signed = []
    for registered, created in ((genuine, int(time.time())), (old, int(time.time()) - 3600)):
        proposal = signed_registration(officers[ALICE], registered, created=created)
        approval = signed_approval(officers[BOB], proposal.ceremony_id())
        document = signed_document(ALICE, proposal.to_json(), [(BOB, approval.to_json())])
        details = {**registered, "ceremony": proposal.ceremony_id()}
        signed.append((details, document))
    for details, document in signed:  # today's first, the old one replayed after it
        append_registration(engine, label, details, document)
    assert service.keyring.registry.registered(fresh=True)[label].check == genuine["check"]
    assert _tokenizes(service)
    at = [signed_registration_time(d, doc, service.policy, ["localhost"]) for d, doc in signed]
    assert at[0] is not None
    assert at[1] is not None
    assert at[0] > at[1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_one_officer_alone_or_another_vaults_signatures_restore_nothing(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    service, rotation, officers = *signing_rig, signing_officers
    genuine = _kek(service)
    label = str(genuine["label"])
    append_registration(engine, label, {"label": label, **FORGED})
    with pytest.raises(CeremonyRefused):  # the proposer cannot approve
        reregister(rotation, officers, genuine, approvers=(ALICE,))
    for approvals, authority in (([], "localhost"), ([BOB], "staging.example")):
        proposal = signed_registration(officers[ALICE], genuine, authority=authority)
        ceremony = proposal.ceremony_id()
        given = [
            (who, signed_approval(officers[who], ceremony, authority=authority).to_json())
            for who in approvals
        ]
        document = signed_document(ALICE, proposal.to_json(), given)
        append_registration(engine, label, {**genuine, "ceremony": ceremony}, document)
        service.keyring.registry.registered(fresh=True)
        assert not _tokenizes(service), (approvals, authority)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_signed_registration_runs_once(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    """The writer sets the completed ceremony back to pending and deletes its approval:
    another officer's approval starts nothing (the ceremony guards' one start)."""
    service, rotation, officers = *signing_rig, signing_officers
    done = reregister(rotation, officers, _kek(service))
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE key_ceremonies SET state = 'pending' WHERE id = :id"), {"id": done.id}
        )
        connection.execute(
            sa.text("DELETE FROM key_approvals WHERE ceremony_id = :id"), {"id": done.id}
        )
    approval = signed_approval(officers[CAROL], done.id)
    with pytest.raises(CeremonyRefused, match="already started"):
        rotation.approve(CAROL, done.id, keyid=officers[CAROL].keyid, proof=approval)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_registration_of_a_key_not_on_the_token_is_refused(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    service, rotation, officers = *signing_rig, signing_officers
    genuine = _kek(service)
    for named, refusal in (
        ({**genuine, "check": "000000"}, "does not hold"),
        # A version no test reaches on the session's rotation token (cofre-kek-v9 was
        # registered there once earlier modules had rotated eight times).
        ({**genuine, "label": "cofre-kek-v9999"}, "not in the key registry"),
    ):
        with pytest.raises(CeremonyError, match=refusal):
            reregister(rotation, officers, named)
        for ceremony in rotation.ceremonies():
            if ceremony.state == CeremonyState.PENDING:
                rotation.cancel(ALICE, ceremony.id)
    with engine.connect() as connection:
        payloads = connection.execute(_REGISTER, {"p": '{"action":"key.register",%'}).scalars()
        assert not [p for p in payloads if '"ceremony"' in p]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_registration_of_an_extractable_key_is_refused(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    signing_officers: dict[str, SigningOfficer],
    planted_kek: str,  # noqa: F811 - the fixture imported above
) -> None:
    """The PIN holder plants an extractable KEK and writes its registration (audit 36),
    then asks the officers to register it as signed: refused at the start."""
    rotation, officers = signing_rig[1], signing_officers
    planted = next(k for k in rotation_provider.list_keys() if k.label == planted_kek)
    named = {"label": planted_kek, "cka_id": planted.key_id, "check": planted.key_check}
    append_registration(engine, planted_kek, {**named, "how": "init"})
    with pytest.raises(CeremonyError, match="sensitive and never extractable"):
        reregister(rotation, officers, named)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_new_version_is_never_registered_by_a_register_ceremony(
    signing_rig: tuple[VaultService, KeyRotation],
    rotation_provider: HSMProvider,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    """A KEK made with the PIN under the next label, sensitive and never extractable, as
    a register ceremony would take it: a new version comes from a rotation only (which
    moves the data keys onto it), so the start refuses a label the registry never
    recorded."""
    service, rotation, officers = *signing_rig, signing_officers
    hierarchy = KeyHierarchy(rotation_provider)
    version = hierarchy.versions(KeyKind.KEK)[-1] + 1
    hierarchy.create(KeyKind.KEK, version)
    try:
        label = key_label(KeyKind.KEK, version)
        made = next(k for k in rotation_provider.list_keys() if k.label == label)
        named = {"label": label, "cka_id": made.key_id, "check": made.key_check}
        with pytest.raises(CeremonyError, match="not in the key registry"):
            reregister(rotation, officers, named)
        assert service.keyring.registry.current_label(KeyKind.KEK) != label
    finally:
        rotation_provider.destroy_key(key_label(KeyKind.KEK, version))
