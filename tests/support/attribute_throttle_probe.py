"""Run by tests/hsm/test_hsm38b_throttled_attributes.py in a process of its own, so the
CloudHSM shim reads its fault file when it loads: throttled ``C_GetAttributeValue``
calls (``CKR_DEVICE_ERROR``, AWS ki-pkcs11-15), the first COUNT of a call refused, for
each COUNT of `COUNTS`. python-pkcs11 0.10.1 lets some through with no error and
attributes missing (`hsm._describe`). Prints one JSON object: for each COUNT, what a
key listing answered ("same" as unthrottled, an error, or the keys described
otherwise), and what a lookup of the fingerprint key answered (an HMAC under it, looked
up afresh, pinned as the key registry pins it) and a signature by the audit key; then
whether later calls answered.

    python -m tests.support.attribute_throttle_probe LIBRARY CONF LABEL PIN FAULT_FILE
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from hsm.errors import HSMError
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider
from tests.support.cloudhsm_shim import ShimFaults
from tests.support.probes import probe_provider

# Reads refused: python-pkcs11 sorts each found object into its classes with a read of
# its own (and, when that fails, one per attribute), so a lookup's check is some way in.
COUNTS = range(1, 16)


def _throttled(faults: ShimFaults, count: int, call: Callable[[], str]) -> str:
    faults.inject("DEVICE_ERROR", ["C_GetAttributeValue"], count=count)
    try:
        return call()
    except HSMError as exc:
        return f"{type(exc).__name__} {exc.code}: {exc}"
    finally:
        faults.clear()


def _lookup(provider: HSMProvider, key: str) -> str:
    provider._forget_keys()  # every session looks the key up (and checks it) again
    return f"ok {len(provider.hmac_sha256(key, b'probe'))}"


def _signing(provider: HSMProvider, label: str) -> str:
    provider._forget_keys()
    try:
        return f"ok {len(provider.sign(label, b'probe')) > 0}"
    except AttributeError as exc:  # a key python-pkcs11 built without its capabilities
        return f"AttributeError: {exc}"


def main(argv: list[str]) -> None:
    library, conf, label, pin, fault_file = argv
    provider = probe_provider(library, conf, label, pin)
    faults = ShimFaults(Path(fault_file))
    key = KeyHierarchy(provider).current_label(KeyKind.FINGERPRINT)
    audit = KeyHierarchy(provider).current_label(KeyKind.AUDIT)
    pins = {}
    for label in (key, audit):
        info = next(k for k in provider.list_keys() if k.label == label and k.key_check)
        pins[label] = (info.key_id, info.key_check)
    provider.pin_key_identities(pins)
    listed = provider.list_keys()
    result: dict[str, object] = {}
    for count in COUNTS:
        result[f"listing {count}"] = _throttled(
            faults,
            count,
            lambda: "same" if (keys := provider.list_keys()) == listed else repr(keys),
        )
        result[f"lookup {count}"] = _throttled(faults, count, lambda: _lookup(provider, key))
        result[f"signing {count}"] = _throttled(faults, count, lambda: _signing(provider, audit))
    result["after"] = _lookup(provider, key)
    result["listing after"] = "same" if provider.list_keys() == listed else "differs"
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:6])
