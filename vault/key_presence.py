"""Which registered keys the token should hold and does not (session 41).

IN PCI SCOPE (key management). Never key material: labels and versions.

A registered version absent from the token leaves the version before it current, with
`/readyz` ready (a bound, docs/threat-model.md): a new key on CloudHSM is not on every
HSM of the cluster at once (docs/cloudhsm.md, "Key availability"), and the vault must not
stop for that. Session 40 showed it in `cofre hsm status` only (a ``MISSING keys`` line,
exit 0). Now that command exits 1 for it, and a running vault names the label in its
informational readiness check `KEY_PRESENCE_CHECK` once it has been absent longer than
``COFRE_HSM__KEY_AVAILABILITY_TIMEOUT_SECONDS`` (readiness stays ready: the version
before it serves), logging a WARNING when that starts and an INFO line when it ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

import structlog
from sqlalchemy import Connection, Engine, select

from cofre.dberrors import database_errors_as
from cofre.errors import CofreError
from hsm.keys import KeyKind, key_label, parse_key_label
from hsm.models import KeyInfo
from hsm.provider import HSMProvider
from vault.errors import StorageUnavailable
from vault.key_registry import KeyRegistry, token_identities
from vault.keyring import KeyState
from vault.storage.schema import data_keys

__all__ = ["KEY_PRESENCE_CHECK", "KeyPresenceCheck", "kek_labels_wrapping", "missing_keys"]

_log = structlog.get_logger("cofre.vault")

# The informational readiness check's name (`api.health.INFORMATIONAL_CHECKS`): stable,
# alerts and dashboards select on it.
KEY_PRESENCE_CHECK: Final = "hsm_key_presence"


def kek_labels_wrapping(connection: Connection) -> set[str]:
    """The KEK labels under which a data key not yet destroyed is stored: each must stay
    on the token until a rotation has rewrapped every such data key."""
    query = (
        select(data_keys.c.kek_label)
        .where(data_keys.c.state != KeyState.DESTROYED.value)
        .distinct()
    )
    return {str(label) for label in connection.execute(query).scalars()}


def missing_keys(
    registered: Iterable[str], listed: list[KeyInfo], wrapping: Iterable[str] = ()
) -> list[str]:
    """The `registered` labels that should be on the token (`listed`) and are not,
    sorted: the newest registered version of each kind, every audit key (kept to verify
    the heads it signed), and every KEK in `wrapping` (`kek_labels_wrapping`: data keys
    still stored under it). An older KEK or fingerprint version is destroyed by its
    rotation, so its absence alone says nothing."""
    labels = set(registered)
    on_token = token_identities(listed)
    newest: dict[KeyKind, int] = {}
    expected = set(wrapping)
    for label in labels:
        parsed = parse_key_label(label)
        if parsed is None:
            continue
        newest[parsed[0]] = max(newest.get(parsed[0], 0), parsed[1])
        if parsed[0] is KeyKind.AUDIT:
            expected.add(label)
    expected |= {key_label(kind, version) for kind, version in newest.items()}
    return sorted(label for label in expected if label in labels and label not in on_token)


def _earlier_on_token(label: str, present: set[str]) -> bool:
    """Whether the token holds an earlier version of `label`'s kind (the one that serves
    while `label` is missing); True for a label that names no Cofre key version."""
    parsed = parse_key_label(label)
    if parsed is None:
        return True
    kind, version = parsed
    return any(
        (other := parse_key_label(on_token)) is not None and other[0] is kind and other[1] < version
        for on_token in present
    )


class KeyPresenceCheck:
    """The informational readiness check `KEY_PRESENCE_CHECK`: ``"ok"``, or the labels
    `missing_keys` has named for longer than `grace` seconds (the token's
    ``key_availability_timeout``). Never raises: a registry or token it cannot read is
    named by its error's code (readiness fails on that already, by its own check)."""

    def __init__(
        self,
        engine: Engine,
        provider: HSMProvider,
        registry: KeyRegistry,
        *,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._provider = provider
        self._registry = registry
        self._grace = grace
        self._clock = clock
        self._lock = threading.Lock()
        # Each label missing now, and since when (this process's clock).
        self._since: dict[str, float] = {}
        # The labels named, and those of them nothing serves in the stead of.
        self._named: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def check(self) -> str:
        """``"ok"``, or ``"hsm_key_missing: <labels> (…)"``, saying whether the version
        before each serves or none of its kind is on the token."""
        try:
            missing, present, wrapping = self._missing()
        except CofreError as exc:
            return exc.code
        now = self._clock()
        # A KEK that data keys are stored under serves them alone: they are unwrapped
        # under the label their row names, never an earlier one (review 46b).
        with self._lock:
            self._since = {label: self._since.get(label, now) for label in missing}
            late = tuple(label for label, since in self._since.items() if now - since > self._grace)
            alone = tuple(
                label
                for label in late
                if label in wrapping or not _earlier_on_token(label, present)
            )
            # Logged again when what serves changes too: an earlier version destroyed
            # while the newest is missing turns the WARNING into the ERROR (review 46b).
            changed, self._named = (late, alone) != self._named, (late, alone)
        if changed:
            self._log_change(late, alone)
        if not late:
            return "ok"
        if alone:
            # Session 46's drill: the only fingerprint key destroyed, every tokenize
            # answered 503 while this said "the version before serves".
            serves = (
                f"no earlier version of {', '.join(alone)} is on the token either: the "
                "calls that need it answer 503 hsm_key_not_found"
            )
        else:
            serves = "the version before serves"
        return (
            f"hsm_key_missing: {', '.join(late)} (registered, not on the token for more than "
            f"{self._grace:g} s; {serves}: docs/operations.md, "
            '"Incident: a Cofre key missing from the token")'
        )

    def _missing(self) -> tuple[list[str], set[str], set[str]]:
        """The registered labels missing from the token (`missing_keys`), every label on
        it, and the KEK labels data keys are stored under (`kek_labels_wrapping`)."""
        registered = self._registry.registered()
        if not registered:
            return [], set(), set()
        listed = self._provider.list_keys_for_check()
        with database_errors_as(StorageUnavailable, "the token store"), self._engine.connect() as c:
            wrapping = kek_labels_wrapping(c)
        on_token = {key.label for key in listed}
        return missing_keys(registered, listed, wrapping), on_token, wrapping

    def _log_change(self, late: tuple[str, ...], alone: tuple[str, ...]) -> None:
        if alone:
            # Nothing serves in their stead: calls fail now, not only a rotation's key.
            _log.error(
                "registered keys missing from the token, no earlier version either",
                check=KEY_PRESENCE_CHECK,
                missing=list(late),
                nothing_serves=list(alone),
                grace_seconds=self._grace,
            )
        elif late:
            _log.warning(
                "registered keys missing from the token",
                check=KEY_PRESENCE_CHECK,
                missing=list(late),
                grace_seconds=self._grace,
            )
        else:
            _log.info("registered keys on the token again", check=KEY_PRESENCE_CHECK)
