"""Session 38 (hsm38b): readiness proves the current audit key pair.

The holder of the crypto-user PIN replaces only the private half of the current audit
key (same label, same ``CKA_ID``, our public half kept). The key registry's listing sees
one pair with the recorded ID and public point, so until hsm38b ``/readyz`` stayed
green and only the next head's signing failed. Now the readiness check has the current
pair's private half sign a random digest, verified under the recorded public point (at
most once a minute per key object; `hsm.provider.HSMProvider.prove_pair_for_check`), and
fails with ``hsm_key_unregistered`` naming the label. Real SoftHSM2 throughout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from cofre.errors import CofreError
from hsm.keys import KeyKind
from hsm.provider import HSMProvider
from tests.support.softhsm import settled_ready
from tests.vault.conftest import officers_vault
from tests.vault.test_cka38_substitute_keys import (
    _substitute_private_half,
    registered_next,  # noqa: F401  (a fixture)
)
from vault.service import VaultService

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def vault(engine: Engine, rotation_provider: HSMProvider) -> Iterator[VaultService]:
    yield from officers_vault(engine, rotation_provider)


def test_readiness_names_a_substitute_private_half_of_the_audit_key(
    vault: VaultService,
    rotation_provider: HSMProvider,
    registered_next: Any,  # noqa: F811
) -> None:
    label, key_id = registered_next(KeyKind.AUDIT)
    assert settled_ready(vault.check_ready)["key_registry"] == "ok"
    _substitute_private_half(rotation_provider, label, key_id)
    # The registry's listing cannot tell: one pair, the recorded ID and public point.
    assert label in vault.keyring.registry.in_force()
    with pytest.raises(CofreError) as refused:
        vault.check_ready()
    assert refused.value.code == "hsm_key_unregistered", refused.value
    assert label in str(refused.value)


def test_readiness_proves_the_pair_once_per_key_object(
    vault: VaultService,
    rotation_provider: HSMProvider,
    registered_next: Any,  # noqa: F811
) -> None:
    """Readiness runs often: the proof (one signature) is not repeated for the same key
    object within its interval."""
    registered_next(KeyKind.AUDIT)
    signed: list[bytes] = []
    original = rotation_provider._prove_signs

    def counting(private: Any, public: Any, label: str) -> None:
        signed.append(label.encode())
        original(private, public, label)

    rotation_provider._prove_signs = counting  # type: ignore[method-assign]
    for _ in range(5):
        assert settled_ready(vault.check_ready)["key_registry"] == "ok"
    assert len(signed) == 1, signed
