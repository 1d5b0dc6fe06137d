"""Schema migrations that change data, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from vault.storage.database import create_database_engine, migrate
from vault.storage.schema_version import MIGRATIONS


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    yield engine
    engine.dispose()


def _alembic(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        step(config, revision)


def _upgrade(engine: Engine, revision: str) -> None:
    _alembic(engine, command.upgrade, revision)


def _downgrade(engine: Engine, revision: str) -> None:
    _alembic(engine, command.downgrade, revision)


def _ceremony_approved_by_bob(engine: Engine, kind: str) -> None:
    """A pending ceremony 'c1' proposed by alice and approved by bob, in the columns
    every revision since 0012 has."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO key_ceremonies (id, kind, state, proposer, created_at, "
                "expires_at, proposer_keyid) VALUES ('c1', :kind, 'pending', 'alice', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'k-alice')"
            ),
            {"kind": kind},
        )
        connection.execute(
            text(
                "INSERT INTO key_approvals (ceremony_id, officer, approved_at, keyid) "
                "VALUES ('c1', 'bob', CURRENT_TIMESTAMP, 'k-bob')"
            )
        )


def test_0003_relabels_wrap_mechanisms_as_algorithms(engine: Engine) -> None:
    _upgrade(engine, "0002")
    with engine.begin() as connection:
        for version, mechanism in enumerate(
            ("AES_KEY_WRAP_PAD", "AES_KEY_WRAP_KWP", "AES_KEY_WRAP"), start=1
        ):
            connection.execute(
                text(
                    "INSERT INTO data_keys (purpose, version, wrapped, wrap_mechanism, "
                    "kek_label, algorithm, state, created_at) VALUES ('pan', :v, :w, :m, "
                    "'cofre-kek-v1', 'AES-256', 'active', CURRENT_TIMESTAMP)"
                ),
                {"v": version, "w": b"\x00" * 40, "m": mechanism},
            )
    migrate(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT version, wrap_mechanism FROM data_keys ORDER BY version")
        ).all()
    assert [tuple(row) for row in rows] == [
        (1, "aes-kwp-rfc5649"),
        (2, "aes-kwp-rfc5649"),
        (3, "aes-kw-rfc3394"),
    ]


def test_0013_adds_the_ceremony_proofs_and_keeps_the_rows(engine: Engine) -> None:
    """Additive: the proofs of older rows are NULL (such an approval counts no more for an
    officer with an MFA key: review appr), and a downgrade to 0012 drops the columns."""
    _upgrade(engine, "0012")
    _ceremony_approved_by_bob(engine, "kek")
    migrate(engine)
    with engine.connect() as connection:
        ceremony = connection.execute(
            text("SELECT proposer_keyid, proposer_proof FROM key_ceremonies")
        ).one()
        approval = connection.execute(text("SELECT keyid, proof FROM key_approvals")).one()
    assert tuple(ceremony) == ("k-alice", None)
    assert tuple(approval) == ("k-bob", None)
    _downgrade(engine, "0012")
    with engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("key_approvals")}
        assert "proof" not in columns
        assert connection.execute(text("SELECT keyid FROM key_approvals")).scalar_one() == "k-bob"


