"""Session 37: a genuine `cofre audit retire` must not make the evidence FAIL, and a
forged "carried forward" key registration must.

Retire re-appends each key's latest `key.register` found in a dropped partition, with
``details.carried_forward_from`` (the registry is read from the log). Check 6d fails any
registration not tied to a ceremony's start or the log's first start, and a carried one
is neither: every bundle whose period covered a retire FAILED. The exporter now ships
each carried record's original (from the database, or the archive in the object store)
with its inclusion proof in the bundle's signed head (`audit/carried.jsonl`), and the
verifier accepts a carried record only as an exact copy of a proven earlier
registration of the same label. Real PostgreSQL partitions, moto's S3 as the archive,
the verifier's own command line.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from audit.archive import archive_log
from audit.log import AuditEvent, AuditLog, Outcome
from audit.retention import retire_partitions
from audit.sequencer import Sequencer
from cofre.settings import ArchiveSettings, Settings
from cofre_cli.wiring import _archived_entries
from cofre_evidence_verifier.cli import main
from compliance.export import EvidenceSources, export_bundle
from infra_pci.objectstore import S3ObjectStore
from tests.audit.conftest import BUCKET
from tests.audit.test_archive import PREFIX, sequence
from tests.audit.test_partitions import append_at
from tests.audit.test_retention import NOW, OLD, _old_log, pg  # noqa: F401 - `pg` is a fixture
from tests.support.evidence_bundles import POLICY
from tests.support.vault_evidence import VAULT_ORIGIN
from vault.key_registry import REGISTER_RECORDS
from vault.signing import HSMTreeHeadSigner

# The period: everything after the online entries dated NOW, the retire's included.
PERIOD_FROM = NOW + timedelta(microseconds=1)


def _at(at: datetime, event: AuditEvent, engine: Engine) -> None:
    clock = type("Clock", (datetime,), {"now": classmethod(lambda cls, tz=None: at)})
    with engine.begin() as connection:
        AuditLog(clock=clock).append(connection, event)


def _retired_log(engine: Engine, signer: HSMTreeHeadSigner, s3: S3ObjectStore) -> None:
    """Three old months with key registrations (retired, two of them carried forward),
    a policy load and entries online before the period, then the retire."""
    _old_log(engine)  # kek-v1 at leaf 0, fp-v1 at 1 and again (latest) at 11
    _at(
        NOW,
        AuditEvent(
            action="policy.load",
            outcome=Outcome.SUCCESS,
            actor="cofre",
            document=POLICY,
            details={"sha256": hashlib.sha256(POLICY.encode()).hexdigest()},
        ),
        engine,
    )
    append_at(engine, NOW, 2)
    sequence(engine, signer)
    archive_log(engine, s3, prefix=PREFIX, max_entries=8)
    pem = signer.public_key_pem()
    retired = retire_partitions(engine, s3, PREFIX, pem, online_months=3, now=NOW)
    assert sum(r.carried_forward for r in retired) == 3  # fp-v1's two keys: review rev38


def _register(engine: Engine, label: str, carried_from: int, check: str) -> None:
    """What an operator with the database writes: a registration claiming to be a carry."""
    _at(
        datetime.now(UTC),
        AuditEvent(
            action="key.register",
            outcome=Outcome.SUCCESS,
            actor="cofre audit retire",
            key_id=label,
            details={
                "label": label,
                "cka_id": "aWQ=",
                "check": check,
                "how": "test",
                "carried_forward_from": carried_from,
            },
        ),
        engine,
    )


def _verify(
    engine: Engine,
    signer: HSMTreeHeadSigner,
    bucket: str | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str]:
    """Export the period as the vault does and run `cofre-verify` on it."""

    # The vault's own wiring reads the bucket its settings name (none: no archive).
    archive = ArchiveSettings(bucket=bucket, prefix=PREFIX)
    sources = EvidenceSources(
        key_inventory=dict,
        ceremonies=list,
        settings={},
        tls_settings={},
        certificates=[],
        archived_entries=_archived_entries(Settings(archive=archive)),
    )
    with export_bundle(
        engine,
        signer,
        Sequencer(engine, signer),
        sources,
        generator="test",
        period_from=PERIOD_FROM,
        period_to=datetime.now(UTC) + timedelta(seconds=1),
    ) as streamed:
        bundle = tmp_path / "bundle.tar.gz"
        bundle.write_bytes(streamed.read())
    pem = tmp_path / "audit.pem"
    pem.write_bytes(signer.public_key_pem())
    capsys.readouterr()
    status = main(
        [str(bundle), "--public-key", str(pem), "--unsafe-no-witness", "--origin", VAULT_ORIGIN]
    )
    return status, capsys.readouterr().out


def test_a_bundle_covering_a_genuine_retire_verifies(
    pg: Engine,  # noqa: F811 - the fixture
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _retired_log(pg, signer, s3)
    status, out = _verify(pg, signer, BUCKET, tmp_path, capsys)
    assert status == 0, out
    # VERIFIED (the unsafe part: this test runs no witness).
    assert out.startswith("VERIFIED, UNSAFE: no witness cosignature was checked\n"), out
    assert "FAIL" not in out
    # fp-v1's two keys are both carried, its latest last (review rev38).
    assert (
        "cofre-fp-v1 (entry 43, carried forward by retention from entry 1), cofre-fp-v1 "
        "(entry 44, carried forward by retention from entry 11), cofre-kek-v1 (entry 45, "
        "carried forward by retention from entry 0)"
    ) in out, out


def test_a_carried_registration_says_when_its_original_was_registered(
    pg: Engine,  # noqa: F811 - the fixture
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
) -> None:
    """rev49: a copy was dated by its own record, so the vault's cryptoperiod monitor
    restarted the key's period at each retire. Each copy now says its original's time
    (``registered_at``), which check 6d compares with the original's."""
    _retired_log(pg, signer, s3)
    with pg.connect() as connection:
        rows = connection.execute(
            text(f"SELECT payload FROM audit_entries WHERE {REGISTER_RECORDS}")
        )
        copies = [json.loads(p) for (p,) in rows if "carried_forward_from" in p]
    assert len(copies) == 3
    said = {(c["key_id"], c["details"]["registered_at"]) for c in copies}
    assert said == {
        ("cofre-kek-v1", f"{OLD[0]:%Y-%m-%dT%H:%M:%S.%fZ}"),
        ("cofre-fp-v1", f"{OLD[0]:%Y-%m-%dT%H:%M:%S.%fZ}"),
        ("cofre-fp-v1", f"{OLD[1]:%Y-%m-%dT%H:%M:%S.%fZ}"),
    }


