"""Session 39: the plain-HTTP health listener (`COFRE_SERVER__HEALTH_PORT`, for the
kubelet's probes: no certificate) capped no connections (review 34's choice: a cap was
what idle connections had filled). Each of its connections is a descriptor of the
worker, which the mTLS listener, the database pool and the HSM share, and anyone who
reaches the port can open them, each held to the head deadline (2 s) and opened
again: a flood there took the worker's descriptors, as the capture listener's did
before session 35.

Now the health listener holds at most a sixteenth of the process's soft limit of open
files in connections (`api._descriptor_bounds.health_bounds`), one client address a
quarter of those: past a bound a connection is closed as it opens. A real `cofre
serve` (one worker, 256 open files) over real TLS; the flood comes from 127.0.0.2,
the kubelet's probes from 127.0.0.1.
"""

from __future__ import annotations

import functools
import resource
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api._descriptor_bounds import health_bounds
from tests.api.test_http37_descriptors import (
    FAR,
    OPEN_FILES,
    _another_identity_answered,
    _close,
    _open_left,
    _silent,
    _soft_open_files,
)
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# More connections than the worker's descriptors.
FLOOD = OPEN_FILES + 100
ATTACKER = "127.0.0.2"


@pytest.fixture
def probed_vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "1",
            "COFRE_SERVER__HEALTH_PORT": str(free_port()),
        }
    )
    vault.preexec = functools.partial(
        resource.setrlimit, resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)
    )
    with _soft_open_files(OPEN_FILES):
        vault.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * FLOOD)), hard))
    try:
        yield vault
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        vault.stop()


def _health_port(vault: VaultProcess) -> int:
    return int(vault.env["COFRE_SERVER__HEALTH_PORT"])


def _probe(vault: VaultProcess) -> int:
    """The kubelet's liveness probe, from 127.0.0.1."""
    url = f"http://127.0.0.1:{_health_port(vault)}/livez"
    return httpx.get(url, timeout=FAR).status_code


class _Flood(threading.Thread):
    """Keeps `FLOOD` silent connections open to the health port, opening a new one for
    each the server closed (the head deadline's), until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            self.conns += _silent(self.port, ATTACKER, FLOOD - len(self.conns))
            readable, _, _ = select.select(self.conns, [], [], 0.2)
            for conn in readable:  # closed by the server
                self.conns.remove(conn)
                conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=FAR)
        _close(self.conns)


def test_finding_the_health_port_holds_at_most_its_share_of_descriptors(
    probed_vault: VaultProcess,
) -> None:
    """Medium (fixed, session 39): a flood of idle connections to the health port was
    held whole (each to the 2 s head deadline), past the worker's soft limit of open
    files. Now at most the health listener's bound from one address is held; the rest
    are closed as they open."""
    total, per_address = health_bounds(OPEN_FILES)
    conns = _silent(_health_port(probed_vault), ATTACKER, FLOOD)
    try:
        select.select([], [], [], 0.5)
        held = _open_left(conns)
        assert held <= per_address, f"{held} idle health connections held"
    finally:
        _close(conns)
    assert per_address < total < OPEN_FILES // 8


def test_finding_a_health_port_flood_leaves_the_vault_and_its_probes_answering(
    probed_vault: VaultProcess,
) -> None:
    """While an address keeps the health port flooded, another identity is answered on
    the mTLS port and the kubelet's probe (another address) on the health port."""
    flood = _Flood(_health_port(probed_vault))
    flood.start()
    try:
        select.select([], [], [], 1.0)
        _another_identity_answered(probed_vault)
        assert _probe(probed_vault) == 200
    finally:
        flood.stop()