def test_0017_adds_the_queued_entries_time_and_keeps_the_queue(engine: Engine) -> None:
    """Additive: rows queued before it keep their place with no time (NULL: the sequencer
    reads those by id alone), and a downgrade to 0016 drops the column and keeps them."""
    _upgrade(engine, "0016")
    with engine.begin() as connection:
        # 0001 creates the queue from today's metadata; a queue made at 0016 had no time.
        connection.execute(text("ALTER TABLE audit_queue DROP COLUMN created_at"))
        connection.execute(
            text(
                "INSERT INTO audit_entries (payload, created_at) "
                "VALUES ('{}', CURRENT_TIMESTAMP), ('{}', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(text("INSERT INTO audit_queue (entry_id) SELECT id FROM audit_entries"))
    migrate(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT entry_id, created_at FROM audit_queue ORDER BY entry_id")
        ).all()
    assert [created_at for _, created_at in rows] == [None, None]
    _downgrade(engine, "0016")
    with engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("audit_queue")}
        assert "created_at" not in columns
        kept = connection.execute(text("SELECT entry_id FROM audit_queue ORDER BY entry_id"))
        assert [entry_id for (entry_id,) in kept] == [entry_id for entry_id, _ in rows]


def test_0018_adds_the_idempotency_keys_and_keeps_the_keys_on_token_rows(engine: Engine) -> None:
    """Additive: the keys older code wrote stay on their token rows (read there still,
    nothing is copied), code at 0017 may run against it (a rolling upgrade), and a
    downgrade to 0017 drops the table alone."""
    _upgrade(engine, "0017")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO tokens (id, token, format, convergent, metadata, owner, domain,"
                " idempotency_key, created_at) VALUES ('t1', 'tok-1', 'uuid', false, '{}',"
                " 'payments', 'payments', 'order-1', CURRENT_TIMESTAMP)"
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM idempotency_keys")).scalar() == 0
        kept = connection.execute(text("SELECT idempotency_key FROM tokens")).scalar_one()
        assert kept == "order-1"
        # Code at 0017 may run against 0018 (0019 then asks for 0018: its own test).
        script = ScriptDirectory(str(MIGRATIONS)).get_revision("0018")
        assert script is not None
        assert script.module.min_code_revision == "0017"
        table = inspect(connection)
        assert table.get_pk_constraint("idempotency_keys")["constrained_columns"] == [
            "domain",
            "idempotency_key",
        ]
        unique = table.get_unique_constraints("idempotency_keys")
        assert [u["column_names"] for u in unique] == [["owner", "idempotency_key"]]
        connection.execute(
            text(
                "INSERT INTO idempotency_keys VALUES"
                " ('payments', 'order-2', 'payments', 't1', CURRENT_TIMESTAMP)"
            )
        )
        connection.rollback()
    _downgrade(engine, "0017")
    with engine.connect() as connection:
        assert not inspect(connection).has_table("idempotency_keys")
        kept = connection.execute(text("SELECT idempotency_key FROM tokens")).scalar_one()
        assert kept == "order-1"


def test_0019_indexes_the_records_by_age_and_lets_the_vault_forget_them(engine: Engine) -> None:
    """Additive: the purge's index on ``created_at`` and, on PostgreSQL, DELETE for the
    vault's role (review 27: records were read and added, never removed); code at 0018
    may run against it; a downgrade to 0018 drops the index and takes DELETE back."""
    _upgrade(engine, "0018")
    migrate(engine)
    postgresql = engine.dialect.name == "postgresql"
    may_delete = "SELECT has_table_privilege('cofre_app', 'idempotency_keys', 'DELETE')"
    with engine.connect() as connection:
        compatible = connection.execute(text("SELECT min_code_revision FROM cofre_schema"))
        assert compatible.scalar_one() == "0018"
        indexes = {i["name"] for i in inspect(connection).get_indexes("idempotency_keys")}
        assert "ix_idempotency_keys_created_at" in indexes
        if postgresql:
            assert connection.execute(text(may_delete)).scalar_one()
    _downgrade(engine, "0018")
    with engine.connect() as connection:
        indexes = {i["name"] for i in inspect(connection).get_indexes("idempotency_keys")}
        assert "ix_idempotency_keys_created_at" not in indexes
        if postgresql:
            assert not connection.execute(text(may_delete)).scalar_one()


@pytest.mark.parametrize(
    ("block", "before", "index"),
    [
        ("key-register-index", "0013", "key_register"),
        ("rotation-start-index", "0020", "rotation_start"),
        ("rotation-start-index", "0020", "rotation_cancel"),
        ("custody-action-index", "0021", "custody_acknowledge"),
        ("custody-action-index", "0021", "rotation_propose"),
        ("custody-action-index", "0021", "rotation_approve"),
        ("rotation-complete-index", "0022", "rotation_complete"),
        ("rotation-row-unreadable-index", "0023", "rotation_row_unreadable"),
    ],
)
def test_audit_log_indexes_built_ahead_as_the_operations_guide_says_are_adopted(
    pg_database: str, block: str, before: str, index: str
) -> None:
    """docs/operations.md tells operators of a large audit log to build 0014's, 0021's
    and 0022's indexes on each partition concurrently before migrating; the migration must
    then attach those (PostgreSQL matches them by definition) rather than build a second
    set."""
    engine = create_database_engine(pg_database)
    try:
        _upgrade(engine, before)
        guide = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
        match = re.search(rf"<!-- {block} -->\s*```sql\n(.*?)```", guide, re.DOTALL)
        assert match, f"docs/operations.md lost its {block} SQL block"
        recipe = "\n".join(
            line for line in match.group(1).splitlines() if not line.startswith("--")
        )
        dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn, autocommit=True) as connection:
            parts = [
                str(name)
                for (name,) in connection.execute(
                    "SELECT inhrelid::regclass::text FROM pg_inherits"
                    " WHERE inhparent = 'audit_entries'::regclass"
                )
            ]
            for part in parts:  # CONCURRENTLY: outside a transaction, no parameters
                for statement in filter(str.strip, recipe.split(";")):  # one at a time
                    connection.execute(statement.replace("audit_entries_p202612", part).encode())
        migrate(engine)
        with psycopg.connect(dsn) as connection:
            children = {
                str(name)
                for (name,) in connection.execute(
                    "SELECT inhrelid::regclass::text FROM pg_inherits"
                    f" WHERE inhparent = 'ix_audit_entries_{index}'::regclass"
                )
            }
        assert children == {f"{part}_{index}" for part in parts}
    finally:
        engine.dispose()


def test_0015_and_0016s_indexes_built_ahead_as_the_operations_guide_says_are_kept(
    pg_database: str,
) -> None:
    """docs/operations.md tells operators of a large database to build 0015's and 0016's
    indexes concurrently before migrating; the migrations must then keep those, valid
    and alone, rather than fail or build a second one."""
    engine = create_database_engine(pg_database)
    try:
        _upgrade(engine, "0014")
        guide = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
        match = re.search(r"<!-- live-expiry-index -->\s*```sql\n(.*?)```", guide, re.DOTALL)
        assert match, "docs/operations.md lost its live-expiry-index SQL block"
        dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn, autocommit=True) as connection:
            for statement in match.group(1).split(";"):
                if statement.strip():  # CONCURRENTLY: outside a transaction, one at a time
                    connection.execute(statement.encode())
        _upgrade(engine, "0024")  # 0025 replaces the live-expiry index (its own test)
        with psycopg.connect(dsn) as connection:
            indexes = connection.execute(
                "SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid)"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid IN ('tokens'::regclass, 'audit_cosignatures'::regclass)"
            ).fetchall()
    finally:
        engine.dispose()
    built = {str(name): (valid, str(definition)) for name, valid, definition in indexes}
    assert built["ix_tokens_live_expires_at"][0] is True
    assert "WHERE (deleted_at IS NULL)" in built["ix_tokens_live_expires_at"][1]
    assert built["ix_audit_cosignatures_witness"][0] is True
    expiry = [d for _, d in built.values() if "(expires_at)" in d and "deleted_at IS NULL" in d]
    assert len(expiry) == 1, built
    by_witness = [d for _, d in built.values() if "(witness, key_id, tree_size)" in d]
    assert len(by_witness) == 1, built


