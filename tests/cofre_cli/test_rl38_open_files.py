"""Session 38 (rl38): `cofre serve` raises its soft limit of open files toward the hard
limit, and the descriptor bounds follow it (`cofre_cli._open_files`).

A container runtime usually leaves the soft limit at 1,024 under a far higher hard
limit. The mTLS listener's bounds are shares of the soft limit (`api._descriptor_bounds`,
session 37): left there, a worker held 512 connections in all, 128 handshakes under
way, 32 of one address, so a few addresses' silent connections filled what a pod with a
million descriptors to give could have held. The vault here starts at 256 (a container's
1,024 scaled down), one worker, and an address opens more silent connections than a 256
limit's share of handshakes.
"""

from __future__ import annotations

import os
import re
import resource
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api._descriptor_bounds import mtls_bounds
from cofre_cli._open_files import OPEN_FILES_TARGET
from tests.api.test_http37_descriptors import _close, _open_left, _silent
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, log_events, make_vault

LOW = 256
SILENT = 40  # above a 256 limit's share of one address's handshakes (8), below 2,048's (64)


def _soft_at(soft: int, hard: int | None = None) -> Any:
    """A `preexec_fn`: the child's soft limit of open files at `soft` (and its hard one
    at `hard`), as a container runtime leaves them."""

    def run() -> None:
        now_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, now_hard if hard is None else hard))

    return run


def _soft_limit_of(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"^Max open files\s+(\d+)", limits, re.MULTILINE)
    assert found is not None, limits
    return int(found.group(1))


@pytest.fixture
def low_vault(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[VaultProcess]:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update(
        {
            "COFRE_SERVER__WORKERS": "1",
            "COFRE_SERVER__HEADER_TIMEOUT_SECONDS": "60",
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    vault.preexec = _soft_at(LOW)
    vault.start()
    try:
        yield vault
    finally:
        vault.stop()


def test_cofre_serve_raises_its_soft_limit_and_the_mtls_bounds_follow(
    low_vault: VaultProcess,
) -> None:
    """Started at 256, `cofre serve` runs at the target (or the hard limit, when lower),
    says so in its log, and holds an address's silent connections up to the share of
    handshakes the raised limit gives (before: 8 of them, the rest closed at accept)."""
    assert low_vault.process is not None
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = OPEN_FILES_TARGET if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_TARGET)
    assert _soft_limit_of(low_vault.process.pid) == expected
    raised = [
        e
        for e in log_events(low_vault.log)
        if e.get("event") == "raised the soft limit of open files"
    ]
    assert [(e["before"], e["after"]) for e in raised] == [(LOW, expected)], raised
    assert (
        mtls_bounds(2000, expected).handshakes[1] >= SILENT > mtls_bounds(2000, LOW).handshakes[1]
    )
    conns = _silent(low_vault.port, "127.0.0.4", SILENT)
    try:
        assert len(conns) == SILENT
        select.select([], [], [], 1.0)  # a refusal's close would reach this side
        assert _open_left(conns) == SILENT, "the bounds of a 256 limit still apply"
    finally:
        _close(conns)


_PROBE = (
    "import resource; from cofre_cli._open_files import raise_open_files; "
    "print('limits', *raise_open_files(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
)


@pytest.mark.parametrize(
    ("soft", "hard", "after"),
    [
        (LOW, 1000, 1000),  # never above the hard limit
        (LOW, LOW, LOW),  # soft at hard: nothing to raise (an operator's opt-out)
        (
            OPEN_FILES_TARGET + 1000,
            OPEN_FILES_TARGET + 2000,
            OPEN_FILES_TARGET + 1000,
        ),  # never lower
    ],
)
def test_the_raise_never_passes_the_hard_limit_nor_lowers_the_soft_one(
    soft: int, hard: int, after: int
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    ran = subprocess.run(
        [sys.executable, "-c", _PROBE],
        preexec_fn=_soft_at(soft, hard),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    # The last line: structlog's own (the raise's log) come first.
    printed = ran.stdout.splitlines()[-1].split()
    assert printed == ["limits", str(soft), str(after), str(after), str(hard)], ran.stdout


def test_the_database_driver_waits_on_a_descriptor_numbered_past_1024(postgres: Any) -> None:
    """The audit's claim for the driver every worker uses: a PostgreSQL connection whose
    socket is numbered past ``FD_SETSIZE`` (1,024) runs a query that waits (psycopg's
    wait function polls; ``select.select`` would raise ``ValueError``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"the hard limit of open files ({hard}) leaves no room past 1,024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        with psycopg.connect(postgres.dsn(), connect_timeout=10) as conn:
            assert conn.pgconn.socket > 1024
            row = conn.execute("SELECT 1 FROM pg_sleep(0.2)").fetchone()
        assert row == (1,)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