@pytest.mark.parametrize(
    ("bucket", "why"),
    [
        (None, "the exporter could not read entry 0: no archive configured"),
        ("cofre-no-such-bucket", "the exporter could not read entry 0: the archive could not"),
    ],
)
def test_an_unreachable_archive_fails_closed_and_says_so(  # noqa: PLR0917 - fixtures, case
    pg: Engine,  # noqa: F811 - the fixture
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bucket: str | None,
    why: str,
) -> None:
    _retired_log(pg, signer, s3)
    status, out = _verify(pg, signer, bucket, tmp_path, capsys)
    assert status == 1, out
    assert "VERIFIED" not in out
    problems = [line for line in out.splitlines() if "key registrations:" in line]
    assert len(problems) == 3, out  # every carry, each failed closed
    assert any(why in p for p in problems), problems


@pytest.mark.parametrize(
    ("label", "carried_from", "check", "why"),
    [
        # Another key under the label: the carry copies the original's identity or nothing.
        ("cofre-fp-v1", 11, "f-forged", "is not a copy of entry 11"),
        # A leaf that is not a registration (a tokenize entry, retired).
        ("cofre-fp-v1", 3, "f-new", "entry 3 is not a registration of cofre-fp-v1"),
        # A registration of another label.
        ("cofre-fp-v1", 0, "k1", "entry 0 is not a registration of cofre-fp-v1"),
        # A leaf the log does not hold (or not yet): nothing to prove it by.
        ("cofre-fp-v1", 10**9, "f-new", "does not lie before it"),
        ("cofre-kek-v2", -1, "k2", "not a leaf index"),
    ],
)
def test_a_forged_carried_registration_fails(  # noqa: PLR0917 - the forgery's parts
    pg: Engine,  # noqa: F811 - the fixture
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    label: str,
    carried_from: int,
    check: str,
    why: str,
) -> None:
    _retired_log(pg, signer, s3)
    _register(pg, label, carried_from, check)
    status, out = _verify(pg, signer, BUCKET, tmp_path, capsys)
    assert status == 1, out
    assert "VERIFIED" not in out
    problems = [line for line in out.splitlines() if "key registrations:" in line]
    assert len(problems) == 1, out
    assert why in problems[0], problems[0]
    assert f"registers {label}" in problems[0]
    assert json.dumps(carried_from) in problems[0]
