"""A worker still in its batch at the stop deadline does not cost the stop its audit
entries (review 36c).

The background workers (token purge, key rotation, refusal counts) and the ordered
steps (``process.stop``, the last head) shared one 5 s deadline: a rotation batch that
ran to it (500 rows of HMACs on a network HSM, lock waits under load) left nothing for
``process.stop`` and the last head, which were abandoned on a healthy database. The
workers are now waited for until `AUDIT_RESERVE_SECONDS` before the deadline.

A real runtime (SQLite, SoftHSM); the rotation worker's stop is replaced by one that
does not return before the deadline, as a batch in progress would not. The wait is a
bound that fails only on a hang."""

from __future__ import annotations

import threading
from pathlib import Path

from cofre.settings import Settings
from cofre_cli.audit_trail import PROCESS_STOP
from cofre_cli.stopping import stop_deadline, stop_runtime
from cofre_cli.wiring import build_runtime
from hsm.provider import HSMProvider
from tests.support.audit_trail import audit_state


def test_a_batch_past_the_deadline_leaves_the_stop_entry_and_its_head(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    policy = data / "policy.toml"
    policy.write_text("")
    runtime = build_runtime(Settings(data_dir=data, policy_file=policy), provider=hsm_provider)
    released = threading.Event()
    real_stop = runtime.rotation_worker.stop

    def batch_in_progress() -> None:
        released.wait(120)  # a batch that outlasts the stop's deadline
        real_stop()

    runtime.rotation_worker.stop = batch_in_progress  # type: ignore[method-assign]
    try:
        stop_runtime(runtime, stop_deadline())
    finally:
        released.set()
    actions, queued, _, head = audit_state(f"sqlite:///{data / 'cofre.sqlite3'}")
    assert actions[-1] == PROCESS_STOP, actions
    assert queued == 0
    assert head == len(actions)


def test_a_last_head_abandoned_at_the_deadline_is_signed_by_the_next_start(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """The drain cut by the deadline (a database that does not answer in time) leaves
    its entries queued, never lost: the next start's sequencer integrates and signs
    them, as another node's would."""
    data = tmp_path / "data"
    data.mkdir()
    policy = data / "policy.toml"
    policy.write_text("")
    settings = Settings(data_dir=data, policy_file=policy)
    runtime = build_runtime(settings, provider=hsm_provider)
    released = threading.Event()
    runtime.sequencer.drain = lambda **_: released.wait(120)  # type: ignore[method-assign,assignment,misc]
    try:
        stop_runtime(runtime, stop_deadline())
    finally:
        released.set()
    database = data / "cofre.sqlite3"
    first_run, queued, _, _ = audit_state(f"sqlite:///{database}")
    assert queued > 0  # the process.stop at least, unsequenced
    again = build_runtime(settings, provider=hsm_provider)
    # `released` is set by now, so waiting on it would not pause: the loop would spin
    # through its bound in a moment and fail when the sequencer is merely slow.
    pause = threading.Event()
    try:
        for _ in range(1200):  # a bound that fails only on a hang
            _, queued, _, head = audit_state(f"sqlite:///{database}")
            if queued == 0 and head is not None and head >= len(first_run):
                break
            pause.wait(0.1)
        assert queued == 0
        assert head is not None
        assert head >= len(first_run)
    finally:
        again.close()
