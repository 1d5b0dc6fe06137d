"""Session 39: `cofre audit retire` carries a signed key registration with its signatures.

The key registry takes a `key.register` the officers signed (a ``register`` ceremony:
its document holds their signed requests, `vault._signed_registration`) over every
unsigned record of its label. Retention appends again, at the log's end, the records
the registry would lose with a dropped month; a copy without the document is an
unsigned record, so once the month holding the officers' registration went, a forged
record under the label made it unusable again, the repair undone by routine retention.
Real PostgreSQL partitions, moto's S3 as the archive."""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from audit.archive import archive_log
from audit.log import AuditEvent, AuditLog, Outcome
from audit.retention import retire_partitions
from infra_pci.objectstore import S3ObjectStore
from tests.audit.test_archive import PREFIX, sequence
from tests.audit.test_retention import NOW, OLD, _old_log, pg  # noqa: F401 - `pg` is a fixture
from vault.signing import HSMTreeHeadSigner

# What a register ceremony's entry carries (its shape only: this test is retention's).
DOCUMENT = json.dumps({"type": "cofre-signed-registration/v1", "proposal": {}, "approvals": []})


def test_a_carried_signed_registration_keeps_its_document(
    pg: Engine,  # noqa: F811 - the fixture
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
) -> None:
    clock = type("Clock", (datetime,), {"now": classmethod(lambda cls, tz=None: OLD[0])})
    with pg.begin() as connection:
        AuditLog(clock=clock).append(
            connection,
            AuditEvent(
                action="key.register",
                outcome=Outcome.SUCCESS,
                actor="spiffe://cofre/officer-bob",
                key_id="cofre-kek-v2",
                details={
                    "label": "cofre-kek-v2",
                    "cka_id": "aWQ=",
                    "check": "k2",
                    "how": "registered by key ceremony c",
                    "ceremony": "c",
                },
                document=DOCUMENT,
            ),
        )
    _old_log(pg)
    sequence(pg, signer)
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    retire_partitions(pg, s3, PREFIX, signer.public_key_pem(), online_months=3, now=NOW)
    with pg.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        carried = [
            p
            for p in map(json.loads, payloads)
            if p["action"] == "key.register" and p["key_id"] == "cofre-kek-v2"
        ]
    assert len(carried) == 1, carried
    assert "carried_forward_from" in carried[0]["details"]
    assert carried[0].get("document") == DOCUMENT
