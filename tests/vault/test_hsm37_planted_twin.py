"""Session 37: a second key planted under the *current* registered label makes the vault
refuse, never fall back to the version before it.

A holder of the crypto-user PIN makes a second secret key under ``cofre-kek-vN`` or
``cofre-fp-vN``, the newest registered version (one a key ceremony made and recorded).
The label no longer names one key, so `token_identities` gives it no identity and the
registry left it out of `versions`: the *previous* registered version became current
again, silently. That previous version is the one a rotation is moving away from (kept
only for its grace, or retired because it was suspected): new data keys were wrapped
under the KEK being retired and new cards fingerprinted under the fingerprint key being
retired, while `/readyz` failed only on the nodes a balancer probes. A label the
registry records that is on the token but not as recorded is now refused (503
``hsm_key_unregistered``); a registered label absent from the token (destroyed, or not yet
on the HSM a call reached, docs/cloudhsm.md "Key availability") is still skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS, officers_vault, plant_secret_key, unsigned_ceremonies
from vault.errors import KeyNotRegistered
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService


@pytest.fixture
def vault(engine: Engine, rotation_provider: HSMProvider) -> Iterator[VaultService]:
    yield from officers_vault(engine, rotation_provider)


def _register_next(
    vault: VaultService, engine: Engine, provider: HSMProvider, kind: KeyKind
) -> tuple[str, str]:
    """Make and register the next version of `kind` as a ceremony would; return the
    label before it (current until now) and the new one."""
    versions = KeyHierarchy(provider).versions(kind)
    before = vault.keyring.registry.current_label(kind)
    label = key_label(kind, versions[-1] + 1)
    KeyHierarchy(provider).create(kind, versions[-1] + 1)
    unsigned_ceremonies(vault)
    with engine.begin() as connection:
        vault.keyring.registry.register(connection, label, actor="test", how="session 37 test")
    assert vault.keyring.registry.current_label(kind) == label
    return before, label


def _plant_twin(provider: HSMProvider, kind: KeyKind, label: str) -> None:
    """A second secret key under `label`, sensitive and never extractable like ours: it
    takes no readable key, only a second object, to make the label ambiguous."""
    plant_secret_key(provider, kind, label, b"planted-twin")


@pytest.fixture(params=[KeyKind.KEK, KeyKind.FINGERPRINT])
def twin(
    request: pytest.FixtureRequest,
    vault: VaultService,
    engine: Engine,
    rotation_provider: HSMProvider,
) -> Iterator[tuple[KeyKind, str, str]]:
    kind: KeyKind = request.param
    before, label = _register_next(vault, engine, rotation_provider, kind)
    try:
        _plant_twin(rotation_provider, kind, label)
        vault.keyring.registry.registered(fresh=True)
        yield kind, before, label
    finally:
        rotation_provider.destroy_key(label)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_twin_under_the_current_label_is_refused_not_fallen_back_from(
    vault: VaultService, twin: tuple[KeyKind, str, str]
) -> None:
    kind, before, label = twin
    registry = vault.keyring.registry
    with pytest.raises(KeyNotRegistered, match=label):
        chosen = registry.current_label(kind)
        pytest.fail(f"{label} is ambiguous on the token, yet {chosen} was taken as current")
    assert before != label


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_tokenize_under_a_twinned_fingerprint_label_is_refused(
    vault: VaultService, engine: Engine, rotation_provider: HSMProvider
) -> None:
    _before, label = _register_next(vault, engine, rotation_provider, KeyKind.FINGERPRINT)
    try:
        _plant_twin(rotation_provider, KeyKind.FINGERPRINT, label)
        vault._fp_read = 0.0  # a second later: every node lists the token again
        pan = Pan(card_number("411111", 3737))
        with pytest.raises(KeyNotRegistered) as refused:
            record = vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
            pytest.fail(f"tokenized as {record.token} under the fingerprint key before {label}")
        assert refused.value.code == "hsm_key_unregistered"
    finally:
        rotation_provider.destroy_key(label)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_registered_version_absent_from_the_token_is_still_skipped(
    vault: VaultService, engine: Engine, rotation_provider: HSMProvider
) -> None:
    """Not a refusal: a destroyed version, or one the HSM a call reached does not hold
    yet (CloudHSM key synchronisation), leaves the one before it current, as before."""
    before, label = _register_next(vault, engine, rotation_provider, KeyKind.KEK)
    rotation_provider.destroy_key(label)
    assert vault.keyring.registry.current_label(KeyKind.KEK) == before


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_a_label_registered_again_as_another_key_is_never_used(
    vault: VaultService, engine: Engine, rotation_provider: HSMProvider
) -> None:
    """The PIN and the log's writer together (review reg37): the current fingerprint
    key destroyed, another made under its label and registered by an entry they write.
    The label's last record won, so the vault used the new key at once and only the
    evidence's check 6d told. A label recorded as two keys is now never used: the
    vault refuses (503 `hsm_key_unregistered`) rather than take a key no ceremony made."""
    _before, label = _register_next(vault, engine, rotation_provider, KeyKind.FINGERPRINT)
    try:
        rotation_provider.destroy_key(label)
        version = int(label.rsplit("-v", 1)[1])
        KeyHierarchy(rotation_provider).create(KeyKind.FINGERPRINT, version)
        with engine.begin() as connection:  # the operator's own entry, as `register` writes
            vault.keyring.registry.register(connection, label, actor="operator", how="init")
        vault._fp_read = 0.0  # a second later: every node lists the token again
        pan = Pan(card_number("411111", 3838))
        with pytest.raises(KeyNotRegistered) as refused:
            record = vault.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
            pytest.fail(f"tokenized as {record.token} under a key no ceremony made")
        assert refused.value.code == "hsm_key_unregistered"
        with pytest.raises(KeyNotRegistered, match=label):
            vault.check_ready()
        assert label not in vault.keyring.registry.in_force()
    finally:
        rotation_provider.destroy_key(label)
