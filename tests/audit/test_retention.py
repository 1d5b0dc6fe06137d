"""Online retention on PostgreSQL: a monthly partition older than the online retention
is dropped only once sequenced, archived and verified in the archive (moto's S3), and
the online log still verifies from where the archive ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.archive import archive_log, segment_key, verify_archive
from audit.archived_entries import archived_payloads
from audit.errors import ProofError, RetentionRefused
from audit.log import AuditEvent, AuditLog, Outcome
from audit.partitions import ensure_partitions, monthly_partitions
from audit.retention import retire_partitions, retired_overlapping
from audit.sequencer import Sequencer
from audit.store import AuditStore
from cofre_evidence_verifier.verify import verify_bundle
from compliance.errors import ComplianceError
from compliance.export import EvidenceSources, export_bundle
from infra_pci.objectstore import S3ObjectStore
from tests.audit.conftest import BUCKET
from tests.audit.test_archive import PREFIX, sequence
from tests.audit.test_partitions import append_at
from tests.support.vault_evidence import VAULT_ORIGIN
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import create_database_engine, migrate


def _month(now: datetime, back: int) -> datetime:
    index = now.year * 12 + now.month - 1 - back
    return datetime(index // 12, index % 12 + 1, 10, tzinfo=UTC)


NOW = datetime.now(UTC)
OLD = [_month(NOW, 6), _month(NOW, 5), _month(NOW, 4)]


@pytest.fixture
def pg(pg_database: str) -> Iterator[Engine]:
    engine = create_database_engine(pg_database)
    migrate(engine)
    with engine.begin() as connection:
        ensure_partitions(connection, from_time=OLD[0])
    yield engine
    engine.dispose()


def _register(engine: Engine, at: datetime, label: str, check: str) -> None:
    clock = type("Clock", (datetime,), {"now": classmethod(lambda cls, tz=None: at)})
    with engine.begin() as connection:
        AuditLog(clock=clock).append(
            connection,
            AuditEvent(
                action="key.register",
                outcome=Outcome.SUCCESS,
                actor="cofre hsm init",
                key_id=label,
                details={"label": label, "cka_id": "aWQ=", "check": check, "how": "test"},
            ),
        )


def _registry(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        records = [p for p in map(json.loads, payloads) if p["action"] == "key.register"]
    return {r["details"]["label"]: r["details"]["check"] for r in records}


def _old_log(engine: Engine) -> None:
    _register(engine, OLD[0], "cofre-kek-v1", "k1")
    _register(engine, OLD[0], "cofre-fp-v1", "f-old")
    append_at(engine, OLD[0], 9)
    _register(engine, OLD[1], "cofre-fp-v1", "f-new")
    append_at(engine, OLD[1], 9)
    append_at(engine, OLD[2], 9)
    append_at(engine, NOW, 5)


def test_retire_drops_archived_partitions_and_the_log_still_verifies(
    pg: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = signer.public_key_pem()
    _old_log(pg)
    sequence(pg, signer)
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    before = _registry(pg)
    dry = retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW, dry_run=True)
    assert [r.name for r in dry] == [f"audit_entries_p{m:%Y%m}" for m in OLD]
    with pg.connect() as connection:
        assert len(monthly_partitions(connection)) == 6 + 4  # nothing dropped by a dry run

    retired = retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW)
    assert [(r.name, r.entries, r.first_leaf, r.last_leaf) for r in retired] == [
        (f"audit_entries_p{OLD[0]:%Y%m}", 11, 0, 10),
        (f"audit_entries_p{OLD[1]:%Y%m}", 10, 11, 20),
        (f"audit_entries_p{OLD[2]:%Y%m}", 9, 21, 29),
    ]
    assert retired[-1].online_from == 32  # the segment that holds leaf 29 ends at 32
    # The first month carries kek-v1, fp-v1's first key (no record online names it:
    # a label recorded as two keys must stay so, review rev38) and fp-v1's latest
    # again, so it stays last; the second month's fp-v1 is then named online.
    assert [r.carried_forward for r in retired] == [3, 0, 0]
    with pg.connect() as connection:
        names = [p.name for p in monthly_partitions(connection)]
        actions = [
            json.loads(p)["action"]
            for p in connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        ]
    assert names[0] == f"audit_entries_p{_month(NOW, 3):%Y%m}"  # three months online
    assert actions.count("audit.partition.retire") == 3
    # The key registry, read from the log, lost nothing: the latest record of each key.
    assert _registry(pg) == before == {"cofre-kek-v1": "k1", "cofre-fp-v1": "f-new"}

    sequence(pg, signer)
    store = AuditStore(pg)
    report = store.verify(pem)
    assert report.online_from == 32
    assert report.entries == store.size()
    with pytest.raises(ProofError, match="no entry at leaf index 3"):
        store.entry(3)
    # The archive goes on from where it was; the whole chain still verifies.
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    assert verify_archive(s3, PREFIX, pem).entries == store.size()
    # Nothing is left to retire.
    assert retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW) == []


def test_retire_refuses_what_is_not_archived(
    pg: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = signer.public_key_pem()
    append_at(pg, OLD[0], 9)
    with pytest.raises(RetentionRefused, match=r"p\d{6}: 9 of its 9 entries are not sequenced"):
        retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW)
    sequence(pg, signer)
    with pytest.raises(RetentionRefused, match=r"leaves 0..8 are not all archived"):
        retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW)
    with pg.connect() as connection:
        assert f"audit_entries_p{OLD[0]:%Y%m}" in {p.name for p in monthly_partitions(connection)}


def test_retire_refuses_when_the_archive_does_not_verify(
    pg: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    pem = signer.public_key_pem()
    append_at(pg, OLD[0], 20)
    sequence(pg, signer)
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    s3._client.delete_object(Bucket=BUCKET, Key=segment_key(PREFIX, 8, 16))
    with pytest.raises(
        RetentionRefused, match="the archive does not verify: archived segment 8-16"
    ):
        retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW)
    with pg.connect() as connection:
        assert f"audit_entries_p{OLD[0]:%Y%m}" in {p.name for p in monthly_partitions(connection)}
    assert AuditStore(pg).verify(pem).online_from == 0


def test_a_forged_archive_record_does_not_let_a_partition_go(
    pg: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore
) -> None:
    """The app role may insert into `audit_archive`: a row claiming an archive that the
    bucket does not hold must not be enough to drop anything."""
    append_at(pg, OLD[0], 16)
    sequence(pg, signer)
    with pg.begin() as connection:
        connection.execute(sa.text("SET LOCAL ROLE cofre_app"))
        connection.execute(
            sa.text(
                "INSERT INTO audit_archive VALUES (0, 16, 'x/segments/0-16.jsonl.gz', "
                "repeat('f', 64), 1, now())"
            )
        )
    with pytest.raises(RetentionRefused, match="the archive ends at leaf 0, before 16"):
        retire_partitions(pg, s3, PREFIX, signer.public_key_pem(), online_months=3, now=NOW)
    with pg.connect() as connection:
        assert f"audit_entries_p{OLD[0]:%Y%m}" in {p.name for p in monthly_partitions(connection)}


def test_no_evidence_bundle_claims_a_period_whose_entries_were_retired(
    pg: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore, tmp_path: Path
) -> None:
    pem = signer.public_key_pem()
    _old_log(pg)
    sequence(pg, signer)
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW)
    # The archive the retire's carried registrations are proven from (session 37).
    sources = EvidenceSources(
        key_inventory=dict,
        ceremonies=list,
        settings={},
        tls_settings={},
        certificates=[],
        archived_entries=lambda wanted: archived_payloads(s3, PREFIX, wanted),
    )

    def bundle(period_from: datetime, period_to: datetime) -> bytes:
        with export_bundle(
            pg,
            signer,
            Sequencer(pg, signer),
            sources,
            generator="test",
            period_from=period_from,
            period_to=period_to,
        ) as streamed:
            return streamed.read()

    with pytest.raises(ComplianceError, match=rf"audit_entries_p{OLD[1]:%Y%m}, .* were retired"):
        bundle(datetime(OLD[1].year, OLD[1].month, 1, tzinfo=UTC), NOW)
    assert retired_overlapping(pg, datetime(NOW.year, NOW.month, 1, tzinfo=UTC), NOW) == []
    # The online month still makes a bundle whose entries verify offline (they follow
    # the retired leaves; the subtrees before them are kept). The entry just before its
    # first is retired, so the bundle cannot show that nothing of the period precedes
    # it, and says so; and this synthetic log never loaded a policy.
    made = tmp_path / "bundle.tar.gz"
    made.write_bytes(bundle(datetime(NOW.year, NOW.month, 1, tzinfo=UTC), datetime.now(UTC)))
    report = verify_bundle(made, pem, None, unsafe_no_witnesses=True, origin=VAULT_ORIGIN)
    assert len(report.problems) == 2, report.problems
    assert report.problems[0].startswith("audit/boundaries.jsonl: no entry ")
    assert "before the range" in report.problems[0]
    assert report.problems[1] == (
        "policy/versions.jsonl: no policy version in force during the period is evidenced"
    )
    assert {"entries", "heads", "signature"} <= report.passed_checks
