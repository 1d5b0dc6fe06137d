"""Reading the audit log through the vault (`VaultService.audit_head`, proofs): the
API's only way in. Every read is authorised and recorded; a missing entry or a size
outside the log is `AuditRecordNotFound`, and what comes back verifies."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from audit.sequencer import Sequencer
from audit.store import AuditStore
from hsm.provider import HSMProvider
from policies.errors import PolicyDenied
from tests.vault.conftest import OFFICER, PAYMENTS
from vault.errors import AuditRecordNotFound
from vault.service import VaultService
from vault.signing import HSMTreeHeadSigner


def _sequence(engine: Engine, provider: HSMProvider) -> None:
    signer = HSMTreeHeadSigner(provider, "cofre-audit-v1")
    sequencer = Sequencer(engine, signer, sign_every_entries=1, sign_every_seconds=3600)
    while sequencer.run_once():
        pass
    sequencer.drain()


def test_audit_reads_through_the_vault(
    service: VaultService, engine: Engine, hsm_provider: HSMProvider
) -> None:
    assert service.audit_head(OFFICER) is None
    with pytest.raises(AuditRecordNotFound):
        service.audit_inclusion_proof(OFFICER, 0)
    _sequence(engine, hsm_provider)

    head = service.audit_head(OFFICER)
    assert head is not None
    found = service.audit_inclusion_proof(OFFICER, 0, head.tree_size)
    assert found.tree_size == head.tree_size
    assert found.leaf_hash == leaf_hash(found.entry.encode())
    verify_inclusion(found.leaf_hash, 0, head.tree_size, found.proof, head.root_hash)
    consistency = service.audit_consistency_proof(OFFICER, 1, head.tree_size)
    first = AuditStore(engine).root_at(1)
    verify_consistency(1, head.tree_size, consistency.proof, first, head.root_hash)

    with pytest.raises(AuditRecordNotFound):
        service.audit_inclusion_proof(OFFICER, head.tree_size + 5)
    with pytest.raises(AuditRecordNotFound):
        service.audit_consistency_proof(OFFICER, 1, head.tree_size + 5)


def test_every_audit_read_is_authorised_and_recorded(
    service: VaultService, engine: Engine, hsm_provider: HSMProvider
) -> None:
    with pytest.raises(PolicyDenied):
        service.audit_head(PAYMENTS)
    with pytest.raises(PolicyDenied):
        service.audit_inclusion_proof(PAYMENTS, 0)
    with pytest.raises(PolicyDenied):
        service.audit_consistency_proof(PAYMENTS, 1)
    service.audit_head(OFFICER)
    _sequence(engine, hsm_provider)
    entries = [entry for _, entry in AuditStore(engine).iter_entries()]
    reads = [e for e in entries if '"audit_read"' in e]
    # Three denials and one granted read, each with its own entry.
    assert sum('"denied"' in e for e in reads) == 3
    assert sum('"success"' in e and OFFICER.identity in e for e in reads) == 1
