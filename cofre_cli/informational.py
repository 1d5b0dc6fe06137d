"""The readiness checks that inform without failing readiness (`api.health.INFORMATIONAL_CHECKS`),
each run on its own.

IN PCI SCOPE (wiring). Review 35: they were run as one dictionary, so one check that
raised (the cryptoperiod check with ``COFRE_KEYS__OVERDUE_FAILS_READINESS`` set and a key
overdue, or a database error in one of them) took the whole run with it: the gauge
`cofre.readiness.informational_failing` reported no series at all, not even the failing
check's, while the node was unready for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from audit.publisher import PublisherThread
from audit.sequencer import SequencerThread
from cofre.errors import CofreError
from cofre_cli.witnessing import witness_checks
from vault.cryptoperiod import CryptoperiodMonitor
from vault.key_presence import KEY_PRESENCE_CHECK, KeyPresenceCheck
from vault.purge import PurgeWorker
from vault.rotation_worker import RotationWorker


class InformationalChecks:
    """`checks`: each informational check by name, returning "ok" or what fails."""

    def __init__(self, checks: Mapping[str, Callable[[], str]]) -> None:
        self._checks = dict(checks)

    def _run(self) -> tuple[dict[str, str], list[CofreError]]:
        notes: dict[str, str] = {}
        raised: list[CofreError] = []
        for name, check in self._checks.items():
            try:
                notes[name] = check()
            except CofreError as exc:
                # Failing, by its code: a check's text is not for every reader.
                notes[name] = exc.code
                raised.append(exc)
        return notes, raised

    def notes(self) -> dict[str, str]:
        """Every check's note (the gauge's): one that raised is failing, by its error's
        code, and never hides the others."""
        return self._run()[0]

    def for_readiness(self) -> dict[str, str]:
        """Every check's note, for the readiness answer; raises the first error a check
        raised (that check fails readiness: the overdue keys, when so configured)."""
        notes, raised = self._run()
        if raised:
            raise raised[0]
        return notes


def informational_checks(
    thread: SequencerThread,
    periods: CryptoperiodMonitor,
    publisher: PublisherThread | None,
    quorum: int,
    background: tuple[PurgeWorker, RotationWorker],
    presence: KeyPresenceCheck,
) -> InformationalChecks:
    """The checks that inform, never failing readiness (`api.health.INFORMATIONAL_CHECKS`):
    the queue's oldest entry; the expiring and overdue keys (raises only when
    COFRE_KEYS__OVERDUE_FAILS_READINESS is set); with witnesses, how far their quorum
    trails; since when and why a background loop fails (requests are still served and
    the next tick may work; the log says when failing starts and ends); a registered key
    missing from the token past the key availability timeout (`presence`, session 41:
    the version before it serves)."""
    purge, rotation = background
    checks: dict[str, Callable[[], str]] = {
        "audit_sequencer": thread.queue_check,
        "key_cryptoperiods": periods.check,
    }
    if publisher is not None:
        checks["audit_witnesses"] = lambda: witness_checks(publisher, quorum)["audit_witnesses"]
    checks |= {"token_purge": purge.health.check, "key_rotation": rotation.health.check}
    checks[KEY_PRESENCE_CHECK] = presence.check
    return InformationalChecks(checks)
