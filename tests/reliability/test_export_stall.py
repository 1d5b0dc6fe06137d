"""An evidence export while another node's sequencer holds the lock (a hung node,
docs/operations.md "Incident: audit queue stalled" and the failure table): the export
waits for the lock up to the statement timeout and is answered `503
evidence_unavailable`, the export's own code, not `audit_unavailable`, which the
failure table and "What to watch" give for an audit entry that could not be written
(drill of session 33: the export answered `audit_unavailable`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from audit.sequencer import SEQUENCER_LOCK_KEY, Sequencer
from compliance.errors import EvidenceUnavailable
from compliance.export import EvidenceSources, export_bundle
from hsm.provider import HSMProvider
from tests.support.postgres import PostgresCluster
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate


def test_export_under_a_held_sequencer_lock_is_evidence_unavailable(
    durable_postgres: PostgresCluster, hsm_provider: HSMProvider
) -> None:
    engine = create_database_engine(durable_postgres.sqlalchemy_url(), statement_timeout_ms=300)
    migrate(engine)
    sequencer = Sequencer(engine, HSMTreeHeadSigner(hsm_provider))
    sources = EvidenceSources(
        key_inventory=dict,
        ceremonies=list,
        settings={},
        tls_settings={},
        certificates=[],
    )
    now = datetime.now(UTC)
    hung = psycopg.connect(durable_postgres.dsn(), application_name="hung-node")
    try:
        hung.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCER_LOCK_KEY,))
        with pytest.raises(EvidenceUnavailable) as refused:
            export_bundle(
                engine,
                sequencer.signer,
                sequencer,
                sources,
                generator="auditor",
                period_from=now - timedelta(days=1),
                period_to=now + timedelta(days=1),
            )
        assert "sequencer" in str(refused.value)
    finally:
        hung.rollback()
        hung.close()
        engine.dispose()
