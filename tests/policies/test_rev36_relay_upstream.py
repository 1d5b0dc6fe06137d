"""Review 36: a relay route's upstream as a careless operator writes it. The upstream's
pattern took a user and password in the URL (``https://user:secret@acq.example/...``):
httpx sends them as Basic credentials, the relay's audit entries recorded them in the
``upstream`` detail (the URL's authority) on every relay, and the evidence export
listed them; and ``https://api.getnet.example@evil.example/`` reads as Getnet's host
to a reviewer while the card goes to ``evil.example``. Both are refused at load."""

from __future__ import annotations

import pytest

from policies.errors import PolicyInvalid
from policies.loader import parse_policy


def _route(upstream: str) -> str:
    return f"""
[identities."spiffe://cofre/adapter"]
scope = "out"
operations = ["relay"]
reveal = "masked"

[relay_routes.acq]
upstream = "{upstream}"
identities = ["spiffe://cofre/adapter"]
"""


@pytest.mark.parametrize(
    "upstream",
    [
        "https://getnet:s3cr3t-pw@api.getnet.example/v1/authorize",
        "https://api.getnet.example@evil.example/v1/authorize",
        "https://s3cr3t-pw@api.getnet.example",
    ],
)
def test_an_upstream_with_credentials_or_a_user_is_refused(upstream: str) -> None:
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(_route(upstream), kind="toml")
    assert "s3cr3t-pw" not in str(refused.value)
    assert "user" in str(refused.value)


def test_a_plain_upstream_still_loads() -> None:
    policy = parse_policy(_route("https://api.getnet.example:8443/v1/authorize"), kind="toml")
    assert policy.policy.relay_routes["acq"].upstream.endswith(":8443/v1/authorize")
