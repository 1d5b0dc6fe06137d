"""Attack 49c: the key registry reads `key.register` records that evidence check 6d
never sees.

The registry is the log's `key.register` entries (`vault.key_registry`), read with the
SQL predicate ``payload LIKE '{"action":"key.register",%'`` and then only by their
details: neither the record's outcome nor its action (beyond that predicate) is read.
Check 6d (`cofre_evidence_verifier.key_registrations`) counts only successful entries
whose action is exactly ``key.register``. The vault writes nothing else, but a writer of
the database writes what they like:

- a ``key.register`` with outcome ``failed`` (or ``denied``) naming another key under
  ``cofre-fp-v1``: the registry takes it, and the label, now registered as two keys, is
  never used again (session 37), so every tokenize stops; the period's bundle VERIFIES,
  its check 6d silent (a successful record of the same content fails the bundle:
  `tests/cofre_evidence_verifier/test_reg37_version_one.py`);
- on SQLite, whose LIKE ignores ASCII case, the same record with its action spelt
  ``Key.Register``, which no check reads as a registration at all.

The vault's key is not replaced (a label registered twice is refused, not used), so
this is an outage the evidence does not attribute, not a substitution. What should
hold: a record the vault never writes (not a success, or another action) registers
nothing, so the registry and check 6d read the same records.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from audit.log import AuditEvent, AuditLog, Outcome
from hsm.keys import KeyKind
from vault.key_registry import KeyIdentity
from vault.service import VaultService

LABEL = "cofre-fp-v1"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("action", "outcome"),
    [
        ("key.register", Outcome.FAILED),
        ("key.register", Outcome.DENIED),
        ("Key.Register", Outcome.SUCCESS),
    ],
)
def test_a_record_check_6d_ignores_registers_nothing(
    service: VaultService, engine: Engine, action: str, outcome: Outcome
) -> None:
    registry = service.keyring.registry
    genuine = registry.registered(fresh=True)[LABEL]
    assert registry.current_label(KeyKind.FINGERPRINT) == LABEL
    planted = {"label": LABEL, "cka_id": "AQID", "check": "kcv:000000", "how": "cofre hsm init"}
    with engine.begin() as connection:
        AuditLog().append(
            connection,
            AuditEvent(action=action, outcome=outcome, actor="dba", key_id=LABEL, details=planted),
        )
    after = registry.registered(fresh=True)[LABEL]
    assert after == genuine, (
        f"a {action!r} record with outcome {outcome.value!r}, which evidence check 6d "
        f"does not read, changed the registry's {LABEL}: {after}"
    )
    assert isinstance(after, KeyIdentity)
    assert registry.current_label(KeyKind.FINGERPRINT) == LABEL
