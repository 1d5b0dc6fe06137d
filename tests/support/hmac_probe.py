"""Run by tests/hsm/test_rev32_hmac.py in a process of its own, so that the CloudHSM shim
reads its fault file at load: a batch of HMACs (`HSMProvider.hmac_sha256_many`) on a
pool of sessions while the shim's fault knob fails chosen calls. Prints one JSON object.

    python -m tests.support.hmac_probe batch LIBRARY CONF LABEL PIN FAULT_FILE POOL \
        CODE FUNCTIONS COUNT
    python -m tests.support.hmac_probe refused-pin LIBRARY CONF LABEL PIN REFUSED_PIN
    python -m tests.support.hmac_probe small-buffer LIBRARY CONF LABEL PIN
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from hsm import _hmac
from hsm.keys import KeyKind, key_label
from tests.support.cloudhsm_shim import ShimFaults
from tests.support.probes import probe_provider

LABEL = key_label(KeyKind.FINGERPRINT, 1)
BATCH = 1000


def _bounded(call: object, timeout: float = 120) -> tuple[str, object]:
    """Run `call` in a thread; ("hung", None) when it does not end within `timeout` (a
    bound on a hang, never a duration)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()  # type: ignore[operator]
            box["kind"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported by kind; the test judges
            box["kind"] = type(exc).__name__

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return "hung", None
    return str(box["kind"]), box.get("value")


def batch(
    library: str,
    conf: str,
    label: str,
    pin: str,
    fault_file: str,
    *,
    pool: int,
    code: str,
    functions: list[str],
    count: int | None,
) -> dict[str, object]:
    """A batch of `BATCH` HMACs before any fault (the expected MACs, one by one), then
    under `count` faults `code` on `functions`, then after them; and what the shim
    injected and holds open once the provider is closed."""
    faults = ShimFaults(Path(fault_file))
    faults.clear()
    provider = probe_provider(library, conf, label, pin, pool)
    messages = [f"5{i:015d}".encode() for i in range(BATCH)]
    expected = [provider.hmac_sha256(LABEL, m) for m in messages[:: BATCH // 10]]
    faults.inject(code, functions, count)
    kind, value = _bounded(lambda: provider.hmac_sha256_many(LABEL, messages))
    injected = faults.report().injected
    during = kind
    if kind == "ok":
        macs = value if isinstance(value, list) else []
        during = "ok" if macs[:: BATCH // 10] == expected and len(macs) == BATCH else "wrong"
    faults.clear()
    after_kind, after_value = _bounded(lambda: provider.hmac_sha256_many(LABEL, messages))
    after = after_kind
    if after_kind == "ok":
        macs = after_value if isinstance(after_value, list) else []
        after = "ok" if macs[:: BATCH // 10] == expected and len(macs) == BATCH else "wrong"
    provider.close()
    report = faults.report()
    return {
        "during": during,
        "injected": injected,
        "after": after,
        "zombies": report.zombies,
        "live": report.live,
    }


def refused_pin(library: str, conf: str, label: str, pin: str, refused: str) -> dict[str, object]:
    """A node with a PIN the HSM refuses runs two batches of `BATCH` on a pool of 8 (four
    chunks at once), then a node with the right PIN makes one HMAC (the shim's lockout
    counts refusals for the whole process, as CloudHSM's does for the crypto user)."""
    messages = [f"5{i:015d}".encode() for i in range(BATCH)]
    wrong = probe_provider(library, conf, label, refused, 8)
    kinds = [_bounded(lambda: wrong.hmac_sha256_many(LABEL, messages))[0] for _ in range(2)]
    wrong.close()
    right = probe_provider(library, conf, label, pin, 1)
    after = _bounded(lambda: len(right.hmac_sha256(LABEL, b"probe")))[0]
    right.close()
    return {"wrong": kinds, "right": after}


def small_buffer(library: str, conf: str, label: str, pin: str) -> dict[str, object]:
    """``C_Sign`` answers ``CKR_BUFFER_TOO_SMALL`` (a buffer made smaller than the MAC):
    the operation stays open on that session, so the session must be dropped; with the
    buffer right again the next HMAC must work, not meet ``CKR_OPERATION_ACTIVE``."""
    provider = probe_provider(library, conf, label, pin, 1)
    expected = provider.hmac_sha256(LABEL, b"probe")
    right = _hmac._MAC_BUFFER
    _hmac._MAC_BUFFER = 16  # type: ignore[misc]
    try:
        during = _bounded(lambda: provider.hmac_sha256(LABEL, b"probe"))[0]
    finally:
        _hmac._MAC_BUFFER = right  # type: ignore[misc]
    kind, value = _bounded(lambda: provider.hmac_sha256(LABEL, b"probe"))
    provider.close()
    return {"during": during, "after": "ok" if kind == "ok" and value == expected else kind}


def main(argv: list[str]) -> None:
    mode, library, conf, label, pin, *rest = argv
    if mode == "refused-pin":
        result = refused_pin(library, conf, label, pin, rest[0])
        sys.stdout.write(json.dumps(result) + "\n")
        return
    if mode == "small-buffer":
        sys.stdout.write(json.dumps(small_buffer(library, conf, label, pin)) + "\n")
        return
    fault_file, pool, code, functions, count = rest
    assert mode == "batch"
    result = batch(
        library,
        conf,
        label,
        pin,
        fault_file,
        pool=int(pool),
        code=code,
        functions=functions.split(","),
        count=None if count == "*" else int(count),
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
