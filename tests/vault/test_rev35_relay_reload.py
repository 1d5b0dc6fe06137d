"""Review 35: a policy reload closes the relay clients of the routes it removed.

Review 34 retired a route's client when the route's trust changed, but only at the
route's next relay. A route the reload took out of the policy has no next relay: its
client (its pool of keep-alive TLS connections to an upstream the policy no longer
names, and the trust it was built with) stayed open until the vault stopped. The
reload now retires it at once (closed when no relay holds it, else when the last one
ends), and a kept route whose trust changed too; a route the reload left as it was
keeps its client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.fake_acquirer import FakeAcquirer, plain_route, running_acquirer
from tests.vault.conftest import TEST_POLICY, relay_vault
from vault.pan import Pan
from vault.relay_client import RelayClient
from vault.service import CallContext, TokenizeRequest, VaultService

PAN = "5555555555554444"
PAYMENTS = CallContext("spiffe://cofre/payments", "req-payments")
RELAYER = CallContext("spiffe://cofre/relayer", "req-relay-rev35")

RELAYER_RULES = """
[identities."spiffe://cofre/relayer"]
operations = ["relay", "detokenize"]
reveal = "full"
read_domains = ["spiffe://cofre/payments"]
"""


def _route(name: str, acquirer: FakeAcquirer, ca: Path) -> str:
    return f"""
[relay_routes.{name}]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/relayer"]
detokenize = ["/card/number"]
ca_bundle = "{ca}"
timeout_seconds = 5
"""


def _engine_of(*routes: str) -> PolicyEngine:
    text = TEST_POLICY + RELAYER_RULES + "".join(routes)
    return PolicyEngine(parse_policy(text, kind="toml").policy)


@pytest.fixture
def other_ca(tmp_path: Path) -> Iterator[Path]:
    """Another PKI's CA: a bundle that does not vouch for the acquirer."""
    with running_acquirer(tmp_path / "other") as other:
        yield other.ca  # type: ignore[attr-defined]


@pytest.fixture
def two_routes(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    routes = _route("acq", acquirer, ca) + _route("kept", acquirer, ca)
    policy = TEST_POLICY + RELAYER_RULES + routes
    with relay_vault(engine, hsm_provider, acquirer, policy) as service:
        yield service


def _relay_on(service: VaultService, name: str) -> None:
    token = service.tokenize(PAYMENTS, TokenizeRequest(Pan(PAN), "pan_last4")).token
    assert service.relay(RELAYER, name, {"card": {"number": token}}).status == 200


def _client_of(service: VaultService, name: str) -> object:
    return service._relay_client._clients[name].client


def test_a_reload_that_removes_a_route_closes_its_client(
    two_routes: VaultService, acquirer: FakeAcquirer
) -> None:
    _relay_on(two_routes, "acq")
    _relay_on(two_routes, "kept")
    removed, kept = _client_of(two_routes, "acq"), _client_of(two_routes, "kept")
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    two_routes.replace_policy(
        _engine_of(_route("kept", acquirer, ca)), actor="cofre", source="test"
    )
    assert removed.is_closed  # type: ignore[attr-defined]
    assert "acq" not in two_routes._relay_client._clients
    # The route the reload left as it was keeps its client (and its connections).
    assert not kept.is_closed  # type: ignore[attr-defined]
    assert _client_of(two_routes, "kept") is kept
    _relay_on(two_routes, "kept")


def test_a_reload_that_changes_a_routes_trust_closes_its_client_at_once(
    two_routes: VaultService, acquirer: FakeAcquirer, other_ca: Path
) -> None:
    _relay_on(two_routes, "acq")
    before = _client_of(two_routes, "acq")
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    two_routes.replace_policy(
        _engine_of(_route("acq", acquirer, other_ca), _route("kept", acquirer, ca)),
        actor="cofre",
        source="test",
    )
    assert before.is_closed  # type: ignore[attr-defined]


def test_a_removed_routes_client_a_relay_still_holds_is_closed_when_it_ends() -> None:
    client = RelayClient()
    route = plain_route(9, timeout_seconds=5.0)
    try:
        with client._client("gone", route) as held:
            client.retire_stale({})
            assert not held.is_closed  # closed under the relay, it would cut it
        assert held.is_closed
        assert client._retired == []
    finally:
        client.close()
