"""Review 35b: a relay under way when a policy reload removes its route.

`RelayOperations.relay` reads the route from the policy in force, then takes the
route's client (`RelayClient._client`); a reload between the two (its
`RelayClient.retire_stale`, review 35) finds no client to retire, and the relay then
builds one for the route the policy no longer has. The relay is the old policy's and
goes on, but its client, with its keep-alive connections to an upstream the policy no
longer names, stayed in place until the vault stopped: what review 35 set out to
close. It is now closed once that relay ends."""

from __future__ import annotations

from tests.support.fake_acquirer import plain_route
from vault.relay_client import RelayClient


def test_finding_a_client_built_after_its_route_was_removed_is_closed_when_its_relay_ends() -> None:
    """Low (fixed, review 35b): see the module text."""
    client = RelayClient()
    route = plain_route(9, timeout_seconds=5.0)
    try:
        client.retire_stale({"kept": route})  # the reload: "gone" is no longer a route
        with client._client("gone", route) as held:  # the relay the old policy allowed
            assert not held.is_closed  # closed under the relay, it would cut it
        assert held.is_closed
        assert "gone" not in client._clients
        with client._client("kept", route) as kept:
            pass
        assert not kept.is_closed  # a route in force keeps its client
    finally:
        client.close()
