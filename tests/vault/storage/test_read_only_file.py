"""SQLite: a database file that could not be written for a while (its permissions or
mount changed and were put back, an immutable flag set and cleared) is a fault the
vault recovers from by itself, as from a full disk (docs/operations.md, "Failure
behaviour"). Review 39: a connection SQLite opened during the fault (a readiness probe,
the early rate check) is read-only for good; the pool kept it, and after the file was
writable again every operation that drew it failed with `503 storage_unavailable`
("attempt to write a readonly database"), until the process restarted."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from cofre.errors import CofreError
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.pans import card_number
from tests.vault.conftest import PAYMENTS, TEST_POLICY
from vault.errors import StorageUnavailable
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService
from vault.storage.database import create_database_engine, migrate, single_read


def _chattr(flag: str, paths: list[Path]) -> None:
    done = subprocess.run(
        ["chattr", flag, *map(str, paths)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot make the database file read-only: {done.stderr}")
        pytest.skip("chattr +i needs root and a file system with the immutable flag")


@pytest.fixture
def sqlite_vault(tmp_path: Path, hsm_provider: HSMProvider) -> Iterator[tuple[VaultService, Path]]:
    path = tmp_path / "store" / "cofre.sqlite3"
    path.parent.mkdir()
    engine = create_database_engine(f"sqlite:///{path}")
    migrate(engine)
    service = VaultService(
        engine, hsm_provider, PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    )
    service.initialize()
    yield service, path
    service.close()
    engine.dispose()


def _unaudited(engine: Engine) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                text(
                    "SELECT count(*) FROM tokens t WHERE NOT EXISTS (SELECT 1 FROM audit_entries"
                    " a WHERE a.payload LIKE '%' || t.id || '%')"
                )
            ).scalar_one()
        )


def test_the_vault_writes_again_once_the_file_is_writable(
    sqlite_vault: tuple[VaultService, Path],
) -> None:
    service, path = sqlite_vault
    service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("6", 1)), "uuid"))
    read_only = [path, path.with_name(path.name + "-wal")]
    _chattr("+i", read_only)
    codes: list[str] = []
    try:
        # During the fault: readers open connections (reads still work: the early rate
        # checks' reader, audit reads), here ten at once; writes refuse.
        together = threading.Barrier(10)
        reader_engine = single_read(service._engine)

        def read() -> None:
            with reader_engine.connect() as connection:
                connection.execute(text("SELECT count(*) FROM tokens"))
                together.wait(30)

        readers = [threading.Thread(target=read) for _ in range(10)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(30)
        service.check_ready()
        for i in range(3):
            try:
                service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("6", 10 + i)), "uuid"))
            except CofreError as exc:
                codes.append(exc.code)
    finally:
        _chattr("-i", read_only)
    assert set(codes) <= {"storage_unavailable", "audit_unavailable"}, codes
    assert codes, "the fault was not observed"

    failed = 0
    for i in range(20):
        try:
            service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("6", 100 + i)), "uuid"))
        except StorageUnavailable:
            failed += 1
    # At most the first operation to meet a connection of the fault may fail, as a dead
    # PostgreSQL connection may (tests/vault/storage/test_dead_connections.py).
    assert failed <= 1, f"{failed} of 20 tokenize calls failed after the fault cleared"
    assert _unaudited(service._engine) == 0
