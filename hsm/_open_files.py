"""Whether this process can open a file, asked when a token call fails (session 40).

IN PCI SCOPE, as part of the hsm package; it holds no key and no card data.

SoftHSM keeps each token object in a file it opens again to read the object. In a
process whose open-files limit (``RLIMIT_NOFILE``) is used up it finds no object and
says so: a key lookup was `HSMKeyNotFound` ("run `cofre hsm init`"), a wrap or unwrap
`HSMOperationFailed`, a reload of the library "cannot load PKCS#11 library", and the
readiness check passed (a random number needs no file). On-call looked for a key that
was there; and SoftHSM forgets the objects it could not read, so once descriptors were
back the worker still found no key until it was restarted. A failing call, a key
listing and a readiness check now open the null device once; when that fails for want
of descriptors they raise `HSMOpenFilesExhausted` instead, log it at ERROR at most once
a `_LOG_INTERVAL`, and a failing call re-initialises the library (the next call once
descriptors are back loads the token again). A networked HSM's client
(CloudHSM) also needs descriptors for its connections: the same check names the cause.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Final

from hsm.errors import HSMOpenFilesExhausted

_log = logging.getLogger(__name__)
# One ERROR line a minute: every call of a starved worker fails, each would log one.
_LOG_INTERVAL: Final = 60.0
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE})


class OpenFiles:
    """The check, and when it last logged (one per `hsm.session.TokenSession`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged_at: float | None = None

    def refuse_if_exhausted(
        self, failed: BaseException | None = None, reload: Callable[[], None] | None = None
    ) -> None:
        """Return when this process can open a file now; else raise
        `HSMOpenFilesExhausted` naming the limit (from `failed`, the token's own answer,
        when there is one), log it at ERROR, and first call `reload` (the library's
        re-initialisation): SoftHSM forgets the objects it could not read, and goes on
        finding no key once descriptors are back until it loads the token again."""
        if isinstance(failed, HSMOpenFilesExhausted):
            refused = failed  # asked already, by a call nested in this one
        else:
            try:
                probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in _EXHAUSTED:
                    return
                refused = HSMOpenFilesExhausted(_cause(exc.errno))
                refused.__cause__ = failed
            else:
                os.close(probe)
                return
            self._log(refused, failed)
        if reload is not None:
            reload()
        raise refused

    def _log(self, refused: HSMOpenFilesExhausted, failed: BaseException | None) -> None:
        now = time.monotonic()
        with self._lock:
            if self._logged_at is not None and now - self._logged_at < _LOG_INTERVAL:
                return
            self._logged_at = now
        answer = f" (the token answered: {type(failed).__name__})" if failed is not None else ""
        _log.error("%s%s", refused, answer)


def _cause(number: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if number == errno.ENFILE:
        where = "the host's open-files table is full (ENFILE)"
    else:
        where = (
            f"this process's open-files limit is used up (RLIMIT_NOFILE soft {soft}, "
            f"hard {hard}: EMFILE)"
        )
    return (
        f"the HSM library cannot open its files: {where}; the keys are not missing. "
        "Raise the limit (LimitNOFILE, ulimit -n) or find the descriptors leaked "
        "(ls /proc/<pid>/fd)"
    )
