"""Every error code Cofre can raise has a problem+json status and title: an unmapped
code would otherwise become a 500."""

from __future__ import annotations

import importlib

from api.problems import PROBLEMS
from cofre.errors import CofreError

PACKAGES = [
    "cofre.errors",
    "vault.errors",
    "hsm.errors",
    "policies.errors",
    "audit.errors",
    "api.errors",
    "api.pki",
    "compliance.errors",
    "infra_pci.errors",
    "vault.keyring",
    "vault.rotation",
]


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_error_code_has_a_problem() -> None:
    for name in PACKAGES:
        importlib.import_module(name)
    codes = {cls.code for cls in _subclasses(CofreError) | {CofreError}}
    assert codes - set(PROBLEMS) == set()
    # 500 only where the fault is the vault's own, never the caller's input.
    server_side = {code for code, (status, _) in PROBLEMS.items() if status == 500}
    assert server_side <= {
        "integrity_error",
        "internal_error",
        "vault_error",
        "cofre_error",
        "configuration_error",
        "pki_error",
        "infra_error",
        "aws_credentials_missing",
        "peer_vpc_not_found",
    }
