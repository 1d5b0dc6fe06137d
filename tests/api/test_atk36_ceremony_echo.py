"""Attack review of session 36, one stolen certificate at a time: the key ceremony routes
answered an unknown ceremony's id back in the problem's ``detail`` (``no key ceremony
<id>``). The id is the caller's text (any 64 characters but control characters), and
the detail is masked by the PAN detector only, which leaves a card number written as two
groups of eight joined by a dot (``41111111.11111111``) as it is: the card went back in
clear in an error body (and to whatever records error bodies on the way: a proxy's log,
the client's). Every other caller-named value is refused or not echoed; the ceremony id
now is not echoed either.

Real mutual TLS, an officer's stolen certificate (reads) and an officer with their
second factor (approve, cancel), the shared token (no key is rotated).
"""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import VaultServer

ROTATIONS = "/v1/admin/keys/rotations"
# A Luhn-valid test card in the shapes the detector leaves unmasked in free text
# (docs/threat-model.md, "The PAN detector sees the shapes it knows").
SHAPES = ("41111111.11111111", "55555555.55554444")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("method", "suffix", "signed"),
    [("GET", "", False), ("POST", "/approve", True), ("POST", "/cancel", True)],
)
def test_an_unknown_ceremony_id_is_not_answered_back(
    vault_server: VaultServer, shape: str, method: str, suffix: str, signed: bool
) -> None:
    with vault_server.client("officer-alice", signed=signed) as officer:
        answer = officer.request(method, f"{ROTATIONS}/{shape}{suffix}")
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "ceremony_not_found"
    # Neither the id nor any 8-digit half of it.
    assert not re.search(r"[0-9]{8}", answer.text), answer.text
