"""The custody statement names the key versions in force, not every version ever
registered (PCI DSS 3.7.8: a custodian acknowledges the keys they hold now).

Session 35: the statement listed every registered version, destroyed ones included, and
the vault refused a statement over 4,096 characters. Past about 235 registered versions
(years of rotations of the KEK and the fingerprint key, each old version destroyed after
its grace) no officer could acknowledge custody, and with the custody gate
(`vault._custody_gate`) every key ceremony stopped: key management halted. A private
token (versions are made and destroyed on it), SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine

from audit.log import AuditEvent, AuditLog, Outcome
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.officers import software_officers
from tests.vault.conftest import TEST_POLICY
from vault._custody_gate import custody_refusal
from vault.custody import ACKNOWLEDGE, Custody, custody_statement
from vault.errors import CustodyStatementInvalid
from vault.key_registry import KeyRegistry

# The private token, on SoftHSM2 only: these tests make and destroy hundreds of versions.
pytestmark = pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)

ALICE = "spiffe://cofre/officer-alice"
# Versions made per kind, all but the last `KEPT` destroyed: 260 registered in all,
# past what 4,096 characters held (about 235), about eleven years of monthly rotations.
MADE, KEPT = 130, 2


def _policy() -> PolicyEngine:
    alice = software_officers()["officer-alice"]
    text = TEST_POLICY.replace(
        'operations = ["key_admin", "audit_read"]\n',
        f'operations = ["key_admin", "audit_read"]\nmfa_public_key = """{alice.pem}"""\n',
    )
    return PolicyEngine(parse_policy(text, kind="toml").policy)


def _sign(statement: str) -> str:
    alice = software_officers()["officer-alice"]
    return base64.b64encode(alice.sign(statement.encode())).decode()


@dataclass
class Keys:
    """The private token's registry, and the versions this module made on it."""

    engine: Engine
    provider: HSMProvider
    registry: KeyRegistry
    adopted: list[str]  # what the token held, adopted at the vault's first start
    made: list[str] = field(default_factory=list)

    def make(self, kind: KeyKind) -> str:
        """A new version of `kind`, registered as a ceremony registers one."""
        top = max([0, *KeyHierarchy(self.provider).versions(kind)])
        label = key_label(kind, top + 1)
        KeyHierarchy(self.provider).create(kind, top + 1)
        self.made.append(label)
        with self.engine.begin() as connection:
            self.registry.register(connection, label, actor="cofre rotation", how="test ceremony")
        return label

    def destroy(self, label: str) -> None:
        """Destroy `label` as a rotation does after its grace: the entry, then the key."""
        with self.engine.begin() as connection:
            AuditLog().append(
                connection,
                AuditEvent(
                    action="key.destroy",
                    outcome=Outcome.SUCCESS,
                    actor="cofre rotation",
                    key_id=label,
                    details={"ceremony": "c-test"},
                ),
            )
            self.provider.destroy_key(label)


@pytest.fixture
def keys(engine: Engine, rotation_provider: HSMProvider) -> Iterator[Keys]:
    registry = KeyRegistry(engine, rotation_provider)
    # Its versions are registered "as a ceremony would", unsigned: as the in-process
    # ceremonies' registry takes them (session 40: a served vault takes signed ones).
    policy = PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy)
    registry.trust_officers(lambda: policy, None, insecure_unsigned_ceremonies=True)
    made = Keys(engine, rotation_provider, registry, registry.adopt_if_empty())
    try:
        yield made
    finally:  # the token as it was, for the next test that rotates on it
        for label in made.made:
            if rotation_provider.has_key(label):
                rotation_provider.destroy_key(label)


def test_years_of_rotations_leave_custody_acknowledgeable(keys: Keys) -> None:
    """260 registered versions, all but a few destroyed: the statement names the versions
    in force (those on the token), the officer signs it and the vault records it; the
    gate then lets them take part in the next ceremony."""
    kept = []
    for kind in (KeyKind.KEK, KeyKind.FINGERPRINT):
        made = [keys.make(kind) for _ in range(MADE)]
        for label in made[:-KEPT]:
            keys.destroy(label)
        kept += made[-KEPT:]
    assert len(keys.registry.registered(fresh=True)) >= 2 * MADE
    custody = Custody(keys.engine, keys.registry, _policy)
    statement = custody.statement_for(ALICE)
    recorded = custody.acknowledge(ALICE, statement, _sign(statement))
    assert recorded["statement"] == statement
    assert json.loads(statement)["keys"] == sorted(keys.adopted + kept)
    with keys.engine.connect() as connection:
        assert custody_refusal(connection, _policy(), ALICE, unsigned=False) is None


def test_a_rotation_between_fetching_and_signing_asks_for_the_statement_again(
    keys: Keys,
) -> None:
    """The vault takes exactly the statement it asks for at submission. A ceremony that
    made or destroyed a version after the officer fetched it makes that statement stale:
    refused, naming the version, and the statement fetched again is taken. An
    acknowledgement already in force stays in force across the rotation (the gate
    compares no key versions)."""
    custody = Custody(keys.engine, keys.registry, _policy)
    first = custody.statement_for(ALICE)
    custody.acknowledge(ALICE, first, _sign(first))

    stale = custody.statement_for(ALICE)
    new = keys.make(KeyKind.KEK)
    with pytest.raises(CustodyStatementInvalid, match=f"fetch it again.*{new}|{new}.*fetch"):
        custody.acknowledge(ALICE, stale, _sign(stale))
    fresh = custody.statement_for(ALICE)
    assert new in json.loads(fresh)["keys"]
    custody.acknowledge(ALICE, fresh, _sign(fresh))

    keys.destroy(new)
    with pytest.raises(CustodyStatementInvalid, match=new):
        custody.acknowledge(ALICE, fresh, _sign(fresh))
    with keys.engine.connect() as connection:
        assert custody_refusal(connection, _policy(), ALICE, unsigned=False) is None
    assert len(custody.acknowledgements()) == 2


def test_an_older_statement_naming_destroyed_versions_stays_in_force(keys: Keys) -> None:
    """An acknowledgement recorded by a vault before session 35 named every registered
    version, destroyed ones included: it is the same statement type and text, and the
    gate compares no key versions, so it stays in force after the upgrade."""
    gone = keys.make(KeyKind.FINGERPRINT)
    keys.destroy(gone)
    every = sorted(keys.registry.registered(fresh=True))
    assert gone in every
    today = Custody(keys.engine, keys.registry, _policy)._clock().date()
    older = custody_statement(ALICE, "security_officer", every, today).decode()
    alice = software_officers()["officer-alice"]
    with keys.engine.begin() as connection:
        AuditLog().append(
            connection,
            AuditEvent(
                action=ACKNOWLEDGE,
                outcome=Outcome.SUCCESS,
                actor=ALICE,
                details={"signature": _sign(older), "keyid": alice.keyid, "public_key": alice.pem},
                document=older,
            ),
        )
    with keys.engine.connect() as connection:
        assert custody_refusal(connection, _policy(), ALICE, unsigned=False) is None
