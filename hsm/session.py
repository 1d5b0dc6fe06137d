"""Session handling: a pool of logged-in sessions to one token, shared safely by threads.

IN PCI SCOPE. The provider (`hsm.provider`) builds its operations on this class; nothing
else opens sessions.

Concurrency. Every call to a networked HSM (AWS CloudHSM) is a round trip, so one session
behind one lock would cap a node at 1 / round-trip calls per second. The provider keeps a
pool of up to `pool_size` sessions (``COFRE_HSM__SESSION_POOL_SIZE``); a call borrows one,
and calls on different sessions run at once (python-pkcs11 releases the GIL in each).

SoftHSM2 is the exception. python-pkcs11 initialises the library with ``C_Initialize(NULL)``,
so SoftHSM2 runs without internal locking, and two threads on two sessions crash it (see
docs/cloudhsm.md). A library whose file name starts with ``libsofthsm2`` therefore
gets a pool of one whatever the setting: every call is serialised, as before; so does one
under another name once its ``C_GetInfo`` says SoftHSM (`_load`, session 45: a renamed
copy, pooled, corrupted its heap). (The test harness's CloudHSM-behaviour shim
initialises SoftHSM2 with ``CKF_OS_LOCKING_OK`` and names itself, so it is pooled like
CloudHSM.)

Recovery. A call that fails because the session, token or library went away drops that
session, retries once on a fresh one, and when the retry fails too re-initialises the
library (after every other call on it has finished; once for calls that failed together)
and raises `HSMUnavailable`; the next call tries again. Nothing is cached across a
re-initialisation except configuration.
Sessions open without the PIN and log in apart (`hsm._login`), so a session whose login
fails is closed, and closing one never logs the others out (docs/cloudhsm.md, "When the
HSM fails"; tests/reliability/test_hsm_faults.py).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import pkcs11.exceptions as p11e
from pkcs11 import ObjectClass
from pydantic import SecretStr

from cofre.blocking import may_block, may_wait
from cofre.errors import WouldBlock
from hsm import _readiness
from hsm._identity import Pin, Pins, check_found, prove_pair
from hsm._login import UserLogin
from hsm._open_files import OpenFiles
from hsm._pool import (
    _AUTH_ERRORS,
    BUSY_ERRORS,
    _CheckCall,
    _close_quietly,
    _KeyHandleRefused,
    _PoolAnswering,
    _Pooled,
    _PoolShrank,
    _SessionLost,
    _translated,
)
from hsm._readiness import ReadinessChecks
from hsm.errors import (
    HSMAuthFailed,
    HSMError,
    HSMKeyNotFound,
    HSMKeyUnavailable,
    HSMOperationFailed,
    HSMUnavailable,
)
from hsm.library import (
    cloudhsm_pin_problem,
    is_softhsm,
    load_library,
    pin_hint,
    pool_size_for,
    says_softhsm,
    softhsm_module,
)
from hsm.mechanisms import WrapMechanisms
from hsm.models import LibraryIdentity

T = TypeVar("T")

# Backoff while waiting for a key to become available: first wait, growth, ceiling.
_AVAILABILITY_FIRST_WAIT_S: Final = 0.02
_AVAILABILITY_MAX_WAIT_S: Final = 0.5


class TokenSession(ReadinessChecks):
    """The session side of `hsm.provider.HSMProvider`: library, login, session pool,
    recovery, and the translation of every PKCS#11 error into `hsm.errors`."""

    def __init__(
        self,
        library: Path,
        token_label: str,
        pin: SecretStr,
        softhsm_conf: Path | None = None,
        *,
        pool_size: int = 1,
        key_availability_timeout: float = 5.0,
        refuse_software: bool = False,
    ) -> None:
        self._library_path = library
        # `cofre serve` without the software-token allowance: a library that says it is
        # SoftHSM is refused whenever a session opens (`_refuse_a_software_token`).
        self._refuse_software = refuse_software
        self._token_label = token_label
        self._pin = pin
        self._softhsm_conf = softhsm_conf
        self.pool_size = pool_size_for(library, pool_size)
        # In-process (SoftHSM2), not a network round trip per call: only then may a call
        # run on an event loop (`cofre.blocking`; every other library's calls may wait).
        self.local = is_softhsm(library)
        self.key_availability_timeout = key_availability_timeout
        self._lib: Any = None
        self._login: UserLogin | None = None
        # One login at a time, and none after the token refused this PIN (the error's
        # name): CloudHSM locks the crypto user out after five refusals, on every node.
        self._login_lock = threading.Lock()
        self._pin_refused: str | None = None
        self._lib_lock = threading.Lock()
        # Threads in (or waiting for) a ``C_Initialize`` (`_initializing`), or loading or
        # re-initialising the library for a readiness check (`_in_background`): a check
        # answers unready at once while there are any (`check_answering`).
        self._initializing_count = 0
        # The background thread a readiness check handed that work to, while it runs, and
        # how the last one failed (what a check says once it has ended).
        self._background: threading.Thread | None = None
        self._background_failure: HSMUnavailable | None = None
        # The readiness check's own call while it runs: at most one (`check_bounded`).
        self._check_call: _CheckCall | None = None
        # Calls the token answered (sessions given back unbroken): what a readiness check
        # on a pool with every session busy takes as the HSM working (`_wait_bounded`).
        self._answers = 0
        self._open_files = OpenFiles()  # asked when a call fails (`hsm._open_files`)
        # The pool: one plain lock (cheap to take in C, see `_run_pooled`) and a condition
        # on it for the threads that wait, either for a place in the pool or, while
        # `_exclusive` holds the pool alone, for it to end; `_waiting` counts them so that
        # giving a session back notifies only when someone waits.
        self._mutex = threading.Lock()
        self._freed = threading.Condition(self._mutex)
        self._idle: list[_Pooled] = []
        self._busy = 0
        self._waiting = 0
        self._closed = False
        self._local = threading.local()
        # Bumped when a key is destroyed or a label's record changes: every session's
        # cache of found keys is stale.
        self._epoch = 0
        # What the key registry records under each label (`pin_key_identities`): a key
        # found under one of them is used only if it is that key (`hsm._identity`).
        self._pins: dict[str, Pin] = {}
        self._mechanisms: frozenset[int] | None = None
        self._wrap: WrapMechanisms | None = None
        # Re-initialisations of the library so far (`_reinitialize`).
        self._generation = 0
        # Called with (operation, milliseconds) after every call; the API feeds metrics.
        self.observer: Callable[[str, float], None] | None = None

    def __repr__(self) -> str:
        return f"HSMProvider(library={str(self._library_path)!r}, token={self._token_label!r})"

    # ------------------------------------------------------------------ session
    def _open_session(self) -> Any:
        # Before the library and any C_Login: a PIN CloudHSM cannot take is never sent.
        problem = cloudhsm_pin_problem(self._library_path, self._pin.get_secret_value())
        if problem is not None:
            raise HSMAuthFailed(problem)
        lib = self._lib
        if lib is None:
            if getattr(self._local, "bounded", False):
                lib = self._load_for_check()
            else:
                with self._initializing():
                    lib = self._load()
        with self._mutex:
            if self._busy > self.pool_size:
                # Borrowed before the library said it is SoftHSM2 (`_load`): no call on
                # it may run beside the one the pool now allows.
                raise _PoolShrank
        try:
            token = lib.get_token(token_label=self._token_label)
        except p11e.NoSuchToken:
            raise HSMUnavailable(
                f"no token labelled {self._token_label!r} in {self._library_path}"
            ) from None
        except p11e.MultipleTokensReturned:
            raise HSMUnavailable(
                f"more than one token labelled {self._token_label!r}; labels must be unique"
            ) from None
        if self._refuse_software:
            self._refuse_a_software_token(lib, token)
        self._check_pin_not_refused()
        # Opened without the PIN and logged in apart (`hsm._login` says why): a session
        # whose login fails is closed here, and closing one never logs the others out.
        session = token.open(rw=True)
        try:
            with self._lib_lock:
                if self._login is None:
                    self._login = UserLogin(self._library_path)
                login = self._login
            with self._login_lock:
                self._check_pin_not_refused()
                try:
                    # Login is per application: when another session of this process (a
                    # pooled one, or another provider's) already logged the token in,
                    # this is a no-op.
                    login.login(session.handle, self._pin.get_secret_value())
                except _AUTH_ERRORS as exc:
                    self._pin_refused = type(exc).__name__
        except BaseException:
            _close_quietly(session)
            raise
        if self._pin_refused is not None:
            _close_quietly(session)
            self._check_pin_not_refused()
        return session

    def _load(self) -> Any:
        """The library, loaded (``C_Initialize``) unless it was. Raises `HSMUnavailable`.
        SoftHSM2 under another name (`softhsm_module`) makes the pool one session from
        then on, as its file name would have (`pool_size_for`)."""
        with self._lib_lock:
            if self._lib is None:
                lib = load_library(self._library_path, self._softhsm_conf)
                if self.pool_size > 1 and softhsm_module(lib):
                    with self._mutex:
                        self.pool_size = 1
                self._lib = lib
            return self._lib

    def _check_pin_not_refused(self) -> None:
        """Raise `HSMAuthFailed` once the token refused this PIN: never try it again
        (each try counts toward the HSM's lockout); the PIN is read at start, so a new
        one, or a password a crypto officer reset, takes a restart."""
        if self._pin_refused is not None:
            raise HSMAuthFailed(
                f"token {self._token_label!r} refused the user PIN ({self._pin_refused}"
                f"{pin_hint(self._pin.get_secret_value())}); not tried again until the vault "
                "restarts"
            )

    def _refuse_a_software_token(self, lib: Any, token: Any) -> None:
        """Raise `HSMUnavailable` when `lib` or `token` says it is SoftHSM. `cofre serve`
        judges a library that does not initialise at start by its file name alone (a
        networked HSM's cluster may be down), and SoftHSM2 under another name whose
        token directory came later initialised here and served (review 31b)."""
        identity = LibraryIdentity(
            manufacturer=lib.manufacturer_id,
            description=lib.library_description,
            slot_manufacturer=token.slot.manufacturer_id,
            token_manufacturer=token.manufacturer_id,
            token_model=token.model,
        )
        if says_softhsm(identity):
            raise HSMUnavailable(
                f"the PKCS#11 library {self._library_path} says it is SoftHSM "
                f"({identity.describe()}), a software token, not an HSM: `cofre serve` "
                "refuses it (or set COFRE_INSECURE__ALLOW_SOFTWARE_HSM=true)"
            )

    def _borrow(self, *, fresh: bool = False) -> _Pooled | None:
        """Wait for a free place in the pool; return an idle session, or None (open one,
        as always when `fresh`)."""
        with self._mutex:
            if self._closed or self._busy >= self.pool_size:
                if getattr(self._local, "bounded", False):
                    self._wait_bounded()  # a readiness check
                else:
                    may_block()
                    self._wait_for_place()
            self._busy += 1
            if fresh or not self._idle:
                return None
            pooled = self._idle.pop()
        if pooled.epoch != self._epoch:
            pooled.objects.clear()
            pooled.epoch = self._epoch
        return pooled

    def _wait_for_place(self) -> None:
        """Wait (holding `_mutex`) until the pool is open and has a free place."""
        self._waiting += 1
        try:
            while self._closed or self._busy >= self.pool_size:
                self._freed.wait()
        finally:
            self._waiting -= 1

    def _wait_bounded(self) -> None:
        """`_wait_for_place` for a readiness check: never behind a re-initialisation (or a
        stop), and for at most `READY_POOL_WAIT_SECONDS`. Every session busy is evidence of
        a working HSM only while their calls answer: raises `_PoolAnswering` once one has
        (ready), `HSMUnavailable` if none has by then. Until session 35 the check waited
        for a place with no bound, behind calls a hung connection never answers."""
        seen = self._answers
        deadline = time.monotonic() + _readiness.READY_POOL_WAIT_SECONDS
        self._waiting += 1
        try:
            while self._closed or self._busy >= self.pool_size:
                if self._closed:
                    raise self._not_answering()
                if self._answers != seen:
                    raise _PoolAnswering
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HSMUnavailable(
                        f"every HSM session is busy ({self.pool_size}) and none answered in "
                        f"{_readiness.READY_POOL_WAIT_SECONDS:g} s (the HSM or its "
                        "connection may hang)"
                    )
                self._freed.wait(remaining)
        finally:
            self._waiting -= 1

    def _give_back(self, pooled: _Pooled | None, *, broken: bool) -> None:
        if broken:
            # A lost session usually means the token or the connection was reset, so the
            # idle ones go too. Closed while this call still holds its place in the pool,
            # so that a pool of one (SoftHSM2) never sees two threads.
            with self._mutex:
                doomed, self._idle = self._idle, []
            if pooled is not None:
                doomed.append(pooled)
            for lost in doomed:
                _close_quietly(lost.session)
        with self._mutex:
            self._busy -= 1
            if pooled is not None and not broken:
                self._idle.append(pooled)
                self._answers += 1
            if self._waiting:
                # All: the waiters are borrowers and maybe one `_exclusive` waiting for the
                # pool to empty; waking only that one could strand a borrower.
                self._freed.notify_all()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the pool alone: wait for every call in it to end, and keep new ones out
        (re-initialising the library, closing). Calls nested in an operation reuse its
        session and never wait here, so an operation never waits for itself."""
        with self._mutex:
            self._waiting += 1
            try:
                while self._closed:
                    self._freed.wait()
                self._closed = True
                while self._busy:
                    self._freed.wait()
            finally:
                self._waiting -= 1
        try:
            yield
        finally:
            with self._mutex:
                self._closed = False
                if self._waiting:
                    self._freed.notify_all()

    def _drop_all(self) -> None:
        """Close every idle session (the caller holds the pool alone: none is busy)."""
        with self._mutex:
            idle, self._idle = self._idle, []
        for pooled in idle:
            _close_quietly(pooled.session)

    def _reinitialize(self, generation: int) -> None:
        may_block()
        with self._exclusive():
            if self._generation != generation:
                # Re-initialised since the failing call began: calls that fail together
                # (a throttled or lost cluster) make one new library, not one each (four
                # calls made four, each closing the pool and logging in again, session
                # 38: tests/hsm/test_cka38_reinit_under_load.py).
                return
            self._generation += 1
            self._drop_all()
            with self._lib_lock:
                self._mechanisms = None
                self._wrap = None
                if self._lib is not None:
                    try:
                        with self._initializing():
                            self._lib.reinitialize()
                    except p11e.PKCS11Error:
                        self._lib = None

    def _recover(self, generation: int) -> None:
        """Re-initialise the library after a call that began at `generation` failed
        twice, unless another call did since; for a readiness check's own call in a
        background thread (`_in_background`): it may hang there too."""
        if getattr(self._local, "bounded", False):
            self._in_background(lambda: self._reinitialize(generation))
        else:
            self._reinitialize(generation)

    def _run(self, operation: Callable[[Any], T], *, retry: bool = True, name: str = "call") -> T:
        """Run `operation(session)` on a pooled session, translating every PKCS#11 error.

        Kept short on purpose (see `_run_pooled`): this Python runs between two token
        calls, when the CPU's caches hold the token library's work, and each line of it
        costs several times what it does in a loop of its own (bench/levers.md, issue 4)."""
        if not self.local:
            may_block()  # a round trip
        observer = self.observer
        started = time.perf_counter() if observer is not None else 0.0
        try:
            current: _Pooled | None = getattr(self._local, "pooled", None)
            if current is not None:
                # Called from inside an operation on this thread: reuse its session (a
                # pool of one would otherwise wait for itself).
                return self._translate(lambda: operation(current.session))
            try:
                return self._run_pooled(operation, retry=retry)
            except HSMKeyUnavailable as refused:
                if not retry:
                    # Never run an operation that must not be repeated twice (a key
                    # creation: the refusal may come after the key was made).
                    raise
                return self._run_waiting_for_keys(operation, retry=retry, refused=refused)
        except HSMError as failed:
            # Out of descriptors, SoftHSM finds no key, and none once they are back
            # until the library loads the token again (session 40, `hsm._open_files`).
            outermost = getattr(self._local, "pooled", None) is None
            reload = functools.partial(self._recover, self._generation) if outermost else None
            self._open_files.refuse_if_exhausted(failed, reload)
            raise
        except WouldBlock:
            # Not a call of its own: it is made again in a thread and timed there (a
            # ~0 ms sample per busy session would hide the HSM's latency under load).
            observer = None
            raise
        finally:
            if observer is not None:
                observer(name, (time.perf_counter() - started) * 1000)

    def _run_waiting_for_keys(
        self, operation: Callable[[Any], T], *, retry: bool, refused: HSMKeyUnavailable
    ) -> T:
        """`_run_pooled` again, after the token refused a key's handle twice
        (`HSMKeyUnavailable`), with bounded exponential backoff for up to
        `key_availability_timeout` seconds from that refusal: on CloudHSM a new token
        key is usable only once a quorum of HSMs has it, on any node that uses it first."""
        deadline = time.monotonic() + self.key_availability_timeout
        wait = _AVAILABILITY_FIRST_WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise refused
            may_block()
            time.sleep(min(wait, remaining))
            wait = min(wait * 2, _AVAILABILITY_MAX_WAIT_S)
            try:
                return self._run_pooled(operation, retry=retry)
            except HSMKeyUnavailable as again:
                refused = again

    # PLR0912: a branch per way a call on a session ends.
    def _run_pooled(self, operation: Callable[[Any], T], *, retry: bool) -> T:  # noqa: PLR0912
        # The common case is one pass: borrow an idle session, run, give it back. No
        # generator, partial or extra frame per call: see `_run`.
        attempts = 2 if retry else 1
        local = self._local
        attempt = 0
        generation = self._generation
        while True:
            attempt += 1
            pooled = self._borrow(fresh=attempt > 1)
            broken = False
            try:
                if pooled is None:
                    may_block()  # C_OpenSession, and the library's loading and login
                    pooled = _Pooled(self._translate(self._open_session), self._epoch)
                local.pooled = pooled
                try:
                    return operation(pooled.session)
                except p11e.PKCS11Error as exc:
                    raise _translated(exc, self._token_label) from None
            except _KeyHandleRefused as refused:
                # Forget the keys this session found; look them up again once.
                if pooled is not None:
                    pooled.objects.clear()
                if attempt < attempts and not may_wait():
                    # The retry below opens a session, which may not happen here: the
                    # call begins again in a thread (`cofre.blocking`), and must start
                    # on a fresh session as this retry would, not on this one again.
                    broken = True
                if attempt == attempts:
                    raise HSMKeyUnavailable(
                        f"token {self._token_label!r} refused a key handle "
                        f"({refused.name}): the key is not (or no longer) available"
                    ) from None
                continue
            except _PoolShrank:
                attempt -= 1  # not a try of the call: it waits for the one place now
                continue
            except _SessionLost as lost:
                broken = True
                failure = lost.name
            except HSMAuthFailed:
                broken = True
                raise
            finally:
                local.pooled = None
                self._give_back(pooled, broken=broken)
            if attempt == attempts:
                if attempts > 1 and failure not in BUSY_ERRORS:
                    self._recover(generation)
                raise HSMUnavailable(f"token {self._token_label!r} is not reachable ({failure})")

    def _translate(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except p11e.PKCS11Error as exc:
            raise _translated(exc, self._token_label) from None

    def _find(self, session: Any, label: str, object_class: ObjectClass) -> Any:
        pooled: _Pooled | None = getattr(self._local, "pooled", None)
        objects = pooled.objects if pooled is not None else {}
        key = (label, int(object_class))
        cached = objects.get(key)
        if cached is not None:
            return cached
        try:
            obj = session.get_key(object_class=object_class, label=label)
        except p11e.NoSuchKey:
            raise HSMKeyNotFound(f"no {object_class.name} key labelled {label!r}") from None
        except p11e.MultipleObjectsReturned:
            raise HSMOperationFailed(f"more than one key labelled {label!r}") from None
        # Checked once per key and pooled session, before its first use (found keys are
        # cached below): kept in the token, and the registry's key (`hsm._identity`).
        pin = self._pins.get(label)
        check_found(obj, label, object_class, pin)
        if object_class == ObjectClass.PRIVATE_KEY and pin is not None:
            prove_pair(obj, self._find(session, label, ObjectClass.PUBLIC_KEY), label)
        objects[key] = obj
        return obj

    def _find_secret(self, session: Any, label: str) -> Any:
        return self._find(session, label, ObjectClass.SECRET_KEY)

    def pin_key_identities(self, pins: Pins) -> None:
        """Use a key found under a label of `pins` (the key registry's records: label to
        base64 ``CKA_ID`` and check value) only when it is that key; a lookup refuses
        another (`HSMKeyNotRegistered`). Replaces the pins given before; when they
        changed (a key recorded, rarely), every session looks its keys up again, so a
        key found before its label was pinned is checked too."""
        pins = dict(pins)
        with self._mutex:
            if pins != self._pins:
                self._pins = pins
                self._epoch += 1

    def _unpin(self, label: str) -> None:
        """Forget `label`'s pin: Cofre destroys the key or makes a new one under it (the
        registry pins the new key when it records it)."""
        with self._mutex:
            if label in self._pins:
                self._pins = {k: v for k, v in self._pins.items() if k != label}

    def _forget_keys(self) -> None:
        """Invalidate every session's cache of found keys (after a key is destroyed)."""
        with self._mutex:
            self._epoch += 1
        pooled: _Pooled | None = getattr(self._local, "pooled", None)
        if pooled is not None:
            pooled.objects.clear()
            pooled.epoch = self._epoch

    def close(self) -> None:
        """Close every session. The provider reopens them on the next call."""
        with self._exclusive():
            self._drop_all()
