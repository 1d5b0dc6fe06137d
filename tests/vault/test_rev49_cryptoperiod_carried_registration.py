"""rev49 (review of 974bbdb, atk49c): a retention run's carried copy of a key's
registration restarts the key's cryptoperiod.

`CryptoperiodMonitor._registered_at` dates each token key by the ``created_at`` of its
label's last ``key.register`` record. Online retention (`audit.retention`
`_carry_forward_key_records`) appends, when it drops the partition holding a key's
registration, a copy of that record (details ``carried_forward_from``, outcome success:
974bbdb reads it as a registration, as before). The copy's ``created_at`` is the day of
the retention run, so the key in use reads as registered that day: a KEK registered 13
months ago, whose registration's partition retention dropped, reads as registered on the
day of the last retention run and is never reported overdue (PCI DSS 3.6.1.1 and 3.7.4:
the configured cryptoperiod, 365 days by default, is what readiness and the metric
watch). With the default ``online_retention_months`` of 3 the copy sits in a partition
dropped three months later and is carried again: the KEK never reads as older than about
four months.

Here (SQLite, which keeps one table: the original stays, as on PostgreSQL until its
partition goes) the copy is appended as retention appends it, 100 days after the
adoption; at day 400 the KEK must be overdue. Fixed in session 49 (a strict xfail
until then): retention's copy says its original's time (``details.registered_at``,
carried on by a copy of a copy: tests/audit/test_ret37_carried_registrations.py), the
monitor dates the key by it, and check 6d requires it to be the original's
(tests/cofre_evidence_verifier/test_ret37_carried.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from audit.log import AuditEvent, AuditLog, Outcome
from audit.schema import audit_entries
from vault.cryptoperiod import CryptoperiodMonitor, Cryptoperiods, PeriodState
from vault.key_registry import REGISTER_RECORDS
from vault.service import VaultService


@pytest.mark.parametrize("said", ["original", "later"])
def test_a_carried_registration_does_not_restart_the_kek_s_cryptoperiod(
    service: VaultService, engine: Engine, said: str
) -> None:
    """The copy says its original's time (``registered_at``, session 49), which the
    monitor reads; a copy that says a later time than its own record's (a database
    writer's) is dated no later than its record."""
    service.keyring.registry.adopt_if_empty()
    start = datetime.now(UTC)
    with engine.connect() as connection:
        payloads = (
            connection.execute(select(audit_entries.c.payload).where(text(REGISTER_RECORDS)))
            .scalars()
            .all()
        )
    kek = next(json.loads(p) for p in payloads if json.loads(p).get("key_id") == "cofre-kek-v1")

    class _Later(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return start + timedelta(days=100)

    # What `audit.retention._carry_forward_key_records` appends for it.
    with engine.begin() as connection:
        AuditLog(clock=_Later).append(
            connection,
            AuditEvent(
                action="key.register",
                outcome=Outcome.SUCCESS,
                actor="cofre retention",
                key_id="cofre-kek-v1",
                details={
                    **kek["details"],
                    "carried_forward_from": 1,
                    "registered_at": kek["time"] if said == "original" else "2099-01-01T00:00:00Z",
                },
            ),
        )
    monitor = CryptoperiodMonitor(
        engine,
        service.keyring,
        Cryptoperiods(),
        fail_readiness=False,
        clock=lambda: start + timedelta(days=400),
    )
    states = {p.key: p.state for p in monitor.assess()}
    expected = PeriodState.OVERDUE if said == "original" else PeriodState.OK
    assert states["cofre-kek-v1"] is expected, (
        "the KEK, registered 400 days ago, reads as 300 days old: retention's carried copy "
        f"of its registration restarted its cryptoperiod ({states})"
    )
