"""The completion records a data-key unwrap and each rotation worker pass read (session
38, bak38: `vault._retired_keys`) go through migration 0023's partial index, never a scan
of the audit log."""

from __future__ import annotations

from sqlalchemy import Engine

from tests.vault.storage.test_query_plans import _partial_index_reads, _plan
from vault._retired_keys import _COMPLETIONS


def test_the_retired_data_key_versions_are_read_through_their_partial_index(
    engine: Engine,
) -> None:
    with engine.begin() as connection:
        sql = str(_COMPLETIONS.compile(dialect=connection.dialect))
        _partial_index_reads(
            connection, _plan(connection, sql, [], 0), "ix_audit_entries_rotation_complete"
        )
