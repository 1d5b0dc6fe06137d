"""Key substitution (PCI DSS 3.7.7): a key someone with the crypto-user PIN plants on the
token under the next Cofre label is never used, and is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.keys import KeyKind
from hsm.provider import HSMProvider
from tests.support.softhsm import settled_ready
from vault.errors import KeyNotRegistered, StorageUnavailable
from vault.key_registry import KeyRegistry
from vault.service import VaultService
from vault.storage.database import create_database_engine


def _registered(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        return [json.loads(p) for p in rows if p.startswith('{"action":"key.register"')]


def test_first_start_adopts_the_token_and_records_it(service: VaultService, engine: Engine) -> None:
    service.initialize()
    records = {r["key_id"]: r["details"] for r in _registered(engine)}
    assert set(records) >= {"cofre-kek-v1", "cofre-fp-v1", "cofre-audit-v1"}
    kek = records["cofre-kek-v1"]
    assert isinstance(kek, dict)
    assert str(kek["check"]).startswith("kcv:")
    assert len(str(kek["cka_id"])) >= 2
    assert str(records["cofre-audit-v1"]["check"]).startswith("ec-point-sha256:")  # type: ignore[index]
    assert settled_ready(service.check_ready)["key_registry"] == "ok"


def test_a_planted_newer_key_is_never_used_and_fails_readiness(
    service: VaultService, planted: str
) -> None:
    service.initialize()
    registry = service.keyring.registry
    # Today's rule, newest label wins, would pick cofre-kek-v9.
    assert registry.current_label(KeyKind.KEK) == "cofre-kek-v1"
    assert registry.unregistered() == [planted]
    with pytest.raises(KeyNotRegistered, match=planted) as caught:
        service.check_ready()
    assert caught.value.code == "hsm_key_unregistered"


def test_an_unreachable_database_is_storage_unavailable_not_a_500(
    hsm_provider: HSMProvider, tmp_path: Path
) -> None:
    """A full run met PostgreSQL stopped while a tokenize read the fingerprint key list:
    the registry's own read let SQLAlchemy's OperationalError through, and the API
    answered 500 internal_error. Database errors are translated at the vault's edge."""
    engine = create_database_engine(f"sqlite:///{tmp_path / 'missing' / 'v.sqlite3'}")
    registry = KeyRegistry(engine, hsm_provider)
    with pytest.raises(StorageUnavailable):
        registry.versions(KeyKind.FINGERPRINT)
    engine.dispose()
