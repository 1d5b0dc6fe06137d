"""What the CLI and the serving processes write to the audit log about themselves: the
CLI's reads of the log (``audit_read``, PCI DSS 10.2.1.3) and the start and graceful
stop of a vault process (``policy.load`` / ``process.stop``, 10.2.1.6) and each CRL it
puts in force (``crl.load``, 10.2.1.5); finding F6 of docs/pci-tokenization.md.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import secrets
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, cast

import structlog
from sqlalchemy import Engine

from api.crl import CrlFacts
from audit.errors import AuditWriteFailed
from audit.log import AuditEvent, AuditLog, DetailValue, HexDigest, Outcome
from cofre.dberrors import database_errors_as
from cofre.errors import CofreError, ConfigurationError
from cofre.redaction import mask_pan_like

_log = structlog.get_logger("cofre.vault")

# The API's action for a read of the log (`vault.operations.audit_access`): one action
# for an auditor to query, whichever way the log was read.
AUDIT_READ = "audit_read"
PROCESS_STOP = "process.stop"
# The new file an export writes beside its name until the copy is whole (`private_export`).
EXPORT_PREFIX = ".cofre-export-"
_EXPORT_TEMPORARY = re.compile(rf"{re.escape(EXPORT_PREFIX)}[0-9a-f]{{16}}\.tmp")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def process_details() -> dict[str, DetailValue]:
    """The host and process id, in a process's start and stop entries alike: a start
    with no stop of the same host and pid after it is a process that did not stop
    cleanly (killed, crashed, its node lost)."""
    return {"host": os.uname().nodename, "pid": os.getpid()}


def _os_user() -> str:
    """The login name of the effective user running the command (as the host knows it;
    the database and HSM credentials it used are the same for every operator)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def record_cli_read(engine: Engine, command: str, what: str, **details: DetailValue) -> None:
    """Write the ``audit_read`` entry of a CLI read of the log, durably, before the read:
    actor `command` (the CLI names its actions by command, e.g. `cofre tokens purge`),
    `what` in the API's words, the OS user and host, and `details` (no card data).

    Raises `AuditWriteFailed` when it cannot be written (a read-only connection, a
    database that refuses): the caller then reads nothing (fail closed, as the API)."""
    event = AuditEvent(
        action=AUDIT_READ,
        outcome=Outcome.SUCCESS,
        actor=command,
        details={
            "what": what,
            "command": command,
            "os_user": _os_user(),
            "host": os.uname().nodename,
            **details,
        },
    )
    with (
        database_errors_as(AuditWriteFailed, "the audit log (to record this read)"),
        engine.begin() as connection,
    ):
        AuditLog().append(connection, event)


def private_export(
    path: Path, record: Callable[[], None]
) -> contextlib.AbstractContextManager[TextIO]:
    """A new file, readable by this user alone (0600 whatever the umask), opened to write
    a copy of the log and put in `path`'s place: never written through a symbolic link,
    and refused when `path` is anything but absent or a regular file of this user's. A
    copy of the log is read access to it (PCI DSS 10.3.1): any other account that could
    read the copy, or had planted the file or a link to one of its own, would read the
    log with no `audit_read` of its own (review of session 32). Never the file already
    there, even one of ours: a mode change does not take back a descriptor another
    account opened while it was readable, nor a hard link to it (review of session 33).

    `record()` (the read's `audit_read` entry) is called once the new file is made and
    before a byte of the log is in it: a path that is refused (a FIFO planted there,
    whose open waited for a reader for good after the entry was written: session 33) is
    refused unrecorded, and a read that cannot be recorded leaves the path as it was.
    The new file is made in `path`'s directory, which must be writable, and takes the
    name when the returned block ends without an error, the copy whole and synced: one
    that fails (the database gone midway, a full disk, ^C) leaves the path as it was and
    removes the new file (review 34b: renamed before the copy was written, it left a
    partial copy in place of the previous one). Raises `ConfigurationError` (naming no
    path: it is the operator's text), or what `record` raises; the block raises
    `ConfigurationError` when the file cannot be written or take the name.

    Until the block ends, SIGTERM and SIGINT end the process through that clean-up
    (`_stops_raise`); the new file is held locked, and an export first removes the ones
    earlier runs left in the directory (a SIGKILL runs nothing: `_remove_stale`, review
    35: they accumulated, each a partial copy of the log an operator might take for an
    export)."""
    return cast("contextlib.AbstractContextManager[TextIO]", _private_file(path, record, "w"))


