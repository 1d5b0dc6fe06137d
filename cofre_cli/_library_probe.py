"""`cofre serve`'s start-up question to the PKCS#11 library (what it says about itself,
`hsm.library.library_identity`), asked in a child process with a bound.

IN PCI SCOPE (wiring).

A networked HSM's client may hang in ``C_Initialize`` while its cluster does not answer
(a CloudHSM client is one). Asked in the supervisor, that hang came before any
listener: the pod never listened, its liveness probe failed, and no log line said why.
In a child that is killed at the bound, the supervisor never loads the library at all
(so it holds no half-initialised client when it starts its workers), and a hang is
reported like a library that does not initialise. Run as ``python -m
cofre_cli._library_probe LIBRARY SOFTHSM_CONF TOKEN_LABEL``: one JSON object on stdout,
the identity's fields or ``{"error": ...}``; never the PIN (it is not asked for).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from hsm.errors import HSMUnavailable
from hsm.library import library_identity
from hsm.models import LibraryIdentity


def bounded_library_identity(
    library: Path,
    softhsm_conf: Path | None,
    token_label: str,
    *,
    seconds: float,
) -> LibraryIdentity:
    """What `library` says about itself and the token labelled `token_label`
    (`hsm.library.library_identity`), asked in a child process. Raises `HSMUnavailable`
    when the library cannot be loaded or initialised, or when it has not answered within
    `seconds` (the child is killed: ``C_Initialize`` hung)."""
    command = [
        sys.executable,
        "-m",
        "cofre_cli._library_probe",
        str(library),
        "" if softhsm_conf is None else str(softhsm_conf),
        token_label,
    ]
    try:
        # S603: the command is this interpreter and this module; the arguments are
        # settings, passed as a list (no shell).
        done = subprocess.run(  # noqa: S603
            command,
            capture_output=True,
            text=True,
            timeout=seconds,
            check=False,
            env=dict(os.environ),
        )
    except subprocess.TimeoutExpired:
        raise HSMUnavailable(
            f"the PKCS#11 library {library} did not answer C_Initialize and C_GetInfo "
            f"within {seconds:g} s (its HSM or cluster may be unreachable)"
        ) from None
    except OSError as exc:
        raise HSMUnavailable(
            f"cannot ask the PKCS#11 library {library} ({type(exc).__name__})"
        ) from None
    try:
        answer = json.loads(done.stdout)
        if "error" in answer:
            raise HSMUnavailable(str(answer["error"]))
        return LibraryIdentity(**{f.name: str(answer[f.name]) for f in _FIELDS})
    except (ValueError, TypeError, KeyError):
        raise HSMUnavailable(
            f"the PKCS#11 library {library} could not be asked (the probe ended with "
            f"status {done.returncode})"
        ) from None


_FIELDS: Final = dataclasses.fields(LibraryIdentity)


def _main(argv: list[str]) -> int:
    library, softhsm_conf, token_label = argv
    try:
        identity = library_identity(
            Path(library), Path(softhsm_conf) if softhsm_conf else None, token_label
        )
    except HSMUnavailable as exc:
        answer: dict[str, str] = {"error": str(exc)}
    else:
        answer = dataclasses.asdict(identity)
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
