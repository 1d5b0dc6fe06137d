"""The stop of a worker process after its drain, within one deadline (review 36).

IN PCI SCOPE (wiring): it wipes the data keys and closes the HSM session.

Until session 36 the stop waited for each part in turn (the capture listener up to
15 s, the refusal flusher's thread 30 s, the purge and rotation workers 30 s each, the
``process.stop`` entry, the sequencer 10 s, the publisher 10 s), then wiped the keys:
during a database or HSM outage those waits added up past the kubelet's grace period,
and the pod was killed before the wipe. A statement on a database that does not answer
at all (paused, cut off without a reset) had no bound: the stop never got there.

Now every step runs in a daemon thread of its own, joined against one deadline
(`STOP_SECONDS` from the end of the drain): the background workers are all told to stop
at once and then waited for together, until `AUDIT_RESERVE_SECONDS` before the
deadline; the steps whose order the audit log shows (``process.stop`` after the
workers, then the sequencer's last drain and signed head, then the publisher) come
next, each with what is left. A step still running at the deadline is
abandoned, logged ``stop step abandoned`` with its name (its thread dies with the
process). The data keys are then wiped, always, in this thread and first (the keyring
is closed for good: a worker left running fails closed, `vault.keyring`); the HSM
session is closed and the pool disposed, within `RELEASE_SECONDS` each.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NoReturn

import structlog

from cofre_cli.audit_trail import record_stop

if TYPE_CHECKING:
    from cofre_cli.wiring import Runtime

_log = structlog.get_logger("cofre.vault")

# The steps before the wipe: the capture listener's last requests, the workers, the
# ``process.stop`` entry, the last head, the publisher. With the health listener's
# close (1 s, `api.health`), `RELEASE_SECONDS` three times and the telemetry's 5 s
# (`api.otlp.TELEMETRY_STOP_SECONDS`) this fits in the 15 s that
# terminationGracePeriodSeconds leaves after the drain (docs/operations.md, "Stopping
# and draining"; tests/cofre_cli/test_stop36_stop_deadline.py pins the sum).
STOP_SECONDS: Final = 5.0
# Each of the three releases after the wipe: the vault service (its group committer's
# thread), the HSM session (its close waits for the calls under way), the pool.
RELEASE_SECONDS: Final = 1.0
# The end of `STOP_SECONDS` kept for the ordered steps (review 36c): the workers are
# waited for until this much before the deadline, so a batch still going then (a
# rotation's 500 rows on a slow HSM, lock waits under load) leaves ``process.stop``
# and the last head their time instead of taking it all. A healthy database writes
# both in a fraction of it.
AUDIT_RESERVE_SECONDS: Final = 2.0

Step = tuple[str, Callable[[], object]]


def stop_deadline() -> float:
    """The `time.monotonic()` by which the steps before the wipe must end."""
    return time.monotonic() + STOP_SECONDS


def run_steps(steps: Sequence[Step], deadline: float, *, together: bool = False) -> list[str]:
    """Run `steps` (name, callable), each in a daemon thread, one after another (all at
    once with `together`), each waited for until `deadline`; log and return the names
    of those still running then (abandoned). A step that raises is logged, never
    raised: the stop goes on to the wipe. Each thread runs in a copy of this context."""

    def started(name: str, step: Callable[[], object]) -> threading.Thread:
        def run() -> None:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - logged; the stop goes on
                _log.error("stop step failed", step=name, error=type(exc).__name__)

        # In a copy of this context: its log lines carry the worker's index, as this
        # thread's do (`cofre_cli.serving`), and each thread needs a copy of its own.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(run,), name=f"cofre-stop-{name}", daemon=True
        )
        thread.start()
        return thread

    abandoned: list[str] = []
    threads: list[tuple[str, threading.Thread]] = []
    for name, step in steps:
        threads.append((name, started(name, step)))
        if not together:
            _join(name, threads[-1][1], deadline, abandoned)
    if together:
        for name, thread in threads:
            _join(name, thread, deadline, abandoned)
    return abandoned


def _join(name: str, thread: threading.Thread, deadline: float, abandoned: list[str]) -> None:
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        abandoned.append(name)
        _log.warning("stop step abandoned at the stop deadline", step=name)


def _release(name: str, step: Callable[[], object]) -> list[str]:
    return run_steps([(name, step)], time.monotonic() + RELEASE_SECONDS)


def _last_head(runtime: Runtime) -> None:
    """Stop the sequencer's thread, then integrate what is queued and sign a head over
    it: the ``process.stop`` just written and every answered operation's entry (PCI DSS
    10.3). Review 36c: the thread's stop only ended its loop, so up to a signing
    interval of entries stayed unsigned (and the last worker's stop unsequenced) until
    the next start; a rolling restart left every node's last entries so. Each batch is
    its own transaction: at the deadline the rest waits in the queue for the next
    start or another node, as after a crash."""
    runtime.sequencer_thread.stop()
    runtime.sequencer.drain()


def stop_runtime(runtime: Runtime, deadline: float | None = None) -> None:
    """Stop `runtime`'s workers by `deadline` (default: `STOP_SECONDS` from now), then
    wipe every unwrapped data key (always), close the HSM session and dispose of the
    pool. Logs ``vault stopped`` with what was done and the steps abandoned."""
    deadline = stop_deadline() if deadline is None else deadline
    runtime.readiness.begin_drain()
    abandoned: list[str] = []
    try:
        workers: list[Step] = [
            ("token purge", runtime.purge_worker.stop),
            ("key rotation", runtime.rotation_worker.stop),
        ]
        if runtime.refusal_flusher is not None:
            # Every count written before the sequencer stops, so its last head covers them.
            workers.append(("refusal counts", runtime.refusal_flusher.stop))
        abandoned += run_steps(workers, deadline - AUDIT_RESERVE_SECONDS, together=True)
        ordered: list[Step] = []
        if runtime.crl_watcher is not None:
            ordered.append(("crl watcher", runtime.crl_watcher.stop))  # its last crl.load
        # PCI DSS 10.2.1.6: the stop of the process whose start `_record_start` wrote,
        # after its last operation and before the sequencer's last head.
        ordered.append(("process.stop", lambda: record_stop(runtime.service.record)))
        ordered.append(("audit sequencer", lambda: _last_head(runtime)))
        if runtime.publisher_thread is not None:
            ordered.append(("witness publisher", runtime.publisher_thread.stop))
        abandoned += run_steps(ordered, deadline)
    finally:
        # Here, in this thread, whatever happened above: memory only, never waits.
        runtime.service.keyring.close()
        # The relay clients, the group committer (its thread waits for a commit).
        abandoned += _release("vault service", runtime.service.close)
        hsm = _release("hsm session", runtime.provider.close)
        pool = _release("database pool", runtime.engine.dispose)
        _log.info(
            "vault stopped",
            data_keys="wiped",
            hsm_session="abandoned" if hsm else "closed",
            abandoned=abandoned + hsm + pool,
        )


def leave_process(status: int = 0) -> NoReturn:
    """End this serving process with `status` once its stop is done (keys wiped, HSM
    session closed): flush the log handlers and the standard streams, then `os._exit`.

    Review 36c: the interpreter's own end joined every thread of `api.routes._offload`'s
    executors (`concurrent.futures` registers that join), so a request's vault call
    stuck on a database that does not answer held the worker after its stop until the
    kubelet's SIGKILL. And the finalisation ran beside the abandoned steps' daemon
    threads, still inside a PKCS#11 or driver call. Nothing after the stop needs it."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to lose
            stream.flush()
    os._exit(status)
