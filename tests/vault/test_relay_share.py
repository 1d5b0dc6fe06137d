"""Review 40's residual: a route's places (`max_in_flight`) were one pool for every
identity the route allows, so one stolen certificate whose relays wait on a slow
upstream call (a slow card, a slow endpoint, a large body) took all of them and every
other service got 503 `upstream_busy` on that route. An identity now holds at most its
share (`RelayRoute.share_of`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from policies.errors import PolicyError
from policies.loader import parse_policy
from policies.models import RelayRoute
from tests.vault.conftest import TEST_POLICY
from vault.errors import UpstreamBusy
from vault.relay_client import RelayClient

A, B = "spiffe://cofre/payments", "spiffe://cofre/store"


def _route(**changes: object) -> RelayRoute:
    fields: dict[str, object] = {
        "upstream": "https://acquirer.example/auth",
        "identities": frozenset({A, B}),
        "max_in_flight": 4,
    }
    return RelayRoute.model_validate(fields | changes)


@pytest.fixture
def held() -> Iterator[contextlib.ExitStack]:
    """The places a test takes, given back when it ends."""
    with contextlib.ExitStack() as stack:
        yield stack


def _hold(
    held: contextlib.ExitStack, client: RelayClient, route: RelayRoute, identity: str, count: int
) -> int:
    """How many of `count` places `identity` gets (held until the test ends)."""
    got = 0
    for _ in range(count):
        try:
            held.enter_context(client.slot("acq", route, identity))
        except UpstreamBusy:
            break
        got += 1
    return got


def test_one_identity_leaves_the_others_places_on_a_shared_route(
    held: contextlib.ExitStack,
) -> None:
    client, route = RelayClient(), _route()
    assert _hold(held, client, route, A, 4) == 3  # all but a quarter
    with pytest.raises(UpstreamBusy, match="its share"):
        held.enter_context(client.slot("acq", route, A))
    assert _hold(held, client, route, B, 4) == 1  # what A left
    with pytest.raises(UpstreamBusy, match="relays waiting on its upstream"):
        held.enter_context(client.slot("acq", route, B))


def test_a_place_given_back_is_the_identitys_again(held: contextlib.ExitStack) -> None:
    client, route = RelayClient(), _route()
    with client.slot("acq", route, A), client.slot("acq", route, A):
        pass
    assert _hold(held, client, route, A, 4) == 3


def test_a_route_of_one_identity_is_all_its_own(held: contextlib.ExitStack) -> None:
    client = RelayClient()
    assert _hold(held, client, _route(identities=frozenset({A})), A, 5) == 4


def test_the_share_is_the_policys_to_set(held: contextlib.ExitStack) -> None:
    client = RelayClient()
    assert _hold(held, client, _route(max_in_flight_per_identity=4), A, 5) == 4
    assert _route(max_in_flight=1).share_of() == 1
    assert _route(max_in_flight=16).share_of() == 12
    with pytest.raises(ValueError, match="max_in_flight_per_identity"):
        _route(max_in_flight_per_identity=5)


def test_a_policy_whose_share_exceeds_its_places_is_refused() -> None:
    route = f"""
[identities."spiffe://cofre/relayer"]
operations = ["relay", "detokenize_masked"]
read_domains = ["spiffe://cofre/payments"]

[relay_routes.acq]
upstream = "https://acquirer.example/auth"
identities = ["spiffe://cofre/relayer", "{A}"]
detokenize = ["/card/number"]
max_in_flight = 4
max_in_flight_per_identity = 8
"""
    with pytest.raises(PolicyError, match="max_in_flight_per_identity"):
        parse_policy(TEST_POLICY + route, kind="toml")
