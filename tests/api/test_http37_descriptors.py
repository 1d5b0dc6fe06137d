"""Session 37 (http37): the mTLS listener's connections against the worker's file
descriptors, attacked on a real `cofre serve` of two workers over real TLS.

Review 35b bounded the capture listener's TLS handshakes under way, in all and per
client address; the mTLS listener had no such bound, and no bound on its connections in
all but the per-identity cap (2,000), above the process's soft limit of open files
(1,024 under a container runtime's usual default). So:

- anyone who reaches the mTLS port, with no certificate, opened TCP connections that
  never sent a ``ClientHello``: each held a descriptor to the handshake deadline (the
  header deadline), as many as were opened in that time, until the worker accepted
  nothing (``EMFILE``) and opened no database connection: every other identity's
  requests waited for the attacker's connections to time out;
- one stolen client certificate, within its per-identity cap, did the same with
  finished handshakes and idle connections.

The vault here runs with a soft limit of 256 open files (a container's 1,024, scaled
down so the test opens hundreds of connections, not thousands) and a handshake and
header deadline of 60 s, so what the server closes early is its bounds' doing. Another
identity's request from another address must be answered within a far bound (a hang's
bound, never a judgement of speed).
"""

from __future__ import annotations

import contextlib
import functools
import resource
import select
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# The vault's soft limit of open files, and the attack's connections (more than both
# workers' descriptors together).
OPEN_FILES = 256
ATTACK = 700
# A hang's bound: far below the 60 s deadline that alone would free the descriptors.
FAR = 25.0


@contextlib.contextmanager
def _soft_open_files(limit: int) -> Iterator[None]:
    """This process's soft limit of open files at `limit` while the vault is spawned
    (its processes inherit it), then back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def small_vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "2",
            "COFRE_SERVER__HEADER_TIMEOUT_SECONDS": "60",
        }
    )
    # `start` migrates, spawns and waits for readiness under the lowered limit (the
    # vault's processes inherit it; this one opens a client at a time meanwhile). Its
    # hard limit too: `cofre serve` raises its soft limit toward the hard one (session
    # 38), so this is a container left at 256 for good.
    vault.preexec = functools.partial(
        resource.setrlimit, resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)
    )
    with _soft_open_files(OPEN_FILES):
        vault.start()
    # The test's own connections: hundreds, over the default soft limit of some hosts.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * ATTACK)), hard))
    try:
        yield vault
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        vault.stop()


def _silent(port: int, source: str, count: int) -> list[socket.socket]:
    """Up to `count` TCP connections from `source` that never send a ``ClientHello``
    (a connect the kernel no longer completes ends the attack there)."""
    conns: list[socket.socket] = []
    for _ in range(count):
        try:
            conns.append(
                socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
            )
        except OSError:
            break
    return conns


def _tls_idle(vault: VaultProcess, name: str, source: str, count: int) -> list[ssl.SSLSocket]:
    """Up to `count` finished mTLS handshakes as `name` from `source`, sending nothing."""
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(str(vault.pki.client_cert(name)), str(vault.pki.client_key(name)))
    conns: list[ssl.SSLSocket] = []
    for _ in range(count):
        try:
            raw = socket.create_connection(
                ("127.0.0.1", vault.port), timeout=2, source_address=(source, 0)
            )
            conns.append(context.wrap_socket(raw, server_hostname="localhost"))
        except OSError:
            break
    return conns


def _open_left(conns: list[socket.socket] | list[ssl.SSLSocket]) -> int:
    """How many of `conns` the server has not closed (each read without waiting)."""
    left = 0
    for conn in conns:
        conn.setblocking(False)
        try:
            ended = conn.recv(1) == b""
        except (BlockingIOError, ssl.SSLWantReadError):
            ended = False
        except (OSError, ssl.SSLError):
            ended = True
        left += not ended
    return left


def _another_identity_answered(vault: VaultProcess) -> None:
    """`settlement`, from 127.0.0.1, reads `/readyz` on three fresh connections (the
    kernel spreads them over both workers) within `FAR` seconds each."""
    for _ in range(3):
        with vault.client("settlement", timeout=FAR) as client:
            response = client.get("/readyz", headers={"Connection": "close"})
        assert response.status_code == 200, response.text


def _close(conns: list[socket.socket] | list[ssl.SSLSocket]) -> None:
    for conn in conns:
        conn.close()


def test_finding_silent_connections_without_a_certificate_do_not_take_the_descriptors(
    small_vault: VaultProcess,
) -> None:
    """High (fixed, session 37): with no certificate, 700 connections from 127.0.0.2
    that never start TLS held both workers' descriptors for the handshake deadline, and
    another identity's request waited for them (no answer within 25 s). Now a worker
    holds at most its handshake places, an address a share of them: the rest are closed
    at accept, and the other identity is answered."""
    conns = _silent(small_vault.port, "127.0.0.2", ATTACK)
    try:
        _another_identity_answered(small_vault)
        select.select([], [], [], 1.0)  # the refusals' closes reach this side
        # Each worker keeps at most an address's share of its handshake places.
        assert _open_left(conns) <= OPEN_FILES // 2, "silent connections held"
    finally:
        _close(conns)


def test_finding_one_certificate_cannot_take_the_worker_s_descriptors(
    small_vault: VaultProcess,
) -> None:
    """High (fixed, session 37): one stolen certificate (`payments`) held idle mTLS
    connections up to its per-identity cap, 2,000 per worker, above the worker's open
    files: another identity's request waited for them. Now a worker holds at most half
    its open files in mTLS connections, one identity a share of those."""
    conns = _tls_idle(small_vault, "payments", "127.0.0.3", ATTACK)
    try:
        _another_identity_answered(small_vault)
        select.select([], [], [], 1.0)
        assert _open_left(conns) <= OPEN_FILES // 2, "one identity's connections held"
    finally:
        _close(conns)
