"""Every error code Cofre can raise has a problem+json status and title: an unmapped
code would otherwise become a 500."""

from __future__ import annotations

import importlib

import pytest

from api.problems import PROBLEMS, retry_after
from cofre.errors import CofreError

# Errors live in their package's errors.py (tests/test_architecture.py). The witness is
# its own process answering its protocol's statuses (`witness.errors.WitnessError.status`),
# never through this API; tests may define errors of their own.
PACKAGES = [
    "cofre.errors",
    "vault.errors",
    "hsm.errors",
    "policies.errors",
    "audit.errors",
    "api.errors",
    "compliance.errors",
    "infra_pci.errors",
]
NOT_THE_API = ("witness.", "tests.")


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


# The codes the app's own handlers answer with, raised by no `CofreError`
# (api/exception_handlers.py, api/guard.py).
HANDLER_CODES = {
    "internal_error",
    "invalid_request",
    "malformed_json",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    # Answered by `api.connections` for what the HTTP parser refuses.
    "malformed_http_request",
    "request_head_too_large",
    # Answered by `api.guard` for a request cancelled at the drain deadline.
    "request_interrupted",
}


def _raised_codes() -> set[str]:
    for name in PACKAGES:
        importlib.import_module(name)
    return {
        cls.code
        for cls in _subclasses(CofreError) | {CofreError}
        # Whatever other tests imported before this one, the same set every time.
        if not cls.__module__.startswith(NOT_THE_API)
    }


def test_no_problem_is_left_that_nothing_raises() -> None:
    """A code no error carries and no handler answers is dead (`storage_error` was)."""
    assert set(PROBLEMS) - _raised_codes() - HANDLER_CODES == set()


def test_every_error_code_has_a_problem() -> None:
    codes = _raised_codes()
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


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.2, "2"), (2.0, "2"), (2.5, "3"), (3.0, "3")],
)
def test_retry_after_is_the_wait_rounded_up_to_whole_seconds(seconds: float, header: str) -> None:
    # Session 34's walk: round(seconds + 0.5) rounds half to even, so a wait of 1 s
    # (capture_busy's) said 2 and one of 3 s said 4, while 2 s said 2.
    assert retry_after(seconds) == header
