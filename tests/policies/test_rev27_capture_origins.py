"""Review 27: `capture_origins` is required with `capture` (4097c49). What the loader
lets through against what a session can then be opened for (`normalize_origin`,
`vault.operations.capture._allowed`)."""

from __future__ import annotations

import pytest

from policies.errors import PolicyInvalid
from policies.loader import parse_policy
from vault.capture import normalize_origin
from vault.errors import InvalidOrigin
from vault.operations.capture import _allowed

SHOP_BACKEND = "spiffe://cofre/shop-backend"


def _policy(origins: str) -> str:
    return f"""
[identities."{SHOP_BACKEND}"]
scope = "out"
operations = ["capture"]
formats = ["uuid"]
capture_origins = {origins}
"""


@pytest.mark.parametrize(
    "origins",
    [
        '["https://*.shop.example"]',  # a wildcard: no session names one
        '["https://bücher.example"]',  # a browser sends the punycode, xn--bcher-kva
        '["https://shop.example:99999"]',  # no such port
        '["https://user@shop.example"]',  # user info
    ],
)
def test_finding_capture_origins_no_session_can_name_are_refused_at_load(origins: str) -> None:
    """The loader asks only for a non-empty list matching `https?://[^/\\s?#]+`; the
    vault then drops each entry `normalize_origin` refuses (`_allowed`), silently. A
    policy whose every entry is such passes the new check ("names at least one") and
    opens no session: fail closed, but the operator the upgrade note sends to add the
    list learns it from a shop's failing checkout, not at load as the check intends."""
    for origin in origins.strip("[]").split(","):
        with pytest.raises(InvalidOrigin):
            normalize_origin(origin.strip('" '), allow_http_localhost=True, frame_ancestor=True)
    with pytest.raises(PolicyInvalid, match=SHOP_BACKEND):
        parse_policy(_policy(origins), kind="toml")


def test_a_policy_origin_is_compared_as_a_browser_spells_it() -> None:
    """Upper case and the default port in the policy are the browser's spelling once
    normalised: the session for `https://shop.example` is allowed."""
    text = _policy('["https://Shop.Example:443", "https://PAY.example:0443"]')
    origins = parse_policy(text, kind="toml").policy.identities[SHOP_BACKEND].capture_origins
    assert origins is not None
    assert _allowed(origins, allow_http_localhost=False) == {
        "https://shop.example",
        "https://pay.example",
    }


def test_http_localhost_origins_are_dev_only() -> None:
    """The dev policy's http origins name no session on a vault without
    `allow_http_localhost` (production): the list is then empty, and every session is
    refused (fail closed)."""
    origins = frozenset({"http://localhost:3000", "http://127.0.0.1:3000"})
    assert _allowed(origins, allow_http_localhost=False) == set()
    assert _allowed(origins, allow_http_localhost=True) == set(origins)
