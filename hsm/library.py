"""The PKCS#11 library itself: loading it, what it says about itself, and whether it is
SoftHSM2 (moved out of `hsm.session`).

IN PCI SCOPE.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Final

import pkcs11
import pkcs11.exceptions as p11e

from hsm.errors import HSMUnavailable
from hsm.models import LibraryIdentity

# What SoftHSM2 calls itself: manufacturer "SoftHSM" (C_GetInfo), "SoftHSM project"
# (slot and token), model "SoftHSM v2". Its library description, "Implementation of
# PKCS11", names no product and is not read.
_SOFTHSM_NAME: Final = "softhsm"


def pool_size_for(library: Path, requested: int) -> int:
    """Return the session pool size used for `library`: `requested`, or 1 for SoftHSM2
    loaded directly (it runs without locking under python-pkcs11; see the docstring)."""
    return 1 if is_softhsm(library) else max(1, requested)


def softhsm_module(lib: Any) -> bool:
    """Whether loaded library `lib` is SoftHSM2's own module, whatever its file name: its
    ``C_GetInfo`` manufacturer says SoftHSM. python-pkcs11 initialised it with
    ``C_Initialize(NULL)``, so it runs without locking and two threads on two sessions
    corrupt its heap (session 45: a renamed copy, pooled because its name did not say
    SoftHSM, aborted `cofre serve` at start, "malloc(): unaligned fastbin chunk"). A
    module that forwards to SoftHSM2 after asking it for OS locking (the tests'
    CloudHSM-behaviour shim) names itself."""
    return _SOFTHSM_NAME in str(lib.manufacturer_id).casefold()


def is_softhsm(library: Path) -> bool:
    """Whether `library` is SoftHSM2 loaded directly (by its file name, ``libsofthsm2``):
    a software token, pooled as one session here and refused by `cofre serve` unless
    ``COFRE_INSECURE__ALLOW_SOFTWARE_HSM`` is set (it is no secure cryptographic device).
    Known before loading; `says_softhsm` reads what a loaded library says instead."""
    return library.name.startswith("libsofthsm2")


def cloudhsm_pin_problem(library: Path, pin: str) -> str | None:
    """Why `pin` cannot log in to `library` if that is AWS CloudHSM's PKCS#11 library
    (its file name says ``cloudhsm``, as ``libcloudhsm_pkcs11.so`` does), else None.
    SDK 5 takes the PIN as ``<CU user name>:<password>`` (pkcs11-pin.html); a bare
    password fails there, and is not sent: each refused PIN counts toward the crypto
    user's lockout. Never says the PIN, only that it has no ``:``."""
    if "cloudhsm" not in library.name.casefold() or ":" in pin:
        return None
    return (
        f"the HSM PIN has no ':', and the PKCS#11 library {library} is AWS CloudHSM's, "
        f"which takes <CU user name>:<password> (docs/cloudhsm.md, section 3): set "
        "COFRE_HSM__PIN or the pin_file to the crypto user's name, a ':' and its password"
    )


def pin_hint(pin: str) -> str:
    """What to add to a refused PIN's error: SDK 5's PIN shape when `pin` lacks it (any
    library: CloudHSM's may be installed under another name). Never the PIN."""
    if ":" in pin:
        return ""
    return "; the PIN has no ':' (AWS CloudHSM takes <CU user name>:<password>)"


def says_softhsm(identity: LibraryIdentity) -> bool:
    """Whether a loaded library names SoftHSM as its maker or its token's model: what
    SoftHSM2 answers under any file name, and what the tests' CloudHSM shim passes
    through from the SoftHSM2 it forwards to. A library that lies passes."""
    named = (
        identity.manufacturer,
        identity.slot_manufacturer,
        identity.token_manufacturer,
        identity.token_model,
    )
    return any(_SOFTHSM_NAME in field.casefold() for field in named)


def load_library(library: Path, softhsm_conf: Path | None) -> Any:
    """Return python-pkcs11's (initialised) library object for `library`, with SoftHSM2
    pointed at `softhsm_conf` when one is set. Raises `HSMUnavailable`."""
    if softhsm_conf is not None:
        # SoftHSM reads SOFTHSM2_CONF once, when python-pkcs11 first loads the library
        # in this process (it caches one library object per path).
        os.environ["SOFTHSM2_CONF"] = str(softhsm_conf)
    if not library.is_file():
        raise HSMUnavailable(f"PKCS#11 library not found: {library}")
    try:
        return pkcs11.lib(str(library))
    except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
        raise HSMUnavailable(
            f"cannot load PKCS#11 library {library}: {type(exc).__name__}"
        ) from None


def library_identity(library: Path, softhsm_conf: Path | None, token_label: str) -> LibraryIdentity:
    """Load `library` as the vault would (`load_library`) and return what it says about
    itself and about the slot and token labelled `token_label` (the token's fields stay
    empty when the token cannot be listed now: a networked HSM may be down at start).

    Then the library is finalised (``C_Finalize``), so that a `cofre serve` supervisor
    holds no client connection of its own to a networked HSM; python-pkcs11 initialises
    it again at its next use. Call it before anything else in the process uses
    `library`. Raises `HSMUnavailable` when the library cannot be loaded or initialised,
    or does not answer ``C_GetInfo``."""
    lib = load_library(library, softhsm_conf)
    try:
        found: tuple[str, str, str] = ("", "", "")
        with contextlib.suppress(p11e.PKCS11Error):
            for slot in lib.get_slots(token_present=True):
                token = slot.get_token()
                if token.label == token_label:
                    found = (slot.manufacturer_id, token.manufacturer_id, token.model)
                    break
        return LibraryIdentity(
            manufacturer=lib.manufacturer_id,
            description=lib.library_description,
            slot_manufacturer=found[0],
            token_manufacturer=found[1],
            token_model=found[2],
        )
    finally:
        with contextlib.suppress(p11e.PKCS11Error):
            lib.finalize()
