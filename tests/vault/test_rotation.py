"""Key rotation under dual control, on SQLite and PostgreSQL, against a SoftHSM2 token of
its own (tests/conftest.py `rotation_provider`): KEK, data key and fingerprint key."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.sequencer import Sequencer
from audit.store import AuditStore
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from policies.loader import parse_policy
from tests.support.pans import card_number
from tests.vault.conftest import (
    ALICE,
    BOB,
    CAROL,
    DATA_KEYS,
    GETNET,
    OFFICERS,
    PAYMENTS,
    TEST_POLICY,
    rotation_of,
    until_destroy_pending,
    wrap_a_data_key_late,
)
from vault.ceremony import CeremonyState
from vault.errors import CeremonyError
from vault.pan import Pan, luhn_check_digit
from vault.rotation import KeyRotation
from vault.service import TokenizeRequest, VaultService
from vault.signing import HSMTreeHeadSigner


def _pan(i: int) -> Pan:
    return Pan(card_number("5", i))


def _policy(extra: str = "") -> PolicyEngine:
    return PolicyEngine(parse_policy(TEST_POLICY + OFFICERS + extra, kind="toml").policy)


def _finish(rotation: KeyRotation, ceremony_id: str) -> None:
    for _ in range(10_000):
        rotation.run_pending()
        if rotation.status(ALICE, ceremony_id).state == CeremonyState.COMPLETED:
            return
    raise AssertionError("rotation did not finish")


def test_dual_control(rig: tuple[VaultService, KeyRotation], engine: Engine) -> None:
    service, rotation = rig
    with pytest.raises(PolicyDenied):
        rotation.propose(PAYMENTS.identity, "data")
    ceremony = rotation.propose(ALICE, "data")
    assert ceremony.state == "pending"
    with pytest.raises(CeremonyError, match="proposer cannot approve"):
        rotation.approve(ALICE, ceremony.id)
    # The self-approval denial is in the log (it was written, then rolled back with the
    # refused approval's transaction).
    with engine.connect() as c:
        denials = [
            json.loads(p)
            for p in c.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
            if '"outcome":"denied"' in p and '"action":"key.rotation.approve"' in p
        ]
    assert [(d["actor"], d["key_id"]) for d in denials] == [(ALICE, ceremony.id)]
    assert rotation.status(ALICE, ceremony.id).state == "pending"
    with pytest.raises(PolicyDenied):
        rotation.approve(GETNET.identity, ceremony.id)
    with pytest.raises(CeremonyError, match="already open"):
        rotation.propose(BOB, "data")
    rotation.cancel(BOB, ceremony.id)
    assert rotation.status(ALICE, ceremony.id).state == "cancelled"
    # Three officers required: the same officer approving twice counts once.
    service.replace_policy(
        PolicyEngine(
            parse_policy(
                "key_approvals_required = 3\n" + TEST_POLICY + OFFICERS, kind="toml"
            ).policy
        ),
        actor="test",
        source="test",
    )
    ceremony = rotation.propose(ALICE, "data")
    assert rotation.approve(BOB, ceremony.id).state == "pending"
    assert rotation.approve(BOB, ceremony.id).approvers == [BOB]
    assert rotation.approve(CAROL, ceremony.id).state == "running"


def test_proposals_expire(
    engine: Engine, rig: tuple[VaultService, KeyRotation], rotation_provider: HSMProvider
) -> None:
    service, _ = rig
    short = KeyRotation(
        engine,
        rotation_provider,
        service.keyring,
        lambda: service.policy,
        proposal_ttl=timedelta(seconds=-1),
        unsigned_officers_count=True,
    )
    ceremony = short.propose(ALICE, "kek")
    assert short.status(ALICE, ceremony.id).state == "expired"
    with pytest.raises(CeremonyError, match="expired"):
        short.approve(BOB, ceremony.id)


# 100,000 tokens: on SoftHSM2 only. The shim adds nothing a smaller rotation does not
# show, and the suite runs on two shared cores.
@pytest.mark.parametrize("rotation_provider", ["softhsm2"], indirect=True)
def test_data_key_rotation_under_load(
    rig: tuple[VaultService, KeyRotation], engine: Engine, rotation_provider: HSMProvider
) -> None:
    service, rotation = rig
    count = 100_000
    pans = [_pan(i) for i in range(count)]
    tokens = []
    for start in range(0, count, 1000):
        tokens += [
            r.token
            for r in service.tokenize_batch(
                PAYMENTS, [TokenizeRequest(p, "pan_bin6_last4") for p in pans[start : start + 1000]]
            )
        ]
    ceremony = rotation.propose(ALICE, "data")
    started = rotation.approve(BOB, ceremony.id)
    assert started.state == "running"
    assert started.progress_total == count
    stop = threading.Event()
    errors: list[BaseException] = []
    served = [0]

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                fresh = service.tokenize(
                    PAYMENTS, TokenizeRequest(_pan(900_000 + i), "pan_bin6_last4")
                )
                assert service.detokenize(GETNET, fresh.token).pan == _pan(900_000 + i)
                assert service.detokenize(GETNET, tokens[i % count]).pan == pans[i % count]
                served[0] += 1
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)
                return
            i += 1

    worker = threading.Thread(target=load)
    worker.start()
    # A "crash" halfway: a new KeyRotation object resumes from what the database says.
    rotation.run_pending(batch=500)
    resumed = rotation_of(service, engine, rotation_provider)
    _finish(resumed, ceremony.id)
    stop.set()
    worker.join()
    assert errors == []
    assert served[0] > 0
    done = resumed.status(ALICE, ceremony.id)
    assert done.progress_done == count  # every row moved exactly once
    with engine.connect() as c:
        assert (
            c.execute(
                sa.text("SELECT count(*) FROM tokens WHERE key_version = :v"),
                {"v": done.old_version},
            ).scalar_one()
            == 0
        )
        state = c.execute(
            sa.text(
                "SELECT state, length(wrapped) FROM data_keys WHERE "
                "purpose='pan_gcm' AND version=:v"
            ),
            {"v": done.old_version},
        ).one()
    assert state[0] == "destroyed"
    assert state[1] == 0
    service.keyring.wipe_all()
    for token, pan in zip(tokens[::97], pans[::97], strict=True):
        assert service.detokenize(GETNET, token).pan == pan
    signer = HSMTreeHeadSigner(rotation_provider)
    Sequencer(engine, signer).drain()
    assert AuditStore(engine).verify(signer.public_key_pem()).entries > count
    with engine.connect() as c:
        actions = "\n".join(c.execute(sa.text("SELECT payload FROM audit_entries")).scalars())
    for step in (
        "key.rotation.propose",
        "key.rotation.approve",
        "key.rotation.start",
        "key.rotation.progress",
        "key.rotation.complete",
    ):
        assert f'"action":"{step}"' in actions


def test_kek_rotation_destroys_the_old_kek(
    rig: tuple[VaultService, KeyRotation], rotation_provider: HSMProvider
) -> None:
    service, rotation = rig
    record = service.tokenize(PAYMENTS, TokenizeRequest(_pan(7), "pan_bin6_last4"))
    old = max(
        int(k.label.rsplit("v", 1)[1])
        for k in rotation_provider.list_keys()
        if k.label.startswith("cofre-kek-v")
    )
    ceremony = rotation.propose(ALICE, "kek")
    rotation.approve(CAROL, ceremony.id)
    _finish(rotation, ceremony.id)
    assert not rotation_provider.has_key(f"cofre-kek-v{old}")
    assert rotation_provider.has_key(f"cofre-kek-v{old + 1}")
    service.keyring.wipe_all()  # force unwrapping under the new KEK
    assert service.detokenize(GETNET, record.token).pan == _pan(7)


def test_fingerprint_rotation_keeps_lookups_working(
    rig: tuple[VaultService, KeyRotation], rotation_provider: HSMProvider
) -> None:
    service, rotation = rig
    records = [
        service.tokenize(PAYMENTS, TokenizeRequest(_pan(i), "pan_bin6_last4")) for i in range(20)
    ]
    ceremony = rotation.propose(ALICE, "fingerprint")
    rotation.approve(BOB, ceremony.id)
    rotation.run_pending(batch=5)  # part way: old and new fingerprints coexist
    service._fp_read = 0.0  # see the new key now rather than within a second
    for i, record in enumerate(records):
        assert [r.token for r in service.lookup(PAYMENTS, _pan(i))] == [record.token]
        again = service.tokenize(PAYMENTS, TokenizeRequest(_pan(i), "pan_bin6_last4"))
        assert again.token == record.token
    _finish(rotation, ceremony.id)
    old = rotation.status(ALICE, ceremony.id).old_version
    assert not rotation_provider.has_key(f"cofre-fp-v{old}")
    service._fp_read = 0.0
    for i, record in enumerate(records):
        assert [r.token for r in service.lookup(PAYMENTS, _pan(i))] == [record.token]


def test_a_node_with_a_stale_active_key_loses_nothing_after_a_data_rotation(
    engine: Engine, rotation_provider: HSMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes (or `cofre serve` workers) on one database. Each caches the active data
    key version for a while (`vault.keyring`); a data rotation approved and finished on
    the other node retires and erases the old version meanwhile. The stale node must
    neither seal a new PAN under the erased version (lost for good once its memory goes)
    nor fail a convergent hit on it (503 "the wrapped key does not unwrap", as
    tests/hsm/test_dev_on_shim.py met it with two workers). The cache is pinned fresh
    here so that the outcome does not depend on how fast this machine runs."""
    monkeypatch.setattr("vault.keyring._ACTIVE_TTL_S", 3600.0)
    here, rotation = _node(engine, rotation_provider)
    there, _ = _node(engine, rotation_provider)
    try:
        known = there.tokenize(PAYMENTS, TokenizeRequest(_pan(1), "pan_bin6_last4"))
        ceremony = rotation.propose(ALICE, "data")
        rotation.approve(BOB, ceremony.id)
        _finish(rotation, ceremony.id)
        done = rotation.status(ALICE, ceremony.id)
        # Still holding the old version in memory: a new card must not be sealed under it.
        fresh = there.tokenize(PAYMENTS, TokenizeRequest(_pan(2), "pan_bin6_last4"))
        with engine.connect() as c:
            used = set(c.execute(sa.text("SELECT DISTINCT key_version FROM tokens")).scalars())
        assert used == {done.new_version}
        # Without it (as on the node whose rotation worker finished the job): a known card
        # still answers its token.
        there.keyring.forget_retired(int(done.old_version or 0))
        again = there.tokenize(PAYMENTS, TokenizeRequest(_pan(1), "pan_bin6_last4"))
        assert (again.token, again.existing) == (known.token, True)
        there.keyring.wipe_all()  # a restart: only what the database holds is left
        assert there.detokenize(GETNET, fresh.token).pan == _pan(2)
        assert there.detokenize(GETNET, known.token).pan == _pan(1)
    finally:
        here.close()
        there.close()


