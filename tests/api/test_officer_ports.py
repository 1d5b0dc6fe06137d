"""The port of an officer's signed ``@authority`` is compared, not only its host
(`vault.officer_mfa`): a request an officer signed for another vault on the same host
name (staging on ``vault.example:9443``, same certificate name, same officer keys) is
refused here, as one signed for another host is. Over real mutual TLS."""

from __future__ import annotations

import httpx

from tests.api.conftest import VaultServer
from tests.api.test_officer_mfa import ROTATIONS, _refused, _rid


def test_signed_for_another_port_of_this_host_is_refused(vault_server: VaultServer) -> None:
    """Alice signed a proposal for the staging vault at this host's port 9443; whoever
    saw it sends it here within the window. The host is a name of this vault's
    certificate: only the port tells the two vaults apart."""
    host = httpx.URL(vault_server.url).host
    rid = _rid()
    with vault_server.client("officer-alice") as alice:
        response = alice.post(
            ROTATIONS,
            json={"kind": "fingerprint"},
            headers={"host": f"{host}:9443", "x-request-id": rid},
        )
    _refused(vault_server, response, rid, "mfa_invalid")
    assert "port 9443" in response.json()["detail"]


def test_signed_for_the_listening_port_or_the_standard_one_passes(
    vault_server: VaultServer,
) -> None:
    """Officers dialling the node (its own port) or a load balancer on 443 (a Host with
    no port) are both this vault, by default."""
    url = httpx.URL(vault_server.url)
    for host in (f"{url.host}:{url.port}", url.host, f"{url.host}:443"):
        with vault_server.client("officer-alice") as alice:
            proposed = alice.post(ROTATIONS, json={"kind": "fingerprint"}, headers={"host": host})
            assert proposed.status_code == 201, (host, proposed.text)
            assert alice.post(f"{ROTATIONS}/{proposed.json()['id']}/cancel").status_code == 200
