"""A worker out of file descriptors, on the real SoftHSM token (session 40).

SoftHSM keeps each token object in a file it opens again to read the object: in a
process whose open-files limit is used up (a leak of sockets, a limit set too low) it
finds no object, so a key lookup said `hsm_key_not_found` ("run `cofre hsm init`"), a
wrap or unwrap `hsm_operation_failed` (a wrapped key looks damaged), an HMAC "cannot load
PKCS#11 library", and the readiness check passed (a random number needs no file) or
named a missing key. On-call looked for a key that was there. Now every failing token
call, the key listing and every readiness check ask whether the process can open a
file, and if not raise `HSMOpenFilesExhausted` (`hsm_unavailable`, 503) naming the
limit, with an ERROR log; the calls answer again once descriptors are free."""

from __future__ import annotations

import pytest

from tests.support.open_files_probe import CALLS
from tests.support.probes import run_probe
from tests.support.softhsm import SoftHSMToken

pytestmark = pytest.mark.hsm


Outcomes = dict[str, dict[str, object]]


@pytest.fixture(scope="module")
def outcomes(softhsm_token: SoftHSMToken) -> Outcomes:
    token = softhsm_token
    args = (str(token.library), str(token.conf), token.label, token.user_pin)
    return {name: run_probe("tests.support.open_files_probe", *args, name) for name in CALLS}


def test_every_call_works_before_and_after(outcomes: Outcomes) -> None:
    failed = {
        name: out
        for name, out in outcomes.items()
        if out["warm"] != ["ok"] or out["after"] != ["ok"]
    }
    assert not failed, failed


def test_every_starved_call_says_the_open_files_limit(outcomes: Outcomes) -> None:
    wrong = {
        name: starved
        for name, out in outcomes.items()
        for starved in out["starved"]  # type: ignore[attr-defined]
        if starved[:2] != ["HSMOpenFilesExhausted", "hsm_unavailable"]
        or starved[3] != "unavailable"
        or "open-files limit" not in starved[2]
    }
    assert not wrong, f"misleading while out of descriptors: {wrong}"


def test_an_error_log_names_the_limit_once(outcomes: Outcomes) -> None:
    for name, out in outcomes.items():
        errors = [line for line in out["errors"] if "open-files limit" in line]  # type: ignore[attr-defined]
        assert len(errors) == 1, (name, out["errors"])
        assert "RLIMIT_NOFILE" in errors[0], errors
