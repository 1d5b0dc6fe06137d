"""Review rev38 of 6fbdbfd (a Cofre label registered as two different keys is never
used): can a writer of the database alone, without the HSM PIN, now take the vault down
with one forged `key.register` row, where it could not before?

No new power: a registration the writer appends for the current KEK's label, naming
another key, made the vault refuse (503 `hsm_key_unregistered`) before 6fbdbfd too: the
label's last record won, the token's key no longer matched it, and the newest
registered version on the token but not as recorded is refused (session 37's planted
twin), never fallen back from. The log is append-only (a row cannot go before the
genuine one), so "registered twice" is what the writer could already make "registered
as another key". Either way it is a denial of service the database already allows (it
is trusted for availability, docs/threat-model.md), and both fail closed, named by
readiness, and the forged entry is in the signed log. Held on both versions.

What is new is that it lasts: before 6fbdbfd the genuine record appended again (the
label's last) restored the kind; now no unsigned record does. Session 39's repair: a
``register`` key ceremony, the officers' signed record of the label's key, which the
registry takes over every unsigned record of the label (`vault._signed_registration`;
tests/vault/test_forged39_signed_registration.py holds the attacks on it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.keys import KeyKind
from hsm.provider import HSMProvider
from tests.support.audit_trail import append_registration
from tests.support.officers import SigningOfficer
from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS, officers_vault, reregister
from vault.errors import KeyNotRegistered
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService


@pytest.fixture
def vault(engine: Engine, rotation_provider: HSMProvider) -> Iterator[VaultService]:
    yield from officers_vault(engine, rotation_provider)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_forged_registration_written_without_the_pin_fails_closed(
    vault: VaultService, engine: Engine
) -> None:
    label = vault.keyring.registry.current_label(KeyKind.KEK)
    forged = {"label": label, "cka_id": "00", "check": "000000", "how": "init"}
    append_registration(engine, label, forged)
    vault.keyring.registry.registered(fresh=True)
    pan = Pan(card_number("411111", 3838))
    with pytest.raises(KeyNotRegistered) as refused:
        record = vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
        pytest.fail(f"tokenized as {record.token}")
    assert refused.value.code == "hsm_key_unregistered"
    with pytest.raises(KeyNotRegistered, match=label):
        vault.check_ready()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_the_officers_signed_registration_restores_the_kind(
    signing_rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    signing_officers: dict[str, SigningOfficer],
) -> None:
    """The strict xfail rev38 left (the genuine record written again restores the
    kind), in the repair's shape: written again unsigned it still does not (retention's
    carried copies would otherwise decide), signed by two officers it does."""
    vault, rotation = signing_rig
    label = vault.keyring.registry.current_label(KeyKind.KEK)
    genuine = vault.keyring.registry.registered(fresh=True)[label].as_details()
    forged = {"label": label, "cka_id": "00", "check": "000000"}
    for details in (forged, genuine):  # the writer's row, then the operator's unsigned one
        append_registration(engine, label, {**details, "how": "init"})
    vault.keyring.registry.registered(fresh=True)
    pan = Pan(card_number("411111", 3838))
    with pytest.raises(KeyNotRegistered):
        vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
    reregister(rotation, signing_officers, genuine)  # the officers' repair
    vault.keyring.registry.registered(fresh=True)
    assert vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4")).token
