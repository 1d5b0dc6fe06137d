"""Review 34b: the relay's TLS to its upstream never writes its session secrets to a
file named in the environment.

Review 34 made a route's trust the policy's alone (``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` ignored), but both ways the relay built its TLS context
(`ssl.create_default_context` for a route's ``ca_bundle``, httpx's for the public CAs)
still honour ``SSLKEYLOGFILE``: set in the vault's environment (a debugging session's
leftover, a base image's default, a sidecar's), every relay's TLS secrets went to that
file in clear, and with them anyone holding a capture of the egress traffic read the
card and its security code sent to the acquirer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.models import RelayRoute
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from vault.errors import UpstreamUnavailable
from vault.relay_client import RelayClient

VISA = "4111111111111111"


@pytest.fixture
def acquirer(tmp_path: Path) -> Iterator[FakeAcquirer]:
    with running_acquirer(tmp_path / "acquirer") as running:
        yield running


def _route(acquirer: FakeAcquirer, ca_bundle: str | None) -> RelayRoute:
    return RelayRoute(
        upstream=f"{acquirer.url}/v1/authorize",
        identities=frozenset({"spiffe://cofre/getnet-adapter"}),
        ca_bundle=ca_bundle,
        timeout_seconds=10,
    )


def test_a_relay_writes_no_tls_secrets_to_sslkeylogfile(
    acquirer: FakeAcquirer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    client = RelayClient()
    try:
        card = {"card": {"number": VISA}, "amount": "1.00"}
        assert client.send("pinned", _route(acquirer, str(acquirer.ca)), card).status == 200  # type: ignore[attr-defined]
        # A route on the public CAs: the handshake runs (and fails on this test CA).
        with pytest.raises(UpstreamUnavailable):
            client.send("public", _route(acquirer, None), {"amount": "1.00"})
    finally:
        client.close()
    # Python writes the file's comment line as the context is made; never a secret.
    secrets = [] if not keylog.exists() else keylog.read_text().splitlines()
    assert [line for line in secrets if not line.startswith("#")] == []
