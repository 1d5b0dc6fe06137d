"""Review 38: a key the registry does not hold is never used, whatever else shares its
label.

`KeyRegistry.versions` keeps a version when the token's identity of its label equals the
registry's record: ``identity == registry.get(label)``. `token_identities` gives ``None``
for a label whose objects do not make one key, and the registry gives ``None`` for a
label it never recorded: ``None == None``. So a holder of the HSM PIN, alone (no database
access, the registry full), who makes ``cofre-fp-v<N+1>`` as an extractable HMAC key and
any key pair under the same label, has it taken as the newest registered fingerprint key
by every node within a second: each new card is fingerprinted under a key whose value
they read out, so a copy of the database gives up its PANs offline (a fingerprint of a
card whose token shows its BIN and last four is a search of 10^6 HMACs), long after
their PIN is changed. The same plant under ``cofre-kek-v<N+1>`` wraps the next data key
under a KEK they hold."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from sqlalchemy import Engine

from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from tests.vault.conftest import PAYMENTS, officers_vault
from vault.pan import Pan, luhn_check_digit
from vault.service import TokenizeRequest, VaultService


@pytest.fixture
def vault(engine: Engine, rotation_provider: HSMProvider) -> Iterator[VaultService]:
    yield from officers_vault(
        engine, rotation_provider
    )  # the registry holds every key on the token


@pytest.fixture
def planted_fp(rotation_provider: HSMProvider, vault: VaultService) -> Iterator[tuple[str, int]]:
    """The next fingerprint label, made with the PIN outside any ceremony: a key pair
    and an extractable HMAC key under it."""
    version = KeyHierarchy(rotation_provider).versions(KeyKind.FINGERPRINT)[-1] + 1
    label = key_label(KeyKind.FINGERPRINT, version)
    rotation_provider.generate_signing_key(label)  # any key pair: it only shares the label

    def plant(session: Any) -> None:
        session.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            label=label,
            id=b"planted",
            store=True,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
            },
        )

    rotation_provider._run(plant, retry=False)  # the PIN holder's own call
    try:
        yield label, version
    finally:
        rotation_provider.destroy_key(label)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_an_unregistered_fingerprint_key_sharing_its_label_with_a_pair_is_never_used(
    vault: VaultService,
    engine: Engine,
    rotation_provider: HSMProvider,
    planted_fp: tuple[str, int],
) -> None:
    label, version = planted_fp
    assert label not in vault.keyring.registry.registered(fresh=True)
    vault._fp_read = 0.0  # a second later: every node lists the token again
    body = "411111" + "123456789"
    pan = Pan(body + luhn_check_digit(body))
    record = vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT fp_version, fingerprint FROM tokens WHERE token = :t"),
            {"t": record.token},
        ).one()
    # What the PIN holder computes offline with the value they read out of the token.
    # Read by the PIN holder's own call: the provider refuses a key that can leave the
    # token wherever it finds one by label (session 37).
    stolen = rotation_provider._run(
        lambda session: bytes(
            session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)[Attribute.VALUE]
        )
    )
    offline = hmac.new(stolen, pan.reveal().encode(), hashlib.sha256).digest()
    assert bytes(row.fingerprint) != offline, "a card fingerprinted under the planted key"
    assert row.fp_version != version
