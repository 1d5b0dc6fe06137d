"""A test request's own audit entries: a request id that the vault keeps as sent, and
the entries written under it."""

from __future__ import annotations

import json
import secrets
import string
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Engine

from audit.log import AuditEvent, AuditLog, Outcome
from vault.storage.database import create_database_engine


def new_request_id() -> str:
    """A fresh `x-request-id`. Letters only: a caller's id with a long digit run is
    replaced by the vault's own."""
    return "rid-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))


def request_entries(engine: Engine, rid: str) -> list[dict[str, Any]]:
    """The audit entries written under request id `rid`, oldest first (decoded)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p ORDER BY id"),
            {"p": f'%"request_id":"{rid}"%'},
        ).scalars()
        return [json.loads(r) for r in rows]


def actor_entries(engine: Engine, actor: str) -> list[dict[str, Any]]:
    """The audit entries whose actor is `actor`, oldest first (decoded)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        return [e for e in (json.loads(r) for r in rows) if e["actor"] == actor]


def tokens_and_audited(url: str) -> tuple[int, int]:
    """In the database at `url`: the stored tokens, and how many of them an audit entry
    names (equal when no token was written without its entry)."""
    engine = create_database_engine(url)
    try:
        with engine.connect() as c:
            tokens = c.execute(sa.text("SELECT count(*) FROM tokens")).scalar_one()
            audited = c.execute(
                sa.text(
                    "SELECT count(*) FROM tokens t WHERE EXISTS (SELECT 1 FROM audit_entries a "
                    "WHERE a.payload LIKE '%' || t.id || '%')"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return int(tokens), int(audited)


def break_audit_writes(engine: Engine) -> None:
    """Make every later insert into `audit_entries` fail, as a full disk would: a test
    of fail-closed checks that nothing the entry records is done without it."""
    if engine.dialect.name == "sqlite":
        ddl = (
            "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_entries "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    else:
        ddl = "ALTER TABLE audit_entries ADD CONSTRAINT fail_audit CHECK (false) NOT VALID"
    with engine.begin() as connection:
        connection.execute(sa.text(ddl))


class AuditState(NamedTuple):
    """What a stopped vault's audit log holds: every entry's action, the entries still
    queued for sequencing, the leaves integrated and the newest signed head's size."""

    actions: list[str]
    queued: int
    leaves: int
    head: int | None


def audit_state(url: str) -> AuditState:
    """`AuditState` of the database at `url` (read with a plain engine of its own)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            actions = [
                json.loads(row[0])["action"]
                for row in connection.execute(sa.text("SELECT payload FROM audit_entries"))
            ]

            def count(table: str) -> int:
                return int(
                    connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                )

            head = connection.execute(sa.text("SELECT max(tree_size) FROM audit_heads")).scalar()
            return AuditState(actions, count("audit_queue"), count("audit_leaves"), head)
    finally:
        engine.dispose()


def append_registration(
    engine: Engine, label: str, details: dict[str, Any], document: str | None = None
) -> None:
    """A `key.register` entry for `label` as a writer of the database appends it, without
    the HSM PIN (no HSM call): forged, or a copy of another entry's `details` and
    `document`."""
    with engine.begin() as connection:
        AuditLog().append(
            connection,
            AuditEvent(
                action="key.register",
                outcome=Outcome.SUCCESS,
                actor="cofre",
                key_id=label,
                details=details,
                document=document,
            ),
        )


def malformed_records(action: str) -> dict[str, str]:
    """Records a writer of the database may insert that start like `action`'s (so a
    reader selecting by the payload's start finds them) but that the vault never writes:
    not JSON, details that are no object, trailing data; by name (reviews rev39, s39)."""
    start = f'{{"action":"{action}",'
    return {
        "not-json": start + '"details":{"label":"cofre-kek-v1",',
        "details-a-string": start + '"details":"x","outcome":"success"}',
        "details-a-list": start + '"details":[1],"outcome":"success"}',
        "not-an-object": start + '"x":1}[]',
    }


def insert_record(engine: Engine, payload: str) -> None:
    """Insert `payload` into the audit log as a writer of the database would (no entry
    of the vault's, no leaf: the app role's grant)."""
    from datetime import UTC, datetime  # noqa: PLC0415 - used here alone

    from audit.schema import audit_entries  # noqa: PLC0415

    with engine.begin() as connection:
        connection.execute(
            sa.insert(audit_entries), {"payload": payload, "created_at": datetime.now(UTC)}
        )
