"""Build the CloudHSM-behaviour PKCS#11 shim (cloudhsm_shim.c) for a test run.

The shim encodes our reading of AWS's CloudHSM Client SDK 5 documentation; it is not
CloudHSM (see the C file's header and docs/cloudhsm.md). It is compiled into the pytest
temp dir on every run; no binary is committed.

One process, two SoftHSM2 instances. The suite's process also loads SoftHSM2 directly
(python-pkcs11 keeps one library object per path, and SoftHSM2 keeps global state), so
the shim forwards to a *copy* of libsofthsm2.so: the dynamic loader treats the copy as a
different library, with its own state and its own login, over the same token directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from hsm.provider import HSMProvider

SOURCE = Path(__file__).with_name("cloudhsm_shim.c")
PKCS11_INCLUDE = Path("/usr/include/p11-kit-1")


class ShimBuildFailed(RuntimeError):
    """gcc or p11-kit's pkcs11.h is missing, or the shim does not compile."""


@dataclass(frozen=True)
class CloudHSMShim:
    library: Path
    target: Path

    def env(
        self,
        latency_us: int = 0,
        key_availability_ms: int = 0,
        gate_attributes: bool = False,
        fault_file: Path | None = None,
        hide_mechanisms: Iterable[int] = (),
    ) -> dict[str, str]:
        """The environment a process needs to load this shim (forwarding to `target`);
        with `fault_file`, calls fail as that control file says (`ShimFaults`); the
        mechanisms in `hide_mechanisms` are ones this token lacks."""
        return {
            "COFRE_SHIM_HIDE_MECHANISMS": ",".join(hex(number) for number in hide_mechanisms),
            "COFRE_SHIM_TARGET": str(self.target),
            "COFRE_SHIM_LATENCY_US": str(latency_us),
            "COFRE_SHIM_KEY_AVAILABILITY_MS": str(key_availability_ms),
            "COFRE_SHIM_GATE_ATTRIBUTES": "1" if gate_attributes else "0",
            "COFRE_SHIM_FAULT_FILE": str(fault_file) if fault_file is not None else "",
        }


# What `ShimFaults.inject` may ask for (cloudhsm_shim.c, section "faults"): the codes a
# client sees when its connection to an HSM drops or an HSM is replaced, or a busy
# (throttled) HSM's FUNCTION_FAILED or OPERATION_ACTIVE, and the calls that can fail
# with them; or HANG (`ShimFaults.hang`): the call black-holes, as on a connection that
# stops answering without closing, until the control file changes.
FAULT_CODES: Final = (
    "DEVICE_ERROR",
    "SESSION_HANDLE_INVALID",
    "SESSION_CLOSED",
    "TOKEN_NOT_PRESENT",
    "FUNCTION_FAILED",
    "OPERATION_ACTIVE",
    "HANG",
)
FAULT_FUNCTIONS: Final = frozenset(
    {
        "C_OpenSession",
        "C_Login",
        "C_FindObjectsInit",
        "C_FindObjects",
        "C_FindObjectsFinal",
        "C_SignInit",
        "C_Sign",
        "C_EncryptInit",
        "C_Encrypt",
        "C_EncryptUpdate",
        "C_DecryptInit",
        "C_Decrypt",
        "C_DecryptUpdate",
        "C_WrapKey",
        "C_UnwrapKey",
        "C_GenerateRandom",
        "C_GetAttributeValue",
    }
)


class MalformedFault(RuntimeError):
    """The shim could not parse its control file (it injects nothing then)."""


@dataclass(frozen=True)
class FaultReport:
    """What the shim reports: faults injected since the file last changed, sessions it
    killed that the application has not closed yet, and live sessions it holds open."""

    injected: int
    zombies: int
    live: int


@dataclass(frozen=True)
class Fault:
    """One rule of the shim's control file: the next `count` calls of `functions` (every
    call, with None) fail with CKR_`code`."""

    code: str
    functions: tuple[str, ...]
    count: int | None = None

    def line(self) -> str:
        names = sorted(set(self.functions))
        if self.code not in FAULT_CODES:
            raise ValueError(f"unknown fault code {self.code!r}")
        if not names or not set(names) <= FAULT_FUNCTIONS | {"*"}:
            raise ValueError(f"unknown PKCS#11 functions {sorted(set(names) - FAULT_FUNCTIONS)}")
        if self.count is not None and self.count <= 0:
            raise ValueError("count must be positive")
        return f"{self.code} {'*' if self.count is None else self.count} {','.join(names)}\n"