def private_download(path: Path) -> contextlib.AbstractContextManager[BinaryIO]:
    """`private_export`'s new file for bytes, with nothing to record first: where `cofre
    evidence export` writes a bundle, which holds the period's audit entries (a copy of
    the log too). Until drill 36 the bundle went through a `<out>.part` file that a
    SIGTERM left behind (and that then refused the next download) and a full disk ended
    in a traceback."""
    return cast("contextlib.AbstractContextManager[BinaryIO]", _private_file(path, _nothing, "wb"))


def _nothing() -> None:
    pass


def _private_file(
    path: Path, record: Callable[[], None], mode: str
) -> contextlib.AbstractContextManager[IO[Any]]:
    stops = contextlib.ExitStack()
    signals = stops.enter_context(_stops_raise())
    try:
        # Session 36: every look-up, creation, rename and unlink below is relative to
        # this handle, so whoever may write the directory above cannot swap `path`'s
        # directory for a link between a check and the act and redirect an unlink (or
        # the copy) elsewhere (review 35c). Opened as named, links included, once, as a
        # path handle: a directory its user may write but not list (a drop directory)
        # takes the export as before (session 36 review: opened for reading, refused).
        try:
            directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigurationError(f"cannot write the --out file ({exc.strerror})") from None
        stops.callback(os.close, directory)
        _check_replaceable(directory, path.name)
        _remove_stale(directory, time.time())
        handle, temporary, made = _new_file(directory, record, mode, signals)
    except BaseException:
        stops.close()
        raise
    return _into_place(handle, (directory, temporary, path.name), made, stops)


def _new_file(
    directory: int, record: Callable[[], None], mode: str, signals: _Stops
) -> tuple[IO[Any], str, os.stat_result]:
    """The new file (its name) in `directory`, 0600 and locked (an export under way:
    `_remove_stale` leaves it), once `record()` is done; opened in `mode`."""
    temporary = f"{EXPORT_PREFIX}{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor: int | None = None
    made: os.stat_result | None = None
    try:
        with signals.held():
            descriptor = os.open(temporary, flags, 0o600, dir_fd=directory)
            made = os.fstat(descriptor)
        os.fchmod(descriptor, 0o600)  # the umask may have taken the owner's bits
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        record()
        handle = os.fdopen(descriptor, mode, encoding=None if "b" in mode else "utf-8")
    except BaseException as exc:
        if descriptor is not None:
            os.close(descriptor)
        _remove_made(directory, temporary, made)
        if isinstance(exc, OSError):
            raise ConfigurationError(f"cannot write the --out file ({exc.strerror})") from None
        raise
    return handle, temporary, made


@contextlib.contextmanager
def _into_place(
    handle: IO[Any],
    names: tuple[int, str, str],
    made: os.stat_result,
    stops: contextlib.ExitStack,
) -> Iterator[IO[Any]]:
    """`handle` (the new file) for the block; then, the copy whole, the file in the
    name's place. `names` are the directory's handle, the new file's name and the
    export's. On any error, the new file removed and the name left as it was. `stops`
    (the signal handling, the directory's handle) is closed last."""
    directory, temporary, name = names
    with stops:
        try:
            with handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
                # In a shared (sticky) directory, a name another account took since the
                # check cannot be replaced: EPERM, refused. A directory there is EISDIR.
                # Renamed while still open, so locked: another export's `_remove_stale`
                # never takes a whole copy for a partial one.
                os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException as exc:
            _remove_made(directory, temporary, made)
            if isinstance(exc, OSError):
                raise ConfigurationError(f"cannot write the --out file ({exc.strerror})") from None
            raise


class _Stops:
    """`_stops_raise`'s handler. A stop signal raises `SystemExit` where the main thread
    is, except while `held()` runs: then it is acted on as that block ends."""

    def __init__(self) -> None:
        self._holding = False
        self._pending: int | None = None

    def stop(self, signum: int, _frame: object) -> None:
        for each in _STOP_SIGNALS:
            signal.signal(each, signal.SIG_DFL)
        if self._holding:
            self._pending = signum
            return
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A block a stop must not cut in two: the new file's creation and the fstat
        that makes it ours to remove (drill 36: a SIGTERM between the two raised with
        nothing known of the file, which was left behind)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending is not None:
            raise SystemExit(128 + self._pending)