def test_a_card_fingerprinted_under_the_old_key_after_the_migration_is_moved_before_the_destroy(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    """A tokenize computes its card's fingerprint before its transaction, under the key
    versions its node listed (cached up to a second, five when the HSM is slow). One
    that listed them before a fingerprint rotation began can commit its row under the
    old version after the migration passed: the row would keep a fingerprint no key
    computes once the old key is destroyed, so the card would never converge again (a
    second token for it) and a lookup would miss it. The destroy, a grace period later,
    first moves what is left."""
    here, rotation = _node(engine, rotation_provider)
    there, _ = _node(engine, rotation_provider)
    try:
        known = here.tokenize(PAYMENTS, TokenizeRequest(_pan(1), "pan_bin6_last4"))
        stale = there._fingerprint_versions()  # listed before the rotation: old only
        ceremony = rotation.propose(ALICE, "fingerprint")
        rotation.approve(BOB, ceremony.id)
        for _ in range(100):
            rotation.run_pending()
            if rotation.status(ALICE, ceremony.id).state == CeremonyState.DESTROY_PENDING:
                break
        there._fp_versions, there._fp_read = stale, time.monotonic() + 3600  # still cached
        late = there.tokenize(PAYMENTS, TokenizeRequest(_pan(2), "pan_bin6_last4"))
        _finish(rotation, ceremony.id)
        done = rotation.status(ALICE, ceremony.id)
        assert not rotation_provider.has_key(f"cofre-fp-v{done.old_version}")
        with engine.connect() as c:
            versions = set(c.execute(sa.text("SELECT DISTINCT fp_version FROM tokens")).scalars())
        assert versions == {done.new_version}
        here._fp_read = 0.0
        for pan, record in ((_pan(1), known), (_pan(2), late)):
            again = here.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
            assert (again.token, again.existing) == (record.token, True)
            assert [r.token for r in here.lookup(PAYMENTS, pan)] == [record.token]
    finally:
        here.close()
        there.close()


def _node(engine: Engine, provider: HSMProvider) -> tuple[VaultService, KeyRotation]:
    service = VaultService(engine, provider, _policy())
    service.initialize()
    return service, rotation_of(service, engine, provider)


def test_a_data_key_wrapped_under_the_old_kek_after_the_migration_is_moved_before_the_destroy(
    rig: tuple[VaultService, KeyRotation], rotation_provider: HSMProvider, engine: Engine
) -> None:
    """Review 38's backstop. A data key can be wrapped under the old KEK after the
    migration's last batch: a data rotation approved on a node whose registry still
    named the old KEK current (a rotation of another kind runs alongside). The old KEK
    was destroyed regardless, and that data key, with every token under it, could
    never be unwrapped again. The destroy now moves such keys first, as a fingerprint
    rotation moves its late rows."""
    service, rotation = rig
    record = service.tokenize(PAYMENTS, TokenizeRequest(_pan(8), "pan_bin6_last4"))
    ceremony = rotation.propose(ALICE, "kek")
    rotation.approve(CAROL, ceremony.id)
    if not until_destroy_pending(rotation, ceremony.id):
        raise AssertionError("the migration did not finish")
    old, new = wrap_a_data_key_late(engine, rotation_provider, rotation, ceremony.id)
    _finish(rotation, ceremony.id)
    assert not rotation_provider.has_key(old)
    with engine.connect() as connection:
        labels = set(connection.execute(sa.select(DATA_KEYS.c.kek_label)).scalars())
    assert labels == {new}
    service.keyring.wipe_all()  # unwrap every data key again, under the KEK left
    assert service.detokenize(GETNET, record.token).pan == _pan(8)


def test_a_data_rotation_before_the_first_data_key_starts(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    """A vault creates its data keys at its first call (the HSM may be down when it
    starts); officers who rotate the data keys of a vault that has served no call yet
    got a 500 (a TypeError on the missing version). The rotation starts from no version
    and creates the first ones, and the vault then seals under them."""
    policy = PolicyEngine(parse_policy(TEST_POLICY + OFFICERS, kind="toml").policy)
    service = VaultService(engine, rotation_provider, policy)
    try:
        service.keyring.registry.adopt_if_empty(actor="test")  # what a start does
        rotation = rotation_of(service, engine, rotation_provider)
        ceremony = rotation.propose(ALICE, "data")
        assert rotation.approve(BOB, ceremony.id).state in {"running", "completed"}
        body = "5" + "1" * 14
        pan = Pan(body + luhn_check_digit(body))
        record = service.tokenize(PAYMENTS, TokenizeRequest(pan, "pan_bin6_last4"))
        assert service.detokenize(GETNET, record.token).pan == pan
    finally:
        service.close()