@dataclass(frozen=True)
class ShimFaults:
    """The control file of a shim loaded with `CloudHSMShim.env(fault_file=...)`, read by
    the shim on every call, in this process or another. Test-only."""

    path: Path

    def inject(self, code: str, functions: Iterable[str], count: int | None = None) -> None:
        """Make the next `count` calls of `functions` ("*": all of `FAULT_FUNCTIONS`;
        every call while on, with None) fail with CKR_`code`."""
        self.set(Fault(code, tuple(functions), count))

    def hang(self, functions: Iterable[str], count: int | None = None) -> None:
        """Make the next `count` calls of `functions` (every call, with None) hang until
        the control file changes (`clear`, or any other rule); then each goes on and
        answers as the token does. `report().injected` counts the calls that hung."""
        self.set(Fault("HANG", tuple(functions), count))

    def set(self, *faults: Fault) -> None:
        """Replace the shim's rules with `faults` (at most four; for each call the first
        that applies answers it)."""
        if not 0 < len(faults) <= 4:
            raise ValueError("one to four faults")
        self._write("".join(fault.line() for fault in faults))

    def clear(self) -> None:
        """Switch every fault off (a hanging ``C_Initialize`` too)."""
        self._write("")
        self.answer_initialize()

    def hang_initialize(self) -> None:
        """Make every ``C_Initialize`` wait, in any process that loads the shim, until
        `answer_initialize`: a CloudHSM client whose cluster does not answer."""
        self._hang_file.touch()

    def answer_initialize(self) -> None:
        """Let every waiting and later ``C_Initialize`` go on."""
        self._hang_file.unlink(missing_ok=True)

    @property
    def _hang_file(self) -> Path:
        return self.path.with_name(self.path.name + ".hang-initialize")

    def report(self) -> FaultReport:
        """The shim's last report (zeros before it has read the file once)."""
        try:
            text = self.path.with_name(self.path.name + ".report").read_text()
        except FileNotFoundError:
            return FaultReport(0, 0, 0)
        if text.strip() == "malformed":
            raise MalformedFault(self.path.read_text())
        injected, zombies, live = text.split()
        return FaultReport(int(injected), int(zombies), int(live))

    def _write(self, line: str) -> None:
        # Replaced whole, so the shim never reads half a line.
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(line)
        partial.replace(self.path)


def build_shim(dest: Path) -> CloudHSMShim:
    """Compile the shim into `dest` and copy SoftHSM2 beside it as its target.

    Raises `ShimBuildFailed` with gcc's output when it cannot be built (``make test``
    installs gcc and libp11-kit-dev).
    """
    gcc = shutil.which("gcc")
    if gcc is None or not (PKCS11_INCLUDE / "p11-kit" / "pkcs11.h").is_file():
        raise ShimBuildFailed("the shim needs gcc and libp11-kit-dev: run `make test-deps`")
    dest.mkdir(parents=True, exist_ok=True)
    library = dest / "libcofre-cloudhsm-shim.so"
    result = subprocess.run(
        [
            gcc,
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{PKCS11_INCLUDE}",
            str(SOURCE),
            "-o",
            str(library),
            "-ldl",
            "-lpthread",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise ShimBuildFailed(f"gcc failed:\n{result.stderr}")
    target = dest / "libsofthsm2-behind-shim.so"
    shutil.copyfile(DEFAULT_SOFTHSM_LIBRARY, target)
    return CloudHSMShim(library=library, target=target)


def configure(
    shim: CloudHSMShim,
    *,
    latency_us: int = 0,
    key_availability_ms: int = 0,
    gate_attributes: bool = False,
) -> None:
    """Change the loaded shim's latency and key-availability window in this process;
    with `gate_attributes` a key inside the window also refuses attribute reads."""
    module = ctypes.CDLL(str(shim.library))  # the same module python-pkcs11 loaded
    module.cofre_shim_configure.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_int]
    module.cofre_shim_configure(latency_us, key_availability_ms, int(gate_attributes))


def round_trips(shim: CloudHSMShim) -> int:
    """How many PKCS#11 calls the loaded shim has sent as round trips in this process
    (each pays its latency): what a networked HSM charges per operation."""
    module = ctypes.CDLL(str(shim.library))
    module.cofre_shim_round_trips.restype = ctypes.c_long
    return int(module.cofre_shim_round_trips())


def initializations(library: Path) -> int:
    """How many ``C_Initialize`` calls the shim at `library`, loaded in this process, has
    made: one per load, and one more per re-initialisation of the library."""
    module = ctypes.CDLL(str(library))
    module.cofre_shim_initializations.restype = ctypes.c_long
    return int(module.cofre_shim_initializations())


def activate(shim: CloudHSMShim, **env: int) -> None:
    """Set this process's environment for the shim; must precede its first load."""
    os.environ.update(shim.env(**env))


HSM_BACKENDS = ["softhsm2", "cloudhsm-shim"]


def provider_for(request: pytest.FixtureRequest, *, rotation: bool = False) -> HSMProvider:
    """The provider for the backend `request.param` names (one of `HSM_BACKENDS`)."""
    names = {
        ("softhsm2", False): "softhsm_provider",
        ("softhsm2", True): "rotation_provider",
        ("cloudhsm-shim", False): "shim_provider",
        ("cloudhsm-shim", True): "shim_rotation_provider",
    }
    provider: HSMProvider = request.getfixturevalue(names[(request.param, rotation)])
    return provider
