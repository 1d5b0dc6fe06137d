"""Retention keeps the newest data-key retirement online (session 38, bak38).

The vault refuses every data-key version up to the newest one a data rotation's
completion names (`vault._retired_keys`). Retention drops months of the log: had it
dropped that completion, the vault would have forgotten the retirement, and a destroyed
key's wrapped bytes put back from a backup would have opened its cards again, three
months after the rotation. The completion is carried forward as the key registry's
records are. PostgreSQL (partitions), moto's S3, SoftHSM2."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from audit.archive import archive_log
from audit.log import AuditEvent, AuditLog, Outcome
from audit.retention import retire_partitions
from audit.store import AuditStore
from infra_pci.objectstore import S3ObjectStore
from tests.audit.test_archive import PREFIX, sequence
from tests.audit.test_partitions import append_at
from tests.audit.test_retention import NOW, OLD, pg  # noqa: F401 - the fixture, reused
from vault._retired_keys import retired_through
from vault.signing import HSMTreeHeadSigner


def _complete(engine: Engine, at: datetime, details: dict[str, object]) -> None:
    """A rotation's start (with its officers' document, session 40) and completion."""
    clock = type("Clock", (datetime,), {"now": classmethod(lambda cls, tz=None: at)})
    version = details["retired_version"]
    kind = "audit" if "old_key_kept_for_verification" in details else "data"
    started = {"kind": kind, "old_version": version, "new_version": version + 1}  # type: ignore[operator]
    with engine.begin() as connection:
        for action, entry, document in (
            ("key.rotation.start", started, _SIGNED),
            ("key.rotation.complete", details, None),
        ):
            AuditLog(clock=clock).append(
                connection,
                AuditEvent(
                    action=action,
                    outcome=Outcome.SUCCESS,
                    actor="cofre rotation",
                    key_id=f"c-{at:%Y%m}",
                    details=entry,  # type: ignore[arg-type]
                    document=document,
                ),
            )


# The officers' signed requests a start carries; whether they prove it is the key
# registry's (tests/vault/test_sign40_planted_rotation.py): here every start is proven.
_SIGNED = '{"type":"cofre-signed-registration/v1"}'


def _proven(details: dict[str, Any], document: object) -> int | None:
    return 0 if document == _SIGNED else None


def test_the_newest_data_retirement_outlives_its_partition(
    pg: Engine,  # noqa: F811 - the fixture imported above
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
) -> None:
    pem = signer.public_key_pem()
    _complete(pg, OLD[0], {"retired_version": 1})  # written before session 38: no kind
    append_at(pg, OLD[0], 5)
    _complete(pg, OLD[1], {"kind": "data", "retired_version": 2})
    # An audit key's completion names its own versions: never a data key's.
    _complete(pg, OLD[2], {"retired_version": 7, "old_key_kept_for_verification": True})
    append_at(pg, OLD[2], 5)
    append_at(pg, NOW, 5)
    with pg.connect() as connection:
        assert retired_through(connection, _proven) == 2
    sequence(pg, signer)
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    retired = retire_partitions(pg, s3, PREFIX, pem, online_months=3, now=NOW)
    assert [r.carried_forward for r in retired] == [0, 2, 0]  # the start and completion
    with pg.connect() as connection:
        assert retired_through(connection, _proven) == 2
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
            {"p": '{"action":"key.rotation.complete",%'},
        ).scalars()
        carried = [json.loads(p) for p in payloads]
    assert [(c["actor"], c["details"]["retired_version"]) for c in carried] == [
        ("cofre audit retire", 2)
    ]
    assert carried[0]["details"]["carried_forward_from"] >= 0
    sequence(pg, signer)
    store = AuditStore(pg)
    assert store.verify(pem).entries == store.size()
