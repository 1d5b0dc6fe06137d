"""Review 38: a ceremony whose transaction fails leaves no key of its own on the token.

A KEK (or fingerprint, or audit) approval creates the new key on the token and then,
in the same database transaction, registers it, counts the records and writes its audit
entries. The token is not transactional: when any of those fails (the audit write, the
database at commit), the transaction rolls back and the key stays on the token,
unregistered. From then on every node's readiness fails with ``hsm_key_unregistered``
(the load balancer takes the whole vault out), and every later approval of that kind is
refused ("already on the token") until someone with the PIN destroys the key by hand."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from audit.log import AuditLog
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider
from tests.support.softhsm import settled_ready
from tests.vault.conftest import ALICE, BOB
from vault.ceremony import CeremonyState
from vault.rotation import KeyRotation
from vault.service import VaultService


class _Outage(Exception):
    pass


@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_kek_approval_whose_audit_write_fails_leaves_no_stray_key(
    rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, rotation = rig
    before = KeyHierarchy(rotation_provider).versions(KeyKind.KEK)
    ceremony = rotation.propose(ALICE, "kek")
    real_append = AuditLog.append

    def append(self: AuditLog, connection: Any, event: Any, **options: Any) -> Any:
        if event.action == "key.rotation.start":
            raise _Outage("the audit store failed")
        return real_append(self, connection, event, **options)

    monkeypatch.setattr(AuditLog, "append", append)
    with pytest.raises(_Outage):
        rotation.approve(BOB, ceremony.id)
    monkeypatch.setattr(AuditLog, "append", real_append)
    try:
        assert rotation.status(ALICE, ceremony.id).state == CeremonyState.PENDING
        assert KeyHierarchy(rotation_provider).versions(KeyKind.KEK) == before, (
            "the failed approval left its new KEK on the token, unregistered"
        )
        settled_ready(service.check_ready)  # no stray key: readiness holds
        assert rotation.approve(BOB, ceremony.id).state == CeremonyState.RUNNING
    finally:
        # Leave the session's rotation token as the other tests expect it.
        registered = service.keyring.registry.registered(fresh=True)
        for version in KeyHierarchy(rotation_provider).versions(KeyKind.KEK):
            label = f"cofre-kek-v{version}"
            if version not in before and label not in registered:
                rotation_provider.destroy_key(label)
