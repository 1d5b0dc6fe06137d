"""Review 34: what the relay trusts for its upstream's certificate is the policy's route
as it stands, and nothing else.

`RelayClient` built one httpx client per route name, its TLS trust read once, at the
route's first relay. A policy reload (SIGHUP) that changed a route's `ca_bundle` (an
acquirer's private CA pinned in place of the public ones, a compromised CA taken out)
was never in force for that route: the card kept going to whatever the old trust
accepted, and the evidence export (`compliance._relay_cas`) listed the new bundle as
the relay's trust. A bundle file replaced in place was never read again either. And a
route without a `ca_bundle` trusted what httpx reads from the environment
(`SSL_CERT_FILE`, `SSL_CERT_DIR`): a TLS-inspecting egress proxy's CA put there for
other tools made the relay hand the card to that proxy in clear.

Each test relays a card to a real HTTPS upstream whose certificate the route's trust
(as it now stands) does not accept, and fails if the card arrived."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.models import RelayRoute
from tests.support.fake_acquirer import FakeAcquirer, plain_route, running_acquirer
from vault.errors import UpstreamUnavailable
from vault.relay_client import RelayClient

VISA = "4111111111111111"


@pytest.fixture
def acquirers(tmp_path: Path) -> Iterator[tuple[FakeAcquirer, Path]]:
    """An acquirer whose certificate comes from its own CA, and another PKI's CA (a
    bundle that does not vouch for it)."""
    with (
        running_acquirer(tmp_path / "trusted") as acquirer,
        running_acquirer(tmp_path / "other") as other,
    ):
        yield acquirer, other.ca  # type: ignore[attr-defined]


def _route(acquirer: FakeAcquirer, ca_bundle: Path | None) -> RelayRoute:
    return RelayRoute(
        upstream=f"{acquirer.url}/v1/authorize",
        identities=frozenset({"spiffe://cofre/getnet-adapter"}),
        ca_bundle=None if ca_bundle is None else str(ca_bundle),
        timeout_seconds=10,
    )


def _card() -> dict[str, object]:
    return {"card": {"number": VISA}, "amount": "1.00"}


def test_a_routes_new_ca_bundle_is_in_force_for_its_next_relay(
    acquirers: tuple[FakeAcquirer, Path],
) -> None:
    acquirer, other_ca = acquirers
    client = RelayClient()
    try:
        assert client.send("acq", _route(acquirer, acquirer.ca), _card()).status == 200  # type: ignore[attr-defined]
        # The policy reloaded: the route now trusts another CA only.
        with pytest.raises(UpstreamUnavailable):
            client.send("acq", _route(acquirer, other_ca), _card())
    finally:
        client.close()
    assert len(acquirer.received) == 1


def test_a_ca_bundle_replaced_in_place_is_in_force_for_the_next_relay(
    acquirers: tuple[FakeAcquirer, Path], tmp_path: Path
) -> None:
    acquirer, other_ca = acquirers
    bundle = tmp_path / "acquirer-ca.pem"
    shutil.copyfile(acquirer.ca, bundle)  # type: ignore[attr-defined]
    route = _route(acquirer, bundle)
    client = RelayClient()
    try:
        assert client.send("acq", route, _card()).status == 200
        # The operator takes the acquirer's CA out (compromised), same path.
        replacement = tmp_path / "replacement.pem"
        shutil.copyfile(other_ca, replacement)
        replacement.replace(bundle)
        with pytest.raises(UpstreamUnavailable):
            client.send("acq", route, _card())
    finally:
        client.close()
    assert len(acquirer.received) == 1


def test_a_route_without_a_bundle_ignores_ca_files_named_in_the_environment(
    acquirers: tuple[FakeAcquirer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    acquirer, _ = acquirers
    # An interception proxy's CA, set for the host's other tools.
    monkeypatch.setenv("SSL_CERT_FILE", str(acquirer.ca))  # type: ignore[attr-defined]
    monkeypatch.setenv("SSL_CERT_DIR", str(Path(acquirer.ca).parent))  # type: ignore[attr-defined]
    client = RelayClient()
    try:
        with pytest.raises(UpstreamUnavailable):
            client.send("acq", _route(acquirer, None), _card())
    finally:
        client.close()
    assert acquirer.received == []


def test_the_vaults_close_also_closes_a_replaced_client_a_relay_still_holds() -> None:
    """`close` (the vault stopping, at the drain bound) cuts every relay's client; one
    replaced by a route's change while a relay still held it was left open, so that
    relay's retries went on past the bound."""
    client = RelayClient()
    before = plain_route(9, timeout_seconds=5.0)
    with client._client("acq", before) as held:
        with client._client("acq", before.model_copy(update={"timeout_seconds": 6.0})):
            pass
        assert not held.is_closed  # a relay still uses it
        client.close()
        assert held.is_closed
