"""Schema migrations that change data, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from vault.storage.database import create_database_engine, migrate
from vault.storage.schema_version import MIGRATIONS


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    yield engine
    engine.dispose()


def _upgrade(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


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
