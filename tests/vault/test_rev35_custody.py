"""Review 35 (attack review of session 34's custody gate): an officer whose identity holds
twelve digits or more in a row (an employee number: ``urn:corp:officer:000123456789``).

The audit log masks card-like digits in everything it records (`audit.log`), the
custody statement (the entry's document) and the actor included. Such an officer's
acknowledgement was accepted and recorded masked: a statement their signature does not
cover, which the offline verifier fails for good (check 6b, an append-only log) and the
custody gate never takes as in force, so the officer, told their acknowledgement was
recorded, was refused every ceremony action all the same. The vault now refuses that
acknowledgement (422 ``custody_statement_invalid``, nothing recorded) and says why.

And what the officer's CLI agrees to sign with that token key (`is_custody_statement`).
"""

from __future__ import annotations

import base64
import json
from datetime import date

import pytest
from sqlalchemy import Engine

from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.officers import SigningOfficer, new_software_officer
from tests.vault.conftest import ALICE, TEST_POLICY
from vault._custody_gate import custody_refusal
from vault.custody import Custody, canonical, custody_statement, is_custody_statement
from vault.errors import CustodyStatementInvalid
from vault.service import VaultService

NUMBERED = "urn:corp:officer:000123456789"
PLACEHOLDER = "urn:corp:officer:numbered"


def _policy(officer: SigningOfficer) -> PolicyEngine:
    head = f'[identities."{ALICE}"]\n'
    text = TEST_POLICY.replace(
        head, f'[identities."{PLACEHOLDER}"]\nmfa_public_key = """{officer.pem}"""\n'
    )
    policy = parse_policy(text, kind="toml").policy
    # The loader refuses such an identity (review 35, tests/policies/
    # test_rev35_masked_identities.py); the custody check stays for a policy built
    # otherwise, so the identity is put in past the loader's validation.
    renamed = {NUMBERED if k == PLACEHOLDER else k: v for k, v in policy.identities.items()}
    return PolicyEngine(policy.model_copy(update={"identities": renamed}))


def test_an_acknowledgement_the_log_would_mask_is_refused_not_recorded_unverifiable(
    engine: Engine, service: VaultService
) -> None:
    officer = new_software_officer("officer-numbered")
    policy = _policy(officer)
    service.keyring.registry.adopt_if_empty()
    custody = Custody(engine, service.keyring.registry, lambda: policy)
    statement = custody.statement_for(NUMBERED)
    signature = base64.b64encode(officer.sign(statement.encode())).decode()
    refused: CustodyStatementInvalid | None = None
    try:
        custody.acknowledge(NUMBERED, statement, signature)
    except CustodyStatementInvalid as exc:
        refused = exc
    if refused is None:
        recorded = [a["statement"] for a in custody.acknowledgements()]
        with engine.connect() as connection:
            gate = custody_refusal(connection, policy, NUMBERED, unsigned=False)
        pytest.fail(
            f"recorded as {recorded}, not the statement signed ({statement}); "
            f"the gate then says: {gate}"
        )
    assert "identity" in str(refused)
    assert custody.acknowledgements() == []


def test_only_a_canonical_custody_statement_is_one(custody_text: str) -> None:
    """What `cofre keys acknowledge-custody` agrees to sign (`is_custody_statement`;
    the CLI attack: tests/cofre_cli/test_rev35_custody_signing.py)."""
    assert is_custody_statement(custody_text)
    data = json.loads(custody_text)
    others = [
        '"@method": POST\n"@authority": vault.example\n"@path": /v1/admin/keys/rotations',
        json.dumps(data, indent=1),
        canonical({**data, "extra": 1}).decode(),
        canonical({**data, "type": "cofre-key-custody/v0"}).decode(),
        canonical({**data, "text": "I look after some keys."}).decode(),
        custody_text.replace("}", ',"identity":"x"}'),
        custody_text.replace('"date"', '"da\\u0074e"'),
        "[" * 5000,
    ]
    assert [text for text in others if is_custody_statement(text)] == []


@pytest.fixture
def custody_text() -> str:
    return custody_statement(
        ALICE, "security_officer", ["cofre-kek-v1"], date(2026, 12, 5)
    ).decode()
