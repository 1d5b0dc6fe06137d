"""Key custodians' acknowledgements (PCI DSS 3.6.1.2, 3.7.8): the officer signs the
statement with their MFA key; the vault checks identity, role, keys, date and signature,
records it in the audit log, and lists it for evidence bundles."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Final

import pytest
from sqlalchemy import Engine

from api.routes.custody import CustodyRequest
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from policies.loader import parse_policy
from tests.support.officers import SigningOfficer, software_officers
from tests.vault.conftest import TEST_POLICY
from vault.custody import ACKNOWLEDGE, Custody, custody_statement
from vault.errors import CustodyStatementInvalid
from vault.service import VaultService

ALICE = "spiffe://cofre/officer-alice"
KEYS = ["cofre-audit-v1", "cofre-fp-v1", "cofre-kek-v1"]


def _sign(officer: SigningOfficer, statement: bytes) -> str:
    return base64.b64encode(officer.sign(statement)).decode()


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


def test_signed_acknowledgement_is_recorded(custody: Custody) -> None:
    alice = software_officers()["officer-alice"]
    statement = custody.statement_for(ALICE)
    assert json.loads(statement)["keys"] == KEYS
    assert json.loads(statement)["role"] == "security_officer"
    recorded = custody.acknowledge(ALICE, statement, _sign(alice, statement.encode()), "req-1")
    assert recorded["keyid"] == alice.keyid
    [listed] = custody.acknowledgements()
    assert (listed["identity"], listed["statement"]) == (ALICE, statement)
    assert listed["public_key"] == alice.pem
    assert listed["at"]


def test_forged_or_wrong_statements_are_refused(custody: Custody) -> None:
    alice, bob = software_officers()["officer-alice"], software_officers()["officer-bob"]
    today = datetime.now(UTC).date()
    good = custody_statement(ALICE, "security_officer", KEYS, today)
    cases = {
        "another officer's key": (good, _sign(bob, good)),
        "signature over another statement": (
            good,
            _sign(alice, custody_statement(ALICE, "security_officer", KEYS[:1], today)),
        ),
        "another identity": (
            custody_statement("spiffe://cofre/officer-bob", "security_officer", KEYS, today),
            None,
        ),
        "another role": (custody_statement(ALICE, "auditor", KEYS, today), None),
        "a key Cofre does not use": (
            custody_statement(ALICE, "security_officer", [*KEYS, "cofre-kek-v9"], today),
            None,
        ),
        "no key": (custody_statement(ALICE, "security_officer", [], today), None),
        "last week": (
            custody_statement(ALICE, "security_officer", KEYS, today - timedelta(days=7)),
            None,
        ),
        "not canonical": (json.dumps(json.loads(good), indent=1).encode(), None),
    }
    for name, (statement, signature) in cases.items():
        with pytest.raises(CustodyStatementInvalid):
            custody.acknowledge(ALICE, statement.decode(), signature or _sign(alice, statement))
        assert custody.acknowledgements() == [], name


def test_non_officers_are_denied(custody: Custody) -> None:
    with pytest.raises(PolicyDenied):
        custody.statement_for("spiffe://cofre/payments")
    assert ACKNOWLEDGE == "key.custody.acknowledge"


# The ceremony review: a statement whose ``keys`` holds something other than strings (a
# list, an object, a number beside a string) raised a `TypeError` while the vault built
# the statement to compare with: a 500 on an admin endpoint, where the contract is 422.
@pytest.mark.parametrize("keys", [[["cofre-kek-v1"]], [{"a": 1}], [1, "cofre-kek-v1"], [None]])
def test_odd_keys_are_an_invalid_statement_not_a_500(custody: Custody, keys: list[object]) -> None:
    statement = json.dumps(
        {"date": datetime.now(UTC).date().isoformat(), "keys": keys, "type": "x"},
        sort_keys=True,
        separators=(",", ":"),
    )
    with pytest.raises(CustodyStatementInvalid):
        custody.acknowledge(ALICE, statement, "AAAA")


def test_a_deeply_nested_statement_is_invalid_not_a_500(custody: Custody, engine: Engine) -> None:
    """2,000 nested arrays exceed the JSON parser's recursion limit: `RecursionError`, no
    `ValueError`, was a 500. They fit the length a statement may have when 200 key
    versions are in force (it is the statement the vault asks for, and some)."""
    many = Custody(engine, _ManyKeys(200), custody._policy)  # type: ignore[arg-type]
    for vault in (custody, many):
        with pytest.raises(CustodyStatementInvalid):
            vault.acknowledge(ALICE, "[" * 2000 + "]" * 2000, "AAAA")


class _ManyKeys:
    """A registry of `count` Cofre key versions in force (twelve: a year of rotations),
    audit keys, the kind whose versions stay in force (kept to verify old heads): only
    what `Custody` asks of the registry, so the statement grows past an audit detail's
    512 characters, or past 4,096, without those keys on the shared token."""

    def __init__(self, count: int = 12) -> None:
        self.labels: Final = [f"cofre-audit-v{n}" for n in range(1, count + 1)]

    def registered(self, *, fresh: bool = False) -> dict[str, object]:
        return dict.fromkeys(self.labels)

    def in_force(self) -> list[str]:
        return sorted(self.labels)


def test_a_long_statement_is_recorded_whole(custody: Custody, engine: Engine) -> None:
    """Session 34: the statement went into the entry as a detail string, which the audit
    log cuts at 512 characters; with nine key versions or more the recorded statement was
    cut, so neither its signature nor the evidence verifier's check could hold, and the
    officer's acknowledgement was lost for good in the append-only log."""
    alice = software_officers()["officer-alice"]
    long = Custody(engine, _ManyKeys(), custody._policy)  # type: ignore[arg-type]
    statement = long.statement_for(ALICE)
    assert len(statement) > 512
    long.acknowledge(ALICE, statement, _sign(alice, statement.encode()))
    [listed] = long.acknowledgements()
    assert listed["statement"] == statement


def test_250_versions_in_force_are_acknowledged_and_longer_is_refused_unread(
    custody: Custody, engine: Engine
) -> None:
    """Session 35: a statement was refused past 4,096 characters, about 200 key
    versions, whether or not it was the one the vault asked for. What bounds it now is
    that statement: 250 versions in force are acknowledged (through the API's model
    too), and a statement longer than the one asked for, by more than a stale fetch
    could make it, is refused before it is parsed."""
    alice = software_officers()["officer-alice"]
    many = Custody(engine, _ManyKeys(250), custody._policy)  # type: ignore[arg-type]
    statement = many.statement_for(ALICE)
    assert len(statement) > 4096
    CustodyRequest(statement=statement, signature="AAAA")  # the API takes it
    many.acknowledge(ALICE, statement, _sign(alice, statement.encode()))
    padded = statement.replace('"keys":[', '"keys":[' + '"cofre-kek-v999",' * 80, 1)
    with pytest.raises(CustodyStatementInvalid, match="longer than the statement"):
        many.acknowledge(ALICE, padded, _sign(alice, padded.encode()))
    assert len(many.acknowledgements()) == 1
