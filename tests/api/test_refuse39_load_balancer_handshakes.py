"""Session 39: behind a load balancer that terminates TCP, every client reaches the
mTLS listener from the balancer's address, so the listener's per-address share of its
TLS handshakes under way (a quarter of them, `api._descriptor_bounds`) is one share for
all of them: a few clients whose handshakes are slow (a mobile network, or one
attacker's silent connections through the balancer) fill it, and every other client's
connection is closed at accept until they end, while handshake places sit free.

`COFRE_SERVER__LOAD_BALANCERS` names the balancers' addresses (networks): their
connections are held to the listener's handshake places in all, not to an address's
share. Unset (the default), the share holds for every address, as before. A real
`cofre serve` (one worker, 256 open files: 32 handshake places, 8 per address) over
real TLS; the balancer is 127.0.0.1, silent TCP connections its slow clients.
"""

from __future__ import annotations

import functools
import resource
import select
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api._descriptor_bounds import mtls_bounds
from cofre.errors import ConfigurationError
from cofre.settings import Settings
from tests.api.test_http37_descriptors import (
    FAR,
    OPEN_FILES,
    _close,
    _open_left,
    _silent,
    _soft_open_files,
)
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

BALANCER = "127.0.0.1"
PLACES, SHARE = mtls_bounds(2000, OPEN_FILES).handshakes


def _vault(tmp: Path, token: SoftHSMToken, balancers: str | None) -> VaultProcess:
    vault = make_vault(tmp, token, None)
    vault.env.update({"COFRE_SERVER__WORKERS": "1", "COFRE_SERVER__HEADER_TIMEOUT_SECONDS": "60"})
    if balancers is not None:
        vault.env["COFRE_SERVER__LOAD_BALANCERS"] = balancers
    vault.preexec = functools.partial(
        resource.setrlimit, resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)
    )
    with _soft_open_files(OPEN_FILES):
        vault.start()
    return vault


@pytest.fixture
def behind_a_balancer(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    vault = _vault(tmp_path / "node", softhsm_token, f'["{BALANCER}/32"]')
    try:
        yield vault
    finally:
        vault.stop()


@pytest.fixture
def by_default(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    vault = _vault(tmp_path / "node", softhsm_token, None)
    try:
        yield vault
    finally:
        vault.stop()


def _answered(vault: VaultProcess) -> bool:
    """Whether a client through the balancer gets `/readyz` answered (a connection
    closed at accept fails its handshake)."""
    try:
        with vault.client("settlement", timeout=FAR) as client:
            return client.get("/readyz", headers={"Connection": "close"}).status_code == 200
    except (httpx.TransportError, ssl.SSLError, OSError):
        return False


def test_by_default_an_address_keeps_its_share_of_the_handshakes(by_default: VaultProcess) -> None:
    """The secure default is unchanged: an address's slow handshakes past its share
    keep its next connection out."""
    slow = _silent(by_default.port, BALANCER, SHARE)
    try:
        select.select([], [], [], 0.5)
        assert not _answered(by_default)
    finally:
        _close(slow)


def test_clients_of_a_named_balancer_share_the_handshake_places_not_one_address_s(
    behind_a_balancer: VaultProcess,
) -> None:
    """Medium (fixed, session 39): the balancer's share (8 handshakes) taken by its
    slow clients, every other client behind it was refused at accept. Named in
    `load_balancers`, it is held to the places in all (32), and a client is answered
    while its share's worth of slow handshakes are under way."""
    slow = _silent(behind_a_balancer.port, BALANCER, SHARE)
    try:
        select.select([], [], [], 0.5)
        assert _answered(behind_a_balancer)
    finally:
        _close(slow)
    # The places in all still bound it: no more than them are held.
    flood = _silent(behind_a_balancer.port, BALANCER, PLACES + 40)
    try:
        select.select([], [], [], 1.0)
        assert _open_left(flood) <= PLACES
    finally:
        _close(flood)


@pytest.mark.parametrize("value", ['["0.0.0.0/0"]', '["::/0"]', '["not-an-address"]'])
def test_every_address_is_not_a_load_balancer(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network that holds every address would switch the share off for anyone."""
    monkeypatch.setenv("COFRE_SERVER__LOAD_BALANCERS", value)
    with pytest.raises((ConfigurationError, ValueError)):
        Settings()


@pytest.mark.parametrize("value", ['["::ffff:10.0.0.0/104"]', '["::ffff:0.0.0.0/96"]'])
def test_a_balancer_written_as_a_mapped_ipv6_network_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review rev39c: peers are compared as IPv4 addresses, so an IPv4-mapped IPv6
    network named no balancer, silently (the share stayed on for it). Refused at load,
    naming the IPv4 form to write."""
    monkeypatch.setenv("COFRE_SERVER__LOAD_BALANCERS", value)
    with pytest.raises((ConfigurationError, ValueError), match="as an IPv4 network"):
        Settings()
