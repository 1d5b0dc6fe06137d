"""Review 38: the vault never adopts, registers or uses a token key that can leave the
token.

Cofre's own keys are made sensitive and never extractable (`hsm.provider`). The key
registry, though, adopts whatever Cofre-labelled keys it finds on the token at a vault's
first start (`KeyRegistry.adopt_if_empty`, trust on first use) and registers them by
label, CKA_ID and check value only: their attributes are never looked at. A holder of the
HSM PIN who, before the first start (or before `cofre hsm init`, which then leaves the
label alone), makes ``cofre-kek-vN`` as an extractable, non-sensitive AES key gets it
adopted as the KEK: every data key is then wrapped under a key whose value they read out
once and keep, so every backup of the database opens offline, for ever, after their PIN
is changed and their access revoked (PCI DSS 3.6.1.2: keys in a secure cryptographic
device). The same holds for a planted audit signing key (heads forged off the HSM) or
fingerprint key."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pkcs11 import Attribute, KeyType, Mechanism
from sqlalchemy import Engine

from cofre.errors import CofreError
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.vault.conftest import OFFICERS, PAYMENTS, TEST_POLICY
from vault.errors import DataKeyMissing
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService


@pytest.fixture
def planted_kek(rotation_provider: HSMProvider) -> Iterator[str]:
    """A KEK label made with the PIN outside Cofre: extractable, not sensitive."""
    label = key_label(KeyKind.KEK, KeyHierarchy(rotation_provider).versions(KeyKind.KEK)[-1] + 1)

    def plant(session: Any) -> None:
        session.generate_key(
            KeyType.AES,
            256,
            label=label,
            id=b"planted",
            store=True,
            mechanism=Mechanism.AES_KEY_GEN,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.WRAP: True,
                Attribute.UNWRAP: True,
            },
        )

    rotation_provider._run(plant, retry=False)  # the PIN holder's own call
    try:
        yield label
    finally:
        rotation_provider.destroy_key(label)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_planted_extractable_kek_is_never_adopted_nor_used(
    engine: Engine, rotation_provider: HSMProvider, planted_kek: str
) -> None:
    assert rotation_provider.describe_key(planted_kek).extractable is True  # the attack is real
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    try:
        try:
            service.initialize()
        except CofreError:
            return  # refused to start on a token whose newest KEK can leave it: fine
        with engine.connect() as connection:
            used = set(connection.execute(sa.text("SELECT kek_label FROM data_keys")).scalars())
        weak = {
            label
            for label in used
            if rotation_provider.describe_key(label).extractable is not False
            or rotation_provider.describe_key(label).sensitive is not True
        }
        assert not weak, f"data keys wrapped under a KEK that can leave the token: {weak}"
        assert planted_kek not in service.keyring.registry.registered()
    finally:
        service.close()


def test_a_data_key_row_naming_an_unregistered_kek_is_never_unwrapped(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    """Review 38's last: the keyring unwrapped a data key under whatever KEK label its
    database row named. A holder of the PIN and of write access to the database makes a
    KEK of their own on the token (sensitive or not: it is never registered) and a data
    key under it, and points the active data key's row at them: the vault then seals
    every new card under a data key of the attacker's making, while readiness only
    warns about an unregistered key. A data key is now unwrapped only under a KEK the
    registry records, as every other key is used."""
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    try:
        rogue = key_label(
            KeyKind.KEK, KeyHierarchy(rotation_provider).versions(KeyKind.KEK)[-1] + 7
        )
        rotation_provider.generate_kek(rogue)
        planted = rotation_provider.generate_wrapped_key(rogue)
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE data_keys SET wrapped = :w, wrap_mechanism = :m, kek_label = :k"),
                {"w": planted.wrapped, "m": planted.algorithm, "k": rogue},
            )
        service.keyring.wipe_all()  # unwrap again, from the rows as they are now
        with pytest.raises(DataKeyMissing, match="not a registered KEK"):
            service.tokenize(PAYMENTS, TokenizeRequest(Pan("4111111111111111"), "pan_bin6_last4"))
    finally:
        service.close()
        with contextlib.suppress(CofreError):
            rotation_provider.destroy_key(rogue)
