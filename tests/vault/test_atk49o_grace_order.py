"""A KEK or fingerprint rotation whose new key a later rotation already destroyed never
destroys its own old key (atk49o).

Two rotations of one kind, R1 (v1 -> v2) and R2 (v2 -> v3), may both wait for their
grace at once (a proposal is refused only while one is pending or running). Each one's
last step (`KeyRotation._destroy_if_due`) first checks its *new* key is on the token
(session 40, for a key lost from the HSM). When R2's grace ends first (the grace setting,
`COFRE_KEYS__DESTROY_GRACE_SECONDS`, lowered between the two, or both due in one pass of
the worker and read in another order), R2 destroys v2, and R1 then finds its new key gone:
it raises `HSMKeyNotFound` at every pass, keeps the retired v1 on the token for good
(PCI DSS 3.7.5), and the worker's pass stops there, so every rotation listed after it
stops advancing too. v2 was destroyed on purpose: R1's old key has nothing left to
protect and is due for destruction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from hsm.errors import HSMKeyNotFound
from hsm.provider import HSMProvider
from tests.support.pans import card_number
from tests.vault.conftest import ALICE, CAROL, PAYMENTS, until_destroy_pending
from vault.ceremony import CeremonyState
from vault.pan import Pan
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService
from vault.storage.schema import data_keys


def _rotation(
    service: VaultService,
    engine: Engine,
    provider: HSMProvider,
    grace: timedelta,
    clock: list[datetime],
) -> KeyRotation:
    return KeyRotation(
        engine,
        provider,
        service.keyring,
        lambda: service.policy,
        destroy_grace=grace,
        clock=lambda: clock[0],
        unsigned_officers_count=True,
    )


def _second_grace_ends_first(
    service: VaultService, engine: Engine, provider: HSMProvider, kind: str
) -> tuple[KeyRotation, tuple[str, str], str, list[datetime]]:
    """R1 then R2 of `kind`, R2's grace (1 day) ending before R1's (7 days); the worker
    ran when R2's ended. Returns the rotation (1-day grace), R1's and R2's ids, R1's old
    key's label, and the clock, by then past R1's grace too."""
    service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("4", 49)), "pan_bin6_last4"))
    clock = [datetime.now(UTC)]
    prefix = "kek" if kind == "kek" else "fp"

    week = _rotation(service, engine, provider, timedelta(days=7), clock)  # the default
    first = week.propose(ALICE, kind)
    week.approve(CAROL, first.id)
    assert until_destroy_pending(week, first.id)

    day = _rotation(service, engine, provider, timedelta(days=1), clock)  # lowered since
    second = day.propose(ALICE, kind)
    day.approve(CAROL, second.id)
    assert until_destroy_pending(day, second.id)
    old = f"cofre-{prefix}-v{day.status(ALICE, first.id).old_version}"

    clock[0] += timedelta(days=2)  # the second one's grace is over: it destroyed v2
    day.run_pending()
    clock[0] += timedelta(days=6)  # and the first one's: v1 is due
    return day, (first.id, second.id), old, clock


def _run(rotation: KeyRotation, times: int = 5) -> list[str]:
    failures = []
    for _ in range(times):
        try:
            rotation.run_pending()
        except HSMKeyNotFound as exc:  # the worker logs it and tries again next pass
            failures.append(str(exc))
    return failures


@pytest.mark.parametrize("kind", ["kek", "fingerprint"])
def test_an_earlier_rotation_still_destroys_its_old_key(
    rig: tuple[VaultService, KeyRotation],
    engine: Engine,
    rotation_provider: HSMProvider,
    kind: str,
) -> None:
    service, _ = rig
    rotation, ids, old, _ = _second_grace_ends_first(service, engine, rotation_provider, kind)
    failures = _run(rotation)
    assert not failures, failures
    for ceremony in ids:
        assert rotation.status(ALICE, ceremony).state == CeremonyState.COMPLETED
    assert not rotation_provider.has_key(old), f"{old}, retired, is kept on the token"
    service.keyring.wipe_all()


def test_the_stuck_rotation_does_not_stop_the_next_ones(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    service, _ = rig
    rotation, _, _, _ = _second_grace_ends_first(service, engine, rotation_provider, "kek")
    data = rotation.propose(ALICE, "data")
    rotation.approve(CAROL, data.id)
    _run(rotation, 10)
    assert rotation.status(ALICE, data.id).state == CeremonyState.COMPLETED
    service.keyring.wipe_all()


def test_an_earlier_kek_rotation_s_last_step_leaves_the_later_one_s_data_keys(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    """atk49o's leftover: the last step of R1 (v1 -> v2) re-wrapped every data key not
    under v2, so once R2 (v2 -> v3) had moved them all under v3, R1's destruction of v1
    moved them back under v2, R2's retiring key, until R2's own last step. It moves only
    what lies under the key it destroys."""
    service, _ = rig
    service.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("4", 50)), "pan_bin6_last4"))
    clock = [datetime.now(UTC)]
    day = _rotation(service, engine, rotation_provider, timedelta(days=1), clock)
    first = day.propose(ALICE, "kek")
    day.approve(CAROL, first.id)
    assert until_destroy_pending(day, first.id)
    week = _rotation(service, engine, rotation_provider, timedelta(days=7), clock)
    second = week.propose(ALICE, "kek")
    week.approve(CAROL, second.id)
    assert until_destroy_pending(week, second.id)
    newest = f"cofre-kek-v{week.status(ALICE, second.id).new_version}"

    clock[0] += timedelta(days=2)  # R1's grace is over, R2's is not
    assert not _run(day, 1)
    assert day.status(ALICE, first.id).state == CeremonyState.COMPLETED
    with engine.connect() as connection:
        labels = set(
            connection.execute(
                select(data_keys.c.kek_label).where(data_keys.c.state != "destroyed")
            ).scalars()
        )
    assert labels == {newest}, labels
    service.keyring.wipe_all()
