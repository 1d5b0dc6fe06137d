"""What keeps key ceremonies apart and the token clean when one fails (review 38).

IN PCI SCOPE (key management). `vault.rotation` calls these: the ceremony lock that
serialises ceremony writes across nodes, the refusal to start a rotation while another
of its kind runs, and the clean-up of the token keys a failed approval made.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Final

from sqlalchemy import Connection, select, text

from cofre.errors import CofreError
from hsm.provider import HSMProvider
from vault.ceremony import CeremonyState, RotationKind
from vault.errors import CeremonyError
from vault.key_registry import KeyRegistry
from vault.storage.schema import key_ceremonies

# The transaction-scoped advisory lock that serialises ceremony writes (propose, approve,
# cancel) across the nodes of one PostgreSQL: "CofreK". SQLite's BEGIN IMMEDIATE already
# keeps writers apart.
_CEREMONY_LOCK_KEY: Final = 0x436F6672654B


def hold_ceremony_lock(connection: Connection) -> None:
    """Hold the ceremony lock for the rest of `connection`'s transaction. Without it two
    nodes proposing at once both read "none open" and both insert (PostgreSQL, READ
    COMMITTED), and two approvals at once each count the approvals without the other's
    (review 38)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CEREMONY_LOCK_KEY})


def refuse_a_second_run(connection: Connection, kind: RotationKind, ceremony_id: str) -> None:
    """Raise `CeremonyError` when a rotation of `kind` other than `ceremony_id` runs: two
    at once would each retire the key in use, and the first to finish erases the key the
    other is still moving records off (review 38)."""
    running = connection.execute(
        select(key_ceremonies.c.id).where(
            key_ceremonies.c.kind == kind.value,
            key_ceremonies.c.state == CeremonyState.RUNNING.value,
            key_ceremonies.c.id != ceremony_id,
        )
    ).first()
    if running is not None:
        raise CeremonyError(
            f"a {kind.value} rotation is already running ({running.id}): approve this "
            "one after it completes"
        )


def discard_unrecorded(registry: KeyRegistry, provider: HSMProvider, labels: list[str]) -> None:
    """Destroy the keys a failed approval made on the token, once the registry shows its
    transaction did not commit. Left on the token, each would fail every node's readiness
    (an unregistered key) and refuse every later approval of its kind (review 38). A
    registry that cannot be read leaves them (readiness names them): a key whose
    transaction did commit is never destroyed here."""
    if not labels:
        return
    try:
        registered = registry.registered(fresh=True)
    except CofreError:
        return
    for label in labels:
        if label in registered:
            continue
        with suppress(CofreError):
            if provider.has_key(label):
                provider.destroy_key(label)
