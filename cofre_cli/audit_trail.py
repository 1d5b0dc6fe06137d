"""What the CLI and the serving processes write to the audit log about themselves: the
CLI's reads of the log (``audit_read``, PCI DSS 10.2.1.3) and the start and graceful
stop of a vault process (``policy.load`` / ``process.stop``, 10.2.1.6) and each CRL it
puts in force (``crl.load``, 10.2.1.5); finding F6 of docs/pci-tokenization.md.

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

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


def private_export(path: Path, record: Callable[[], None]) -> TextIO:
    """`path` opened to write a copy of the log, readable by this user alone (0600
    whatever the umask): not through a symbolic link, not a file another user owns, only
    a regular file. A copy of the log is read access to it (PCI DSS 10.3.1): any other
    account that could read the copy, or had planted the file or a link to one of its
    own, would read the log with no `audit_read` of its own (review of session 32).

    `record()` (the read's `audit_read` entry) is called once the file is open and
    checked, before it is emptied or a byte of the log is in it: a path that is refused
    (a FIFO planted there, whose open waited for a reader for good after the entry was
    written: session 33) is refused unrecorded, and a read that cannot be recorded
    leaves the file as it was (or none, when this call created it).
    Raises `ConfigurationError` (naming no path: it is the operator's text), or what
    `record` raises."""
    descriptor, created = _open_for_export(path)
    try:
        found = os.fstat(descriptor)
    except OSError as exc:
        os.close(descriptor)
        raise ConfigurationError(f"cannot write the --out file ({exc.strerror})") from None
    if not (stat.S_ISREG(found.st_mode) and found.st_uid == os.geteuid()):
        os.close(descriptor)  # never one this call created: that is a regular file of ours
        raise ConfigurationError("the --out file is not a regular file of this user's")
    try:
        # Blocking again, for the writes (O_NONBLOCK only kept the open from waiting).
        os.set_blocking(descriptor, True)
        os.fchmod(descriptor, 0o600)  # before a byte of the log is in it
        record()
        os.ftruncate(descriptor, 0)
        return os.fdopen(descriptor, "w", encoding="utf-8")
    except BaseException as exc:
        os.close(descriptor)
        if created:
            _remove_created(path, found)
        if isinstance(exc, OSError):
            raise ConfigurationError(f"cannot write the --out file ({exc.strerror})") from None
        raise


def _open_for_export(path: Path) -> tuple[int, bool]:
    """Open `path` to write, never waiting (O_NONBLOCK: a FIFO with no reader fails
    ENXIO at once instead of blocking the open) and never through a link; return the
    descriptor and whether this call created the file."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            return os.open(path, flags), False
    except OSError as exc:
        raise ConfigurationError(f"cannot write the --out file ({exc.strerror})") from None


def _remove_created(path: Path, created: os.stat_result) -> None:
    """Remove the (empty) file `_open_for_export` created, if `path` still names it."""
    with contextlib.suppress(OSError):
        now = path.lstat()
        if (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino):
            path.unlink()


def shown_path(path: Path) -> str:
    """`path` as the command may print it: card-like digits masked (the operator's text,
    and a command's output often ends up in a log) and undecodable bytes escaped."""
    return mask_pan_like(str(path).encode("utf-8", "backslashreplace").decode("utf-8"))


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
