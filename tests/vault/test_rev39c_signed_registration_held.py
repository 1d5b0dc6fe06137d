"""Review rev39c: attacks on the officers' signed registrations that held.

A writer of the database without the HSM PIN, holding a genuine signed registration of
the KEK's label, tries it under the label spelt another way; and tries to assemble a
quorum from a register ceremony whose start the vault refused (the officers approved a
key the token did not hold as named): the completing approval was rolled back with the
refused start, so no document of that ceremony can reach the quorum."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.support.audit_trail import append_registration
from tests.support.officers import SigningOfficer
from tests.vault.conftest import BOB, reregister
from tests.vault.test_forged39_signed_registration import FORGED, _kek, _signed_entry
from vault.errors import CeremonyError
from vault.rotation import KeyRotation
from vault.service import VaultService


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_signed_registration_under_the_label_spelt_another_way_is_unsigned(
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
    for spelt in (label.upper(), f"{label} ", f" {label}", label.replace("-", "_")):
        append_registration(engine, spelt, {**details, **FORGED, "label": spelt}, document)
    append_registration(engine, label, {**details, **FORGED, "label": f"{label} "}, document)
    registered = service.keyring.registry.registered(fresh=True)
    assert registered[label].as_details() == genuine
    for spelt in (label.upper(), f"{label} "):
        assert registered[spelt].check == FORGED["check"]  # no Cofre label: never used


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_refused_register_start_leaves_no_quorum_to_assemble(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    service, rotation, officers = *signing_rig, signing_officers
    named = {**_kek(service), "check": "000000"}
    with pytest.raises(CeremonyError, match="does not hold"):
        reregister(rotation, officers, named)
    with engine.connect() as connection:
        approvals = connection.execute(sa.text("SELECT officer FROM key_approvals")).all()
        payloads = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        approved = [
            p
            for p in map(json.loads, payloads)
            if p["action"] == "key.rotation.approve" and p.get("document")
        ]
    assert not approvals
    assert not [p for p in approved if p["actor"] == BOB]
