"""Review rev39c: routine retention undoes the officers' repair of a label.

A writer of the database without the HSM PIN forges a `key.register` under the KEK's
label (another key: the label stops, session 37); the officers repair it with a
``register`` ceremony, whose signed record the key registry takes over every unsigned
one (`vault._signed_registration`). Before the month holding both is dropped, the writer
appends one more record, harmless to look at: an unsigned copy of the genuine key's own
registration. Retention carries a dropped month's records of a key only when no record
online names that key (`audit.retention._carry_forward_key_records`): the genuine key is
named online (by the unsigned copy), so its signed record was not carried, while the
forged key, named nowhere online, was. After the retire the label held the forged key
and the genuine key's unsigned copy, and no signed record: stopped again, until the
officers repeat the ceremony. Real PostgreSQL partitions, moto's S3 as the archive.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from audit.archive import archive_log
from audit.log import AuditEvent, AuditLog, Outcome
from audit.retention import retire_partitions
from hsm.provider import HSMProvider
from infra_pci.objectstore import S3ObjectStore
from tests.audit.test_archive import PREFIX, sequence
from tests.audit.test_forged39_carried_signatures import DOCUMENT
from tests.audit.test_retention import NOW, OLD, _old_log, pg  # noqa: F401 - `pg` is a fixture
from vault.key_registry import KeyRegistry
from vault.signing import HSMTreeHeadSigner

LABEL = "cofre-kek-v2"
GENUINE = {"label": LABEL, "cka_id": "aWQ=", "check": "k2"}


def _append(engine: Engine, details: dict[str, Any], document: str | None, at: datetime) -> None:
    clock = type("Clock", (datetime,), {"now": classmethod(lambda cls, tz=None: at)})
    with engine.begin() as connection:
        AuditLog(clock=clock).append(
            connection,
            AuditEvent(
                action="key.register",
                outcome=Outcome.SUCCESS,
                actor="cofre",
                key_id=LABEL,
                details=details,
                document=document,
            ),
        )


def _signed(details: dict[str, Any], document: object) -> int | None:
    """The officers' verifier as the registry asks it, for this test's one signed record
    (retention's part is under test here; the signatures' is `test_forged39_*`)."""
    return 1 if document == DOCUMENT and details.get("ceremony") == "c" else None


def test_an_unsigned_copy_online_does_not_keep_the_signed_repair_from_being_carried(
    pg: Engine,  # noqa: F811 - the fixture
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
    hsm_provider: HSMProvider,
) -> None:
    registry = KeyRegistry(pg, hsm_provider)
    registry.trust_signed(_signed)
    _append(pg, {**GENUINE, "how": "created by key ceremony r"}, None, OLD[0])
    _append(pg, {**GENUINE, "check": "forged", "how": "init"}, None, OLD[0])
    repair = {**GENUINE, "how": "registered by key ceremony c", "ceremony": "c"}
    _append(pg, repair, DOCUMENT, OLD[0])
    assert registry.registered(fresh=True)[LABEL].check == "k2"  # repaired
    # The writer's unsigned copy of the genuine key's registration, this month.
    _append(pg, {**GENUINE, "how": "init"}, None, NOW)
    assert registry.registered(fresh=True)[LABEL].check == "k2"  # changes nothing yet
    _old_log(pg)
    sequence(pg, signer)
    archive_log(pg, s3, prefix=PREFIX, max_entries=8)
    retire_partitions(pg, s3, PREFIX, signer.public_key_pem(), online_months=3, now=NOW)
    registered = registry.registered(fresh=True)[LABEL]
    assert registered.check == "k2", json.dumps(registered.as_details())
