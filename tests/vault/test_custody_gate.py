"""What counts as a key custody acknowledgement in force for a ceremony (PCI DSS 3.7.8,
`vault._custody_gate`): the current statement, signed by the MFA key the policy
registers for the officer now. Entries written straight into the audit log (as whoever
can write the database could) with a statement of another text, or a signature their
key did not make, do not count; an officer whose token was replaced acknowledges again."""

from __future__ import annotations

import base64
import json

from sqlalchemy import Engine

from audit.log import AuditEvent, AuditLog, Outcome
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.custody import acknowledge_in_process
from tests.support.officers import SigningOfficer, new_software_officer
from tests.vault.conftest import ALICE, TEST_POLICY
from vault._custody_gate import custody_refusal
from vault.custody import ACKNOWLEDGE, Custody, canonical
from vault.service import VaultService


def _policy(key: SigningOfficer | None) -> PolicyEngine:
    text = TEST_POLICY
    if key is not None:
        head = f'[identities."{ALICE}"]\n'
        text = text.replace(head, f'{head}mfa_public_key = """{key.pem}"""\n')
    return PolicyEngine(parse_policy(text, kind="toml").policy)


def _refusal(engine: Engine, policy: PolicyEngine, *, unsigned: bool = False) -> str | None:
    with engine.connect() as connection:
        refusal = custody_refusal(connection, policy, ALICE, unsigned=unsigned)
    return None if refusal is None else str(refusal)


def _written(engine: Engine, statement: str, signer: SigningOfficer, key: SigningOfficer) -> None:
    """An acknowledgement entry by Alice written into the log by hand: `statement`
    signed by `signer`, recorded under `key`'s id and public key."""
    details = {
        "statement": statement,
        "signature": base64.b64encode(signer.sign(statement.encode())).decode(),
        "keyid": key.keyid,
        "public_key": key.pem,
    }
    with engine.begin() as connection:
        AuditLog().append(
            connection,
            AuditEvent(action=ACKNOWLEDGE, outcome=Outcome.SUCCESS, actor=ALICE, details=details),
        )


def test_an_acknowledgement_is_needed_and_then_in_force(
    engine: Engine, service: VaultService
) -> None:
    alice = new_software_officer("officer-alice")
    policy = _policy(alice)
    refusal = _refusal(engine, policy)
    assert refusal is not None
    assert "cofre keys acknowledge-custody" in refusal
    acknowledge_in_process(engine, service, policy, {ALICE: alice})
    assert _refusal(engine, policy) is None


def test_a_replaced_token_acknowledges_again(engine: Engine, service: VaultService) -> None:
    old, new = new_software_officer("officer-alice"), new_software_officer("officer-alice")
    acknowledge_in_process(engine, service, _policy(old), {ALICE: old})
    refusal = _refusal(engine, _policy(new))
    assert refusal is not None
    assert "no longer registers" in refusal
    acknowledge_in_process(engine, service, _policy(new), {ALICE: new})
    assert _refusal(engine, _policy(new)) is None


def test_hand_written_acknowledgements_do_not_count(engine: Engine, service: VaultService) -> None:
    alice, mallory = new_software_officer("officer-alice"), new_software_officer("mallory")
    policy = _policy(alice)
    statement = Custody(engine, service.keyring.registry, lambda: policy).statement_for(ALICE)
    # Signed by another key, recorded under Alice's.
    _written(engine, statement, mallory, alice)
    # Alice's genuine signature over a statement of another text (an older version).
    older = json.loads(statement)
    older["text"] = "I look after some keys."
    _written(engine, canonical(older).decode(), alice, alice)
    # Another type of statement.
    other = json.loads(statement)
    other["type"] = "cofre-key-custody/v0"
    _written(engine, canonical(other).decode(), alice, alice)
    assert _refusal(engine, policy) is not None
    _written(engine, statement, alice, alice)  # the genuine one (as the vault records it)
    assert _refusal(engine, policy) is None


def test_only_unsigned_in_process_callers_skip_it_for_an_officer_with_no_mfa_key(
    engine: Engine,
) -> None:
    assert _refusal(engine, _policy(None), unsigned=True) is None
    refusal = _refusal(engine, _policy(None))
    assert refusal is not None
    assert "no MFA key" in refusal
