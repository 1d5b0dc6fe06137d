"""Two listeners of one node on one port are refused before anything binds.

Session 33: a worker binds the mTLS, health and capture ports with SO_REUSEPORT, so
`COFRE_SERVER__HEALTH_PORT` set to `COFRE_SERVER__PORT` did not fail with "address in
use": the kernel took both listeners and split the connections between them, some
clients' TLS handshakes reaching the plain-HTTP health listener. Worker N's metrics
listener is on `COFRE_SERVER__METRICS_PORT` + N, a range that can cover another port.

Session 34: listeners were judged by port alone, so a health listener on 10.0.0.5:9000
and metrics on 127.0.0.1:9000 were refused though the kernel keeps them apart (a
connection reaches the socket bound to its destination address). Two listeners may now
share a port when their hosts are two different IP addresses, neither a wildcard; a
wildcard, a host name or an address's other spelling ("127.1") still clashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from api.errors import ApiError
from cofre.errors import ConfigurationError
from cofre.settings import Settings
from cofre_cli._listeners import check_listener_ports, claim_listener_ports
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault

_CLASHES: list[tuple[dict[str, Any], dict[str, Any], int, list[str]]] = [
    (
        {"port": 9443, "health_port": 9443},
        {},
        1,
        ["COFRE_SERVER__HEALTH_PORT and COFRE_SERVER__PORT are both 9443"],
    ),
    ({"port": 9443}, {"port": 9443}, 1, ["COFRE_CAPTURE__PORT and COFRE_SERVER__PORT"]),
    (
        {"port": 9443, "health_port": 9490, "metrics_port": 9489},
        {},
        2,
        ["COFRE_SERVER__METRICS_PORT + 1 (worker 1's metrics) and COFRE_SERVER__HEALTH_PORT"],
    ),
    (
        {"port": 9443, "metrics_port": 9440},
        {"port": 9441},
        4,
        [
            "COFRE_SERVER__METRICS_PORT + 1 (worker 1's metrics) and COFRE_CAPTURE__PORT",
            "COFRE_SERVER__METRICS_PORT + 3 (worker 3's metrics) and COFRE_SERVER__PORT",
        ],
    ),
    ({"port": 9443, "metrics_port": 65535}, {}, 2, ["past the last TCP port"]),
    # One of them on every address (IPv4 or IPv6 wildcard) covers the other's.
    (
        {"port": 9443, "host": "0.0.0.0", "health_host": "10.0.0.5", "health_port": 9443},  # noqa: S104 - never bound: the check refuses it
        {},
        1,
        ["COFRE_SERVER__HEALTH_PORT and COFRE_SERVER__PORT are both 9443"],
    ),
    (
        {"port": 9443, "host": "10.0.0.5", "metrics_host": "::", "metrics_port": 9443},
        {},
        1,
        ["(worker 0's metrics) and COFRE_SERVER__PORT"],
    ),
    # The same address, spelt twice; a host name or a short form, which may be it.
    (
        {"port": 9443, "host": "::1", "health_host": "0:0:0:0:0:0:0:1", "health_port": 9443},
        {},
        1,
        ["COFRE_SERVER__HEALTH_PORT and COFRE_SERVER__PORT"],
    ),
    (
        {"port": 9443, "host": "127.0.0.1", "health_host": "::ffff:127.0.0.1", "health_port": 9443},
        {},
        1,
        ["COFRE_SERVER__HEALTH_PORT and COFRE_SERVER__PORT"],
    ),
    ({"port": 9443, "host": "localhost"}, {"host": "127.0.0.2", "port": 9443}, 1, ["CAPTURE"]),
    ({"port": 9443, "host": "127.1"}, {"host": "127.0.0.2", "port": 9443}, 1, ["CAPTURE"]),
    # Review 34b: a link-local address with its zone by name and by index (lo is 1) is
    # one socket address; `ipaddress` compares the zones' text, and let both bind.
    (
        {"port": 9443, "host": "fe80::1%lo", "health_host": "fe80::1%1", "health_port": 9443},
        {},
        1,
        ["COFRE_SERVER__HEALTH_PORT and COFRE_SERVER__PORT"],
    ),
]


@pytest.mark.parametrize(("server", "capture", "workers", "named"), _CLASHES)
def test_listeners_on_one_port_are_refused_naming_the_settings(
    server: dict[str, Any], capture: dict[str, Any], workers: int, named: list[str]
) -> None:
    settings = Settings(server=server, capture=capture)
    with pytest.raises(ConfigurationError) as refused:
        check_listener_ports(settings, workers)
    for words in named:
        assert words in str(refused.value)


def test_distinct_ports_pass_and_one_worker_uses_one_metrics_port() -> None:
    check_listener_ports(Settings(), 8)
    spread = Settings(
        server={"port": 9443, "health_port": 9444, "metrics_port": 9445}, capture={"port": 9453}
    )
    check_listener_ports(spread, 8)  # metrics on 9445-9452
    # Worker 0 alone sits on the metrics port itself: the next port is free for another.
    check_listener_ports(
        Settings(server={"port": 9443, "metrics_port": 9444, "health_port": 9445}), 1
    )


def test_two_addresses_may_share_a_port() -> None:
    """Session 33's note: health on 10.0.0.5:9000 and metrics on 127.0.0.1:9000 were
    refused; the kernel keeps two sockets on two addresses apart."""
    split = Settings(
        server={
            "port": 9443,
            "health_host": "10.0.0.5",
            "health_port": 9000,
            "metrics_host": "127.0.0.1",
            "metrics_port": 9000,
        },
        capture={"host": "fd00::5", "port": 9000},
    )
    check_listener_ports(split, 1)
    # A node claims each of its ports once, whatever number of its listeners use it.
    claim_listener_ports(split, 1).close()


@pytest.mark.hsm
def test_cofre_serve_listens_on_two_addresses_of_one_port(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """A real node: the health listener on 127.0.0.2 and worker 0's metrics on
    127.0.0.1, one port number; each answers on its own address."""
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    shared = free_port()
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "1",
            "COFRE_SERVER__HEALTH_HOST": "127.0.0.2",
            "COFRE_SERVER__HEALTH_PORT": str(shared),
            "COFRE_SERVER__METRICS_HOST": "127.0.0.1",
            "COFRE_SERVER__METRICS_PORT": str(shared),
        }
    )
    vault.start()
    try:
        ready = httpx.get(f"http://127.0.0.2:{shared}/readyz", timeout=30)
        metrics = httpx.get(f"http://127.0.0.1:{shared}/metrics", timeout=30)
    finally:
        vault.stop()
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert metrics.status_code == 200
    assert "cofre_" in metrics.text


@pytest.mark.hsm
def test_cofre_serve_refuses_a_health_port_on_the_mtls_port(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update({"COFRE_SERVER__WORKERS": "2", "COFRE_SERVER__HEALTH_PORT": str(vault.port)})
    assert vault.cofre("db", "migrate").returncode == 0
    # A vault that starts serving never exits by itself: `cofre`'s bound ends a hang.
    served = vault.cofre("serve")
    assert served.returncode == 1, served.stderr[-2000:]
    assert "error [configuration_error]" in served.stderr
    assert "COFRE_SERVER__HEALTH_PORT and COFRE_SERVER__PORT are both" in served.stderr


def test_every_listener_port_is_claimed_while_the_node_runs() -> None:
    health, metrics = free_port(), free_port()
    node = Settings(server={"port": free_port(), "health_port": health, "metrics_port": metrics})
    other = Settings(server={"port": free_port(), "health_port": metrics})
    with claim_listener_ports(node, 1):
        with pytest.raises(ApiError, match=f":{metrics} .another cofre serve"):
            claim_listener_ports(other, 1)
        # The refused node let go of what it had claimed before the clash.
        claim_listener_ports(Settings(server={"port": other.server.port}), 1).close()
    claim_listener_ports(other, 1).close()  # free again once the node stops


@pytest.mark.hsm
def test_a_second_node_on_the_first_node_s_health_port_is_refused(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    # Session 33: with several workers (health listeners on SO_REUSEPORT) the second
    # node started and the kernel split the probes between the two nodes, each
    # answering for itself; with one worker it died of a traceback (address in use).
    on_health = {"COFRE_SERVER__WORKERS": "2", "COFRE_SERVER__HEALTH_PORT": str(free_port())}
    first = make_vault(tmp_path / "first", softhsm_token, None)
    first.env.update(on_health)
    first.start()
    try:
        second = make_vault(tmp_path / "second", softhsm_token, None)
        second.env.update(on_health)
        assert second.cofre("db", "migrate").returncode == 0
        served = second.cofre("serve")  # one that serves: its bound ends the hang
    finally:
        first.stop()
    assert served.returncode == 1, served.stderr[-2000:]
    health = on_health["COFRE_SERVER__HEALTH_PORT"]
    assert f":{health} (another cofre serve on this host holds the port)" in served.stderr
