"""Review 34b (attack review of the route-client rebuild, `vault.relay_client`).

A route whose trust changed has its client retired (closed once no relay holds it)
before the new one is built. When that build failed (the new `ca_bundle` unreadable:
a reload naming a file not mounted yet, a bundle mid-rotation) the retired client
stayed the route's. A later relay whose trust matched it again (the reload reverted,
the file back as it was) was handed that closed client: httpx's "client has been
closed", answered as the vault stopping, for every relay of the route until its trust
changed once more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.models import RelayRoute
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from vault.relay_client import RelayClient

VISA = "4111111111111111"


@pytest.fixture
def acquirer(tmp_path: Path) -> Iterator[FakeAcquirer]:
    with running_acquirer(tmp_path / "acquirer") as running:
        yield running


def _route(acquirer: FakeAcquirer, ca_bundle: str) -> RelayRoute:
    return RelayRoute(
        upstream=f"{acquirer.url}/v1/authorize",
        identities=frozenset({"spiffe://cofre/getnet-adapter"}),
        ca_bundle=ca_bundle,
        timeout_seconds=10,
    )


def _card() -> dict[str, object]:
    return {"card": {"number": VISA}, "amount": "1.00"}


def test_a_route_whose_new_bundle_failed_to_load_relays_again_once_reverted(
    acquirer: FakeAcquirer, tmp_path: Path
) -> None:
    good = _route(acquirer, str(acquirer.ca))  # type: ignore[attr-defined]
    client = RelayClient()
    try:
        assert client.send("acq", good, _card()).status == 200
        # A reload names a bundle that is not there (yet): refused (FileNotFoundError here,
        # which `vault.operations.relay._send` answers as UpstreamUnavailable).
        with pytest.raises(FileNotFoundError):
            client.send("acq", _route(acquirer, str(tmp_path / "missing.pem")), _card())
        # Reverted: the route's trust is the first one again, and it relays.
        assert client.send("acq", good, _card()).status == 200
    finally:
        client.close()
    assert len(acquirer.received) == 2
