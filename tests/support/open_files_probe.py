"""Run by tests/hsm/test_guard40_open_files.py in a process of its own: a warm provider
on the real SoftHSM token, then the process's open-files limit lowered and every
descriptor under it taken, as in a worker that leaks sockets; then each kind of token
call or readiness check (one a process), twice, and once more when the descriptors are
given back.
Prints one JSON object.

    python -m tests.support.open_files_probe LIBRARY CONF LABEL PIN CALL
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import secrets
import sys
from collections.abc import Callable, Iterator

from hsm.errors import HSMError
from hsm.provider import HSMProvider
from tests.support.probes import probe_provider

LIMIT = 256
Call = Callable[[], object]


def _outcome(call: Callable[[], object]) -> list[str]:
    """``["ok"]``, or the `HSMError` raised: its class, its code and its message."""
    try:
        call()
    except HSMError as exc:
        unavailable = any(c.__name__ == "HSMUnavailable" for c in type(exc).__mro__)
        return [type(exc).__name__, exc.code, str(exc), "unavailable" if unavailable else "-"]
    return ["ok"]


CALLS = (
    "describe_key",
    "hmac_sha256",
    "hmac_sha256_many",
    "unwrap_key",
    "generate_wrapped_key",
    "sign",
    "list_keys",
    "health_check",
    "list_keys_for_check",
)


def _calls(provider: HSMProvider, hmac: str, kek: str, signing: str) -> dict[str, Call]:
    wrapped = provider.generate_wrapped_key(kek)
    return {
        "describe_key": lambda: provider.describe_key(hmac),
        "hmac_sha256": lambda: provider.hmac_sha256(hmac, b"guard40"),
        "hmac_sha256_many": lambda: provider.hmac_sha256_many(hmac, [b"guard", b"40"]),
        "unwrap_key": lambda: provider.unwrap_key(wrapped),
        "generate_wrapped_key": lambda: provider.generate_wrapped_key(kek),
        "sign": lambda: provider.sign(signing, b"guard40"),
        "list_keys": provider.list_keys,
        "health_check": provider.health_check,
        "list_keys_for_check": provider.list_keys_for_check,
    }


@contextlib.contextmanager
def _starved() -> Iterator[None]:
    """Every descriptor under a lowered limit taken, then given back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(LIMIT, soft), hard))
    taken: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main(library: str, conf: str, label: str, pin: str, name: str) -> None:
    """Call `name` on a warm provider (it answered once), so that it is the first call
    to meet the starved process: the first failure decides what the next ones see (a
    lost session reloads the library), and the process's one PKCS#11 library is every
    provider's, so each call is probed in a process of its own."""
    errors: list[str] = []

    class Errors(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    logging.getLogger().addHandler(Errors())
    provider = probe_provider(library, conf, label, pin)
    suffix = secrets.token_hex(4)
    hmac, kek, signing = f"fd-hmac-{suffix}", f"fd-kek-{suffix}", f"fd-sig-{suffix}"
    provider.generate_hmac_key(hmac)
    provider.generate_kek(kek)
    provider.generate_signing_key(signing)
    call = _calls(provider, hmac, kek, signing)[name]
    warm = _outcome(call)
    with _starved():
        starved = [_outcome(call), _outcome(call)]
    after = _outcome(call)
    for key in (hmac, kek, signing):
        # A process whose library lost them (before session 40) cannot: another can.
        with contextlib.suppress(HSMError):
            provider.destroy_key(key)
    provider.close()
    outcome = {"warm": warm, "starved": starved, "after": after, "errors": errors}
    sys.stdout.write(json.dumps(outcome) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:6])