def test_0020_adds_the_ceremony_certificates_and_keeps_the_rows(engine: Engine) -> None:
    """Additive: older rows keep a NULL certificate (not checked against the CRL), and a
    downgrade to 0019 drops the columns and keeps the rows."""
    _upgrade(engine, "0019")
    _ceremony_approved_by_bob(engine, "data")
    migrate(engine)
    with engine.connect() as connection:
        ceremony = connection.execute(
            text("SELECT proposer_keyid, proposer_certificate FROM key_ceremonies")
        ).one()
        approval = connection.execute(text("SELECT keyid, certificate FROM key_approvals")).one()
        compatible = connection.execute(text("SELECT min_code_revision FROM cofre_schema"))
        assert compatible.scalar_one() == "0018"  # a rolling upgrade from 0018 or 0019
    assert tuple(ceremony) == ("k-alice", None)
    assert tuple(approval) == ("k-bob", None)
    _downgrade(engine, "0019")
    with engine.connect() as connection:
        for table, column in (
            ("key_ceremonies", "proposer_certificate"),
            ("key_approvals", "certificate"),
        ):
            assert column not in {c["name"] for c in inspect(connection).get_columns(table)}
        assert connection.execute(text("SELECT keyid FROM key_approvals")).scalar_one() == "k-bob"
