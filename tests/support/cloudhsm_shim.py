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
from dataclasses import dataclass
from pathlib import Path

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
        self, latency_us: int = 0, key_availability_ms: int = 0, gate_attributes: bool = False
    ) -> dict[str, str]:
        """The environment a process needs to load this shim (forwarding to `target`)."""
        return {
            "COFRE_SHIM_TARGET": str(self.target),
            "COFRE_SHIM_LATENCY_US": str(latency_us),
            "COFRE_SHIM_KEY_AVAILABILITY_MS": str(key_availability_ms),
            "COFRE_SHIM_GATE_ATTRIBUTES": "1" if gate_attributes else "0",
        }


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
