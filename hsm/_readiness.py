"""Readiness checks of the session pool (moved out of `hsm.session`): a check never
loads or re-initialises the PKCS#11 library in its own thread, nor waits for either.

IN PCI SCOPE.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cofre.blocking import may_block
from hsm._open_files import OpenFiles
from hsm._pool import _CheckCall, _PoolAnswering
from hsm.errors import HSMUnavailable

T = TypeVar("T")

# How long a readiness check waits for the library's load it handed to a background
# thread: enough for a library that loads (or fails) at once to answer this check, and
# far inside a probe's timeout (docs/operations.md, "The HSM bounds and the probes").
READY_LOAD_WAIT_SECONDS: Final = 0.5
# How long a readiness check waits for a free session when every one is busy (then a
# pool whose calls answered meanwhile is ready, one whose calls did not is not:
# `hsm.session.TokenSession._wait_bounded`), and for its own call, which runs in a
# thread of its own (session 35): both far inside a probe's timeout (deploy/k8s: 3 s),
# so `/readyz` answers whatever the HSM's connection does.
READY_POOL_WAIT_SECONDS: Final = 0.5
READY_CALL_WAIT_SECONDS: Final = 2.0


class ReadinessChecks:
    """The readiness side of `hsm.session.TokenSession`, which sets these attributes."""

    _library_path: Path
    _lib: Any
    _local: threading.local
    _mutex: threading.Lock
    _initializing_count: int
    _background: threading.Thread | None
    _background_failure: HSMUnavailable | None
    _check_call: _CheckCall | None
    _open_files: OpenFiles

    if TYPE_CHECKING:

        def _load(self) -> Any: ...

        def _run(
            self, operation: Callable[[Any], T], *, retry: bool = True, name: str = "call"
        ) -> T: ...

    @contextlib.contextmanager
    def _initializing(self) -> Iterator[None]:
        """Count this thread among those in (or waiting for) the library's
        ``C_Initialize``, which a networked HSM's client may never return from."""
        with self._mutex:
            self._initializing_count += 1
        try:
            yield
        finally:
            with self._mutex:
                self._initializing_count -= 1

    def check_answering(self) -> None:
        """Raise `HSMUnavailable` at once while a thread is in (or waits for) the
        library's ``C_Initialize``. A readiness check asks this first: waiting for the
        library's lock (or the pool) behind a ``C_Initialize`` that hangs left `/readyz`
        unanswered, so the kubelet's probe timed out instead of reading 503 (session 33)."""
        if self._initializing_count:
            raise self._not_answering()

    def _not_answering(self) -> HSMUnavailable:
        return HSMUnavailable(
            f"PKCS#11 library not answering: C_Initialize of {self._library_path} "
            "has not returned (its HSM or cluster may be unreachable)"
        )

    def check_bounded(self, operation: Callable[[Any], object], *, name: str) -> object:
        """`_run(operation)` for a readiness check, which never waits for the library: it
        never loads or re-initialises it in this thread (`_in_background`), nor waits for
        the pool while a re-initialisation holds it. A check that loaded the library
        itself hung in a networked HSM client's ``C_Initialize`` (session 33), one that
        waited for the load up to COFRE_HSM__INIT_TIMEOUT_SECONDS outlasted the probe's
        timeout, and one whose own call failed twice re-initialised it in its thread
        (session 34). Session 35: a pool whose every session is busy is waited for at
        most `READY_POOL_WAIT_SECONDS`, and passes if its calls answered meanwhile
        (`_wait_bounded`); the call runs in a thread of its own, waited for at most
        `READY_CALL_WAIT_SECONDS` from its start. Checks that come while it runs share
        it; once it is late they answer unready at once and start no other, so a hung
        connection holds one thread and one session, however many probes arrive. Returns
        what `operation` returned, or None when every session was busy with calls that
        answered (no call made). Not ready in a process out of descriptors, whatever
        the call would answer (session 40: a random number needs no file)."""
        self._open_files.refuse_if_exhausted()
        self.check_answering()
        may_block()
        while True:
            with self._mutex:
                call = self._check_call
                if call is None:
                    call = self._check_call = _CheckCall(name, time.monotonic())
                    threading.Thread(
                        target=self._check_work,
                        args=(call, operation, name),
                        name="cofre-hsm-check",
                        daemon=True,
                    ).start()
            if not call.done.wait(
                max(0.0, call.started + READY_CALL_WAIT_SECONDS - time.monotonic())
            ):
                break
            if call.name == name:
                if call.failure is not None:
                    raise call.failure
                return call.result
            # Another kind of check's call, ended in time: now this one's.
        late = time.monotonic() - call.started
        raise HSMUnavailable(
            f"the token has not answered a readiness check's call in {late:.1f} s (its "
            "HSM or the connection to it may hang); checks answer unready, with no call "
            "of their own, until it does"
        )

    def _check_work(self, call: _CheckCall, operation: Callable[[Any], object], name: str) -> None:
        """The readiness check's call, in its own thread (`check_bounded`)."""
        self._local.bounded = True
        try:
            call.result = self._run(operation, name=name)
        except _PoolAnswering:
            pass  # every session busy, and their calls answered: the HSM works
        except BaseException as exc:  # noqa: BLE001 - raised in the checking threads
            call.failure = exc
        finally:
            with self._mutex:
                self._check_call = None
            call.done.set()

    def _load_for_check(self) -> Any:
        """The library for a readiness check: loaded in a background thread
        (`_in_background`) that the check waits for at most `READY_LOAD_WAIT_SECONDS`,
        well inside a probe's timeout (deploy/k8s: 3 s). Raises `HSMUnavailable`: how the
        load failed, or that it has not returned (it goes on; a later check finds the
        library loaded)."""
        self._in_background(self._load).join(READY_LOAD_WAIT_SECONDS)
        with self._mutex:
            lib, running, failure = self._lib, self._background, self._background_failure
        if lib is not None:
            return lib
        if running is None and failure is not None:
            raise HSMUnavailable(str(failure))  # fresh: raised again, one would chain
        raise self._not_answering()

    def _in_background(self, work: Callable[[], object]) -> threading.Thread:
        """Start `work` (loading or re-initialising the library, for a readiness check)
        in a background thread unless one runs; return the thread that runs. It counts in
        `_initializing_count` from now until it ends, so that later checks answer at once
        (`check_answering`) and the node is ready once it has worked."""
        with self._mutex:
            if self._background is None:
                # Counted before the thread starts: a check that comes next answers at once.
                self._initializing_count += 1
                self._background = threading.Thread(
                    target=self._background_work, args=(work,), name="cofre-hsm-load", daemon=True
                )
                self._background.start()
            return self._background

    def _background_work(self, work: Callable[[], object]) -> None:
        failure = None
        try:
            work()
        except HSMUnavailable as exc:
            failure = exc
        except BaseException as exc:  # noqa: BLE001 - reported to the next check
            failure = HSMUnavailable(
                f"cannot load PKCS#11 library {self._library_path}: {type(exc).__name__}"
            )
        finally:
            with self._mutex:
                self._initializing_count -= 1
                self._background = None
                self._background_failure = failure