@contextlib.contextmanager
def _stops_raise() -> Iterator[_Stops]:
    """While the block runs, SIGTERM and SIGINT raise `SystemExit` (128 + the signal), so
    that the export's clean-up runs (SIGTERM's default action ends the process with
    none); the first one puts both signals back to their default action, so a second
    one ends a clean-up that hangs. A signal the process ignores stays ignored. Only the
    main thread may set handlers: elsewhere, nothing changes."""
    stops = _Stops()
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, stops.stop)
    try:
        yield stops
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _remove_stale(directory: int, started: float) -> None:
    """Remove from `directory` (a handle) the new files exports left (`private_export`:
    killed, so nothing removed them): only names of that form, regular files of this
    user's (by `lstat`: a link is never followed), last written before `started` (this
    run) and locked by no export under way. Best effort: a file that cannot be judged
    is left. Each judged and removed relative to the handle (session 36)."""
    try:
        # Listed through the directory itself reopened for reading ("." relative to the
        # path handle, which cannot be listed): not by its path, which may be swapped.
        listed = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return  # a directory this user may not list: nothing judged, nothing removed
    try:
        with os.scandir(listed) as entries:
            names = [e.name for e in entries if _EXPORT_TEMPORARY.fullmatch(e.name)]
    except OSError:
        return
    finally:
        os.close(listed)
    removed = 0
    for name in names:
        with contextlib.suppress(OSError):
            removed += _remove_if_stale(directory, name, started)
    if removed:
        _log.info("removed partial exports left by earlier runs", count=removed)


def _remove_if_stale(directory: int, name: str, started: float) -> bool:
    found = os.stat(name, dir_fd=directory, follow_symlinks=False)
    if not (
        stat.S_ISREG(found.st_mode) and found.st_uid == os.geteuid() and found.st_mtime < started
    ):
        return False
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    descriptor = os.open(name, flags, dir_fd=directory)
    try:
        opened = os.fstat(descriptor)
        if (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino):
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # an export under way holds it
        _remove_made(directory, name, opened)
        return True
    finally:
        os.close(descriptor)


def _check_replaceable(directory: int, name: str) -> None:
    """Raise `ConfigurationError` unless `name` in `directory` is absent or a regular
    file of this user's (by `lstat`: a link is refused, not followed)."""
    try:
        found = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigurationError(f"cannot write the --out file ({exc.strerror})") from None
    if not (stat.S_ISREG(found.st_mode) and found.st_uid == os.geteuid()):
        raise ConfigurationError("the --out file is not a regular file of this user's")


def _remove_made(directory: int, name: str, made: os.stat_result | None) -> None:
    """Remove the new file `private_export` made, if `name` in `directory` still names
    it. The directory is the handle, so the name is judged and removed in one place
    (session 36: an unlink by path after the check could be sent elsewhere by a swapped
    directory; a file swapped in under the same name by whoever may write the directory
    itself is still a window, and such a person may remove the file anyway)."""
    with contextlib.suppress(OSError):
        now = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if made is not None and (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            os.unlink(name, dir_fd=directory)


def shown_path(path: Path) -> str:
    """`path` as the command may print it: card-like digits masked (the operator's text,
    and a command's output often ends up in a log) and undecodable bytes escaped. Masked
    before the escapes too: an escape's last digits glue to a card's first group after
    it, which the masking then no longer sees (review of session 33)."""
    escaped = mask_pan_like(str(path)).encode("utf-8", "backslashreplace").decode("utf-8")
    return mask_pan_like(escaped)


def stop_event() -> AuditEvent:
    """The entry of this process's graceful stop."""
    return AuditEvent(
        action=PROCESS_STOP, outcome=Outcome.SUCCESS, actor="cofre", details=process_details()
    )


def record_stop(write: Callable[[AuditEvent], None]) -> None:
    """Write this process's ``process.stop`` entry with `write` (the vault service's
    `record`). A stop cannot be refused: an entry that cannot be written is logged, and
    the log then shows a start without a stop, as after a crash."""
    try:
        write(stop_event())
    except CofreError as exc:
        _log.error("process stop not recorded in the audit log", code=exc.code)


CRL_LOAD = "crl.load"


def crl_recorder(write: Callable[[AuditEvent], None], path: str) -> Callable[[CrlFacts], None]:
    """A recorder for `api.crl.CrlWatcher.record_changes`: a ``crl.load`` entry, written
    with `write` (the vault service's `record`), for each CRL the process puts in force.
    Raises what `write` raises (`AuditWriteFailed`); the watcher retries."""

    def record(facts: CrlFacts) -> None:
        details: dict[str, DetailValue] = {
            "file": path,
            "issuer": facts.issuer,
            # Hex, as certificate serials are: a decimal CRL number could be masked.
            "crl_number": None if facts.number is None else HexDigest(format(facts.number, "x")),
            "this_update": facts.this_update,
            "next_update": facts.next_update,
            "revoked": facts.revoked,
            "delta": facts.delta,
            **process_details(),
        }
        write(AuditEvent(action=CRL_LOAD, outcome=Outcome.SUCCESS, actor="cofre", details=details))

    return record
