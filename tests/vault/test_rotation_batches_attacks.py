"""Attacks on the KEK rotation's re-wrap (`vault._rotation_batches`), after review 38's
"a data key is unwrapped only under a registered KEK" (`DataKeyring._key`).

The keyring refuses a data-key row that names a KEK the registry does not record. The
KEK rotation's re-wrap, though, took every data-key row not yet under the new KEK and
re-wrapped it inside the token under whatever label the row named: a row of a holder of
the PIN and of write access to the database, wrapped under a KEK of their own making,
came out of the rotation wrapped under the genuine new KEK, and the keyring then opened
it like any other. Review 38's check was undone by the next KEK rotation."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from cofre.errors import CofreError
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from tests.vault.conftest import ALICE, CAROL, PAYMENTS
from vault.ceremony import CeremonyState
from vault.errors import DataKeyMissing
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService

_DATA_KEYS = sa.table(
    "data_keys",
    sa.column("purpose"),
    sa.column("version"),
    sa.column("wrapped"),
    sa.column("wrap_mechanism"),
    sa.column("kek_label"),
    sa.column("algorithm"),
    sa.column("state"),
    sa.column("created_at"),
)


def test_a_kek_rotation_never_launders_a_data_key_wrapped_under_a_rogue_kek(
    rig: tuple[VaultService, KeyRotation], rotation_provider: HSMProvider, engine: Engine
) -> None:
    service, rotation = rig
    rogue = key_label(KeyKind.KEK, KeyHierarchy(rotation_provider).versions(KeyKind.KEK)[-1] + 7)
    rotation_provider.generate_kek(rogue)
    try:
        planted = rotation_provider.generate_wrapped_key(rogue)
        with engine.begin() as connection:
            active = connection.execute(
                sa.select(_DATA_KEYS).where(
                    _DATA_KEYS.c.purpose == "pan_gcm", _DATA_KEYS.c.state == "active"
                )
            ).one()
            # A data key of the attacker's making, parked as retired: nothing opens it.
            connection.execute(
                sa.insert(_DATA_KEYS).values(
                    purpose="pan_gcm",
                    version=int(active.version) + 50,
                    wrapped=planted.wrapped,
                    wrap_mechanism=planted.algorithm,
                    kek_label=rogue,
                    algorithm=active.algorithm,
                    state="retired",
                    created_at=datetime.now(UTC),
                )
            )
        ceremony = rotation.propose(ALICE, "kek")
        rotation.approve(CAROL, ceremony.id)
        for _ in range(200):  # to its end, or to its refusal
            with contextlib.suppress(CofreError):
                rotation.run_pending()
            if rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED:
                break
        with engine.begin() as connection:  # the attacker makes it the active one
            connection.execute(
                sa.update(_DATA_KEYS)
                .where(_DATA_KEYS.c.purpose == "pan_gcm")
                .values(
                    state=sa.case(
                        (_DATA_KEYS.c.version == active.version + 50, "active"), else_="retired"
                    )
                )
            )
            laundered = connection.execute(
                sa.select(_DATA_KEYS.c.kek_label).where(_DATA_KEYS.c.version == active.version + 50)
            ).scalar_one()
        assert laundered == rogue, "the rogue data key was re-wrapped under the genuine KEK"
        service.keyring.wipe_all()
        service.keyring.refresh()
        with pytest.raises(DataKeyMissing):
            service.tokenize(PAYMENTS, TokenizeRequest(Pan("4111111111111111"), "pan_bin6_last4"))
    finally:
        with contextlib.suppress(CofreError):
            rotation_provider.destroy_key(rogue)
