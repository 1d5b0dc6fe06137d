"""Run by tests/hsm/test_login.py in a process of its own, so that the token starts
logged out and the CloudHSM shim reads its fault file at load: the pool's login
(`hsm._login`) probed with a wrong PIN, or from many threads at once while faults end
the login and kill sessions. Prints one JSON object.

    python -m tests.support.login_probe wrong-pin LIBRARY CONF LABEL PIN
    python -m tests.support.login_probe race LIBRARY CONF LABEL PIN THREADS CALLS
    python -m tests.support.login_probe reinit LIBRARY CONF LABEL PIN FAULT_FILE
    python -m tests.support.login_probe lockout LIBRARY CONF LABEL PIN REFUSED_PIN
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path

from hsm.errors import HSMAuthFailed
from hsm.keys import KeyKind, key_label
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import ShimFaults
from tests.support.probes import probe_provider

LABEL = key_label(KeyKind.FINGERPRINT, 1)


def _frames_holding(exc: BaseException, secret: str) -> list[str]:
    """The frames, in `exc`'s tracebacks and those of its cause and context, whose
    locals hold `secret` (as text or UTF-8 bytes); this module's own frames, which
    were given it, are not counted."""
    encoded = secret.encode()
    holding: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
        tb: types.TracebackType | None = current.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == __file__:
                tb = tb.tb_next
                continue
            for name, value in tb.tb_frame.f_locals.items():
                if (isinstance(value, str) and secret in value) or (
                    isinstance(value, bytes) and encoded in value
                ):
                    holding.append(f"{tb.tb_frame.f_code.co_name}:{name}")
            tb = tb.tb_next
    return holding


def _mac_and_find(provider: HSMProvider) -> bool:
    provider.hmac_sha256(LABEL, b"probe")
    return provider.has_key(LABEL)


def wrong_pin(library: str, conf: str, label: str, pin: str) -> dict[str, object]:
    provider = probe_provider(library, conf, label, pin, 1)
    try:
        provider.hmac_sha256(LABEL, b"probe")
    except HSMAuthFailed as exc:
        return {"error": type(exc).__name__, "holding": _frames_holding(exc, pin)}
    return {"error": None, "holding": []}


def _outcome(call: Callable[[], bool]) -> str:
    """ "ok"; "key-invisible" when `call` finds no private key (a session that lost its
    login sees none); else the name of what it raised (every kind: the test judges)."""
    try:
        seen = call()
    except Exception as exc:  # noqa: BLE001 - counted by kind; the test says which may be
        return type(exc).__name__
    return "ok" if seen else "key-invisible"


def race(
    library: str, conf: str, label: str, pin: str, *, threads: int, calls: int
) -> dict[str, object]:
    """`threads` threads start at once on a pool of `threads // 2` sessions of a
    logged-out token and make `calls` calls each; then, the faults spent, one more each."""
    provider = probe_provider(library, conf, label, pin, max(1, threads // 2))
    outcomes: collections.Counter[str] = collections.Counter()
    after: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(threads)
    again = threading.Barrier(threads)

    def call(into: collections.Counter[str]) -> None:
        outcome = _outcome(lambda: _mac_and_find(provider))
        with lock:
            into[outcome] += 1

    def work() -> None:
        start.wait(timeout=60)
        for _ in range(calls):
            call(outcomes)
        again.wait(timeout=60)
        call(after)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    hung = sum(worker.is_alive() for worker in workers)
    provider.close()
    return {"during": dict(outcomes), "after": dict(after), "hung": hung}


def reinit(library: str, conf: str, label: str, pin: str, fault_file: str) -> dict[str, object]:
    """Logged in, then the HSM gone long enough for the pool to re-initialise the library
    (``C_Finalize``, ``C_Initialize``), then back: does the login cached before it work?"""
    provider = probe_provider(library, conf, label, pin, 2)
    faults = ShimFaults(Path(fault_file))
    steps: list[str] = []

    def step() -> None:
        steps.append(_outcome(lambda: _mac_and_find(provider)))

    step()
    faults.inject("TOKEN_NOT_PRESENT", ["*"])
    step()
    faults.clear()
    step()
    step()
    provider.close()
    return {"steps": steps}


def lockout(library: str, conf: str, label: str, pin: str, refused: str) -> dict[str, object]:
    """A node configured with a PIN the HSM refuses, called by eight threads at once, three
    calls each; then a node with the right PIN (the shim's lockout counts for the whole
    process, as CloudHSM's does for the crypto user on every node)."""
    wrong = probe_provider(library, conf, label, refused, 4)
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait(timeout=60)
        for _ in range(3):
            outcome = _outcome(lambda: _mac_and_find(wrong))
            with lock:
                outcomes[outcome] += 1

    workers = [threading.Thread(target=work) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    wrong.close()
    right = probe_provider(library, conf, label, pin, 1)
    after = _outcome(lambda: _mac_and_find(right))
    right.close()
    return {"wrong": dict(outcomes), "right": after}


def main(argv: list[str]) -> None:
    mode, library, conf, label, pin, *rest = argv
    if mode == "wrong-pin":
        result = wrong_pin(library, conf, label, pin)
    elif mode == "lockout":
        result = lockout(library, conf, label, pin, rest[0])
    elif mode == "reinit":
        result = reinit(library, conf, label, pin, rest[0])
    else:
        result = race(library, conf, label, pin, threads=int(rest[0]), calls=int(rest[1]))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
