"""A private SoftHSM2 token for the test session (never the system token store)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY, HSMSettings
from hsm.errors import HSMUnavailable
from hsm.keys import parse_code_epoch_label
from hsm.provider import HSMProvider
from hsm.softhsm import init_softhsm_token, write_softhsm_conf
from tests.support.dev import clean_env


@dataclass(frozen=True)
class SoftHSMToken:
    conf: Path
    token_dir: Path
    label: str
    user_pin: str
    so_pin: str
    library: Path = DEFAULT_SOFTHSM_LIBRARY

    def settings(self, **overrides: object) -> HSMSettings:
        values: dict[str, object] = {
            "library": self.library,
            "token_label": self.label,
            "pin": SecretStr(self.user_pin),
            "softhsm_conf": self.conf,
        }
        values.update(overrides)
        return HSMSettings.model_validate(values)


def officer_token_label(token: SoftHSMToken, name: str) -> str:
    """The label of a dev officer's own token in the session (labels are <= 32 chars)."""
    return f"mfa-{name}-{token.label[-8:]}"


def create_token(base: Path, label: str | None = None) -> SoftHSMToken:
    """Write a softhsm2.conf under `base`, point SOFTHSM2_CONF at it, and init a token.

    SOFTHSM2_CONF must be set before python-pkcs11 first loads the library in this
    process, which is why this runs in a session fixture before anything else.
    """
    conf = base / "softhsm2.conf"
    token_dir = base / "tokens"
    write_softhsm_conf(conf, token_dir)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    token = SoftHSMToken(
        conf=conf,
        token_dir=token_dir,
        label=label or f"cofre-test-{secrets.token_hex(4)}",
        # SDK 5's shape, <CU user name>:<password>: the CloudHSM shim refuses a PIN
        # without the ":" (pkcs11-pin.html), and both backends take this one.
        user_pin="cofre-cu:" + secrets.token_urlsafe(12),
        so_pin=secrets.token_urlsafe(12),
    )
    init_softhsm_token(conf, token.label, so_pin=token.so_pin, user_pin=token.user_pin)
    # A second token for tests that rotate and destroy keys (KEK, fingerprint), so they
    # never pull keys from under the rest of the session. Created now because SoftHSM
    # lists its tokens once, when the library is first loaded.
    init_softhsm_token(conf, token.label + "-rot", so_pin=token.so_pin, user_pin=token.user_pin)
    # The dev officers' own tokens (their second factor: tests/support/officers.py).
    for name in ("officer-alice", "officer-bob", "auditor"):
        init_softhsm_token(
            conf, officer_token_label(token, name), so_pin=token.so_pin, user_pin=token.user_pin
        )
    return token


def destroy_code_epochs(provider: HSMProvider) -> None:
    """Destroy every security-code epoch key (``cofre-csc-e*``) on `provider`'s token.

    A vault registers the epoch keys it makes in its own database; on a token shared by
    many tests' vaults, another vault's epoch key is an unregistered key to every other
    one (readiness 503 `hsm_key_unregistered`, as it should be in production). A test
    that holds security codes on a shared token calls this when it is done."""
    for key in provider.list_keys():
        if parse_code_epoch_label(key.label) is not None and provider.has_key(key.label):
            provider.destroy_key(key.label)


# A bound on waiting for a library's load to end: fails only on a hang.
LOAD_BOUND = 120.0


def settled_health_check(provider: HSMProvider) -> None:
    """`provider.health_check()`, repeated while it answers that the library's load has
    not returned: a readiness check waits only briefly for the load it hands to a
    background thread (session 34), so a fresh provider's first check may answer that
    before the load's own outcome. Raises what the check raises then."""
    deadline = time.monotonic() + LOAD_BOUND
    while True:
        try:
            provider.health_check()
        except HSMUnavailable as exc:
            if "PKCS#11 library not answering" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


T = TypeVar("T")
# What a readiness check answers while the token's call is late (`hsm._readiness`).
_LATE = "has not answered a readiness check's call"


def settled_ready(check: Callable[[], T]) -> T:
    """`check()` (a service's `check_ready`), repeated while it answers that the token's
    readiness call is late: that call is bounded by `READY_CALL_WAIT_SECONDS` (2 s) of
    wall time, a hang detector for a networked HSM, which a busy test machine can pass
    (a clean-clone run, session 41: the registry's key pair proof on the shared SoftHSM2
    token took over 2 s once). Raises what the check raises otherwise, or once the
    token has been late for `LOAD_BOUND` (a hang)."""
    deadline = time.monotonic() + LOAD_BOUND
    while True:
        try:
            return check()
        except HSMUnavailable as exc:
            if _LATE not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_DESTROY = """
import sys, pkcs11
token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
with token.open(rw=True, user_pin=sys.argv[3]) as session:
    for key in session.get_objects({pkcs11.Attribute.LABEL: sys.argv[4]}):
        key.destroy()
"""


def destroy_label(token: SoftHSMToken, label: str) -> None:
    """Destroy every object labelled `label` on the token, as someone with the PIN could
    (in a process of its own: python-pkcs11 reads SOFTHSM2_CONF once per process)."""
    subprocess.run(
        [sys.executable, "-c", _DESTROY, str(token.library), token.label, token.user_pin, label],
        env=clean_env() | {"SOFTHSM2_CONF": str(token.conf)},
        check=True,
        timeout=120,
    )
