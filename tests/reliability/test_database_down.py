"""The database stopped under key rotation, audit reads and evidence export, in process:
each package translates the outage at its edge into its own 503 error, never a driver
error (which the API would answer as 500 `internal_error`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.problems import PROBLEMS
from audit.errors import AuditReadFailed
from audit.sequencer import Sequencer
from audit.store import AuditStore
from cofre.errors import CofreError
from compliance.export import EvidenceSources, export_bundle
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.postgres import PostgresCluster
from tests.vault.conftest import TEST_POLICY
from vault.errors import StorageUnavailable
from vault.rotation import KeyRotation
from vault.service import VaultService
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate

OFFICERS = """
[identities."spiffe://cofre/officer-bob"]
role = "security_officer"
operations = ["key_admin"]
"""
ALICE, BOB = "spiffe://cofre/officer-alice", "spiffe://cofre/officer-bob"


def test_database_stopped_under_rotation_audit_reads_and_export(
    durable_postgres: PostgresCluster,
    rotation_provider: HSMProvider,
    hsm_provider: HSMProvider,
) -> None:
    engine = create_database_engine(durable_postgres.sqlalchemy_url())
    migrate(engine)
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    service.initialize()
    rotation = KeyRotation(
        engine, rotation_provider, service.keyring, lambda: policy, unsigned_officers_count=True
    )
    sequencer = Sequencer(engine, HSMTreeHeadSigner(hsm_provider))
    ceremony = rotation.propose(ALICE, "data")
    sequencer.drain(force_sign=True)
    store = AuditStore(engine)
    sources = EvidenceSources(
        key_inventory=rotation.key_inventory,
        ceremonies=lambda: [c.as_json() for c in rotation.ceremonies()],
        settings={},
        tls_settings={},
        certificates=[],
    )
    now = datetime.now(UTC)

    audit_reads: list[Callable[[], Any]] = [
        store.size,
        store.heads,
        store.latest_head,
        lambda: store.head_at(1),
        lambda: store.entry(0),
        lambda: list(store.iter_entries()),
        lambda: store.root_at(1),
        lambda: store.inclusion_proof(0, 1),
        lambda: store.consistency_proof(1),
        lambda: store.verify(None),
        lambda: list(store.export()),
    ]
    rotation_calls: list[Callable[[], Any]] = [
        lambda: rotation.inventory(ALICE),
        lambda: rotation.list_ceremonies(ALICE),
        lambda: rotation.status(ALICE, ceremony.id),
        lambda: rotation.propose(ALICE, "kek"),
        lambda: rotation.approve(BOB, ceremony.id),
        lambda: rotation.cancel(ALICE, ceremony.id),
        rotation.run_pending,
    ]
    durable_postgres.stop("immediate")
    try:
        for read in audit_reads:
            with pytest.raises(AuditReadFailed):
                read()
        for call in rotation_calls:
            with pytest.raises(StorageUnavailable):
                call()
        with pytest.raises(CofreError) as exported:
            export_bundle(
                engine,
                sequencer.signer,
                sequencer,
                sources,
                generator="auditor",
                period_from=now - timedelta(days=1),
                period_to=now + timedelta(days=1),
            )
        assert PROBLEMS[exported.value.code][0] == 503, exported.value.code
        for error in (AuditReadFailed, StorageUnavailable):
            assert PROBLEMS[error.code][0] == 503
    finally:
        durable_postgres.start()
        service.close()
        engine.dispose()
