"""Review cer: a custody statement whose ``keys`` holds something other than strings (a
list, an object, a number beside a string) raised a `TypeError` while the vault built
the statement to compare with (``sorted(set(keys))``): a 500 on an admin endpoint, where
the contract is 422 ``custody_statement_invalid``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.officers import software_officers
from tests.vault.conftest import TEST_POLICY
from vault.custody import Custody
from vault.errors import CustodyStatementInvalid
from vault.service import VaultService

ALICE = "spiffe://cofre/officer-alice"


@pytest.fixture
def custody(service: VaultService, engine: Engine) -> Custody:
    alice = software_officers()["officer-alice"]
    text = TEST_POLICY.replace(
        'operations = ["key_admin", "audit_read"]\n',
        f'operations = ["key_admin", "audit_read"]\nmfa_public_key = """{alice.pem}"""\n',
    )
    policy = PolicyEngine(parse_policy(text, kind="toml").policy)
    service.keyring.registry.adopt_if_empty()
    return Custody(engine, service.keyring.registry, lambda: policy)


@pytest.mark.parametrize("keys", [[["cofre-kek-v1"]], [{"a": 1}], [1, "cofre-kek-v1"], [None]])
def test_odd_keys_are_an_invalid_statement_not_a_500(custody: Custody, keys: list[object]) -> None:
    statement = json.dumps(
        {"date": datetime.now(UTC).date().isoformat(), "keys": keys, "type": "x"},
        sort_keys=True,
        separators=(",", ":"),
    )
    with pytest.raises(CustodyStatementInvalid):
        custody.acknowledge(ALICE, statement, "AAAA")


def test_a_deeply_nested_statement_is_invalid_not_a_500(custody: Custody) -> None:
    """2,000 nested arrays fit the 4,096 characters a statement may have and exceed the
    JSON parser's recursion limit: `RecursionError`, no `ValueError`, was a 500."""
    with pytest.raises(CustodyStatementInvalid):
        custody.acknowledge(ALICE, "[" * 2000 + "]" * 2000, "AAAA")
