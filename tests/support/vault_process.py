"""`cofre serve` in a process of its own, as tests that kill, break or scale the vault
need it: its own copy of the SoftHSM token (or a shared one), its own data directory,
SQLite or a given database."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from api.pki import DevPKI, ensure_dev_pki
from cofre_cli.devenv import DEV_POLICY
from hsm.softhsm import write_softhsm_conf
from tests.support.leakguard import record_responses
from tests.support.officers import cli_env, policy_with, token_officers
from tests.support.policies import SETTLEMENT_POLICY, TEST_IDENTITIES
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken

# Unlimited rate for the load generators (they send thousands of cards per BIN and last
# four, which the oracle guard would rightly refuse), and an in-scope identity with full
# reveal, which the dev policy does not have.
# `VaultProcess.start`: ready answers in a row, on fresh connections, before a test goes on.
_READY_IN_A_ROW = 6
POLICY = (
    DEV_POLICY.replace(
        "per_second = 2000, burst = 4000", "per_second = 1000000, burst = 1000000"
    ).replace(
        "oracle_guard = { max_pans_per_bucket = 10,",
        "oracle_guard = { max_pans_per_bucket = 100000,",
    )
    + SETTLEMENT_POLICY
)


def log_events(log: Path) -> list[dict[str, object]]:
    """The JSON events of a vault's `log` (`VaultProcess.log`), skipping what is not one
    (a traceback, a line cut by a kill)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


@dataclass
class VaultProcess:
    env: dict[str, str]
    pki: DevPKI
    token: SoftHSMToken
    log: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    # Run in the child before `cofre serve` starts (a resource limit of its own).
    preexec: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, name: str = "payments", timeout: float = 30) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.client_cert(name)), str(self.pki.client_key(name)))
        officer = token_officers(self.token).get(name)
        return httpx.Client(
            base_url=self.url,
            verify=context,
            timeout=timeout,
            event_hooks=record_responses(self.log.with_name("responses.log")),
            # Officers sign ceremony actions and exports on their own token.
            auth=officer.auth() if officer is not None else None,
        )

    def start(self, timeout: float = 60, ready_path: str = "/readyz") -> None:
        """Run `cofre db migrate` (as a deployment's migration Job does; `cofre serve`
        never migrates), then start `cofre serve` and return once `ready_path` answers
        200."""
        migrated = self.cofre("db", "migrate")
        if migrated.returncode != 0:
            pytest.fail(f"cofre db migrate failed: {migrated.stderr}")
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        ready_in_a_row = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                pytest.fail(f"cofre serve exited ({code}):\n{self.log.read_text()[-3000:]}")
            try:
                # A fresh connection each time, which the kernel hands to any worker:
                # readiness is a worker's own, and with several workers one ready answer
                # says nothing of the others (one still opening its HSM session answers
                # 503 hsm_unavailable), so several in a row are asked for.
                with self.client() as c:
                    ready = c.get(ready_path).status_code == 200
            except httpx.TransportError:
                ready = False
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
            if ready_in_a_row >= _READY_IN_A_ROW:
                return
            time.sleep(0.02 if ready else 0.1)
        pytest.fail("cofre serve did not become ready")

    def acknowledge_custody(self, *names: str) -> None:
        """`names` (default: the policy's two officers) sign the key custody statement on
        their own tokens through the CLI, as officers must before a key ceremony (PCI DSS
        3.7.8; `vault._custody_gate`)."""
        for name in names or ("officer-alice", "officer-bob"):
            signed = self.cofre("keys", "acknowledge-custody", "--as", name, "--yes")
            assert signed.returncode == 0, signed.stderr

    def spawn(self) -> None:
        """Start `cofre serve` (its output appended to `log`) and return at once: no
        migration, no wait for readiness, for a test that watches a start `start`
        would wait on (one that listens unready, or never listens)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cofre_cli", "serve"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec,  # noqa: PLW1509 - a setrlimit, no lock taken
            )
        self.starts += 1

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def cofre(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cofre_cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def health_ports(vault: VaultProcess) -> tuple[int, int]:
    """Free ports for `vault`'s health and metrics listeners, set in its environment."""
    health_port, metrics_port = free_port(), free_port()
    vault.env["COFRE_SERVER__HEALTH_PORT"] = str(health_port)
    vault.env["COFRE_SERVER__METRICS_PORT"] = str(metrics_port)
    return health_port, metrics_port


def scrape(url: str, bound: float = 60.0) -> str:
    """The text at `url` (a metrics listener), waiting up to `bound` seconds for it to
    listen: a far bound, which fails only on a hang."""
    deadline = time.monotonic() + bound
    while True:
        try:
            return httpx.get(url, timeout=10).text
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_vault(
    tmp: Path,
    token: SoftHSMToken,
    database_url: str | None,
    port: int | None = None,
    token_dir: Path | None = None,
) -> VaultProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    tokens = token_dir or tmp / "tokens"
    if token_dir is None:
        shutil.copytree(token.token_dir, tokens)
    conf = tmp / "softhsm2.conf"
    write_softhsm_conf(conf, tokens)
    pin = tmp / "pin"
    pin.write_text(token.user_pin)
    pin.chmod(0o600)
    pki = ensure_dev_pki(tmp.parent / "pki", identities=TEST_IDENTITIES)
    policy = tmp / "policy.toml"
    policy.write_text(policy_with(POLICY, token_officers(token)))
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    env.update(
        {
            "COFRE_DATA_DIR": str(tmp),
            "COFRE_POLICY_FILE": str(policy),
            "COFRE_HSM__TOKEN_LABEL": token.label,
            "COFRE_HSM__PIN_FILE": str(pin),
            "COFRE_HSM__SOFTHSM_CONF": str(conf),
            "COFRE_SERVER__PORT": str(port),
            "COFRE_SERVER__CA_BUNDLE": str(pki.ca),
            "COFRE_SERVER__CERT_FILE": str(pki.server_cert),
            "COFRE_SERVER__KEY_FILE": str(pki.server_key),
            "COFRE_LOG_LEVEL": "WARNING",
            "COFRE_AUDIT__SIGN_EVERY_ENTRIES": "200",
            "COFRE_AUDIT__SIGN_EVERY_SECONDS": "1",
            # Suites export many bundles in a row; the export rate limit has its own test.
            "COFRE_EVIDENCE__EXPORT_BURST": "1000",
            # The suite's PKI is the dev PKI; `cofre serve` refuses it unless told.
            "COFRE_INSECURE__ALLOW_DEV_PKI": "true",
            # And the suite's HSM is SoftHSM2, a software token `cofre serve` refuses too.
            "COFRE_INSECURE__ALLOW_SOFTWARE_HSM": "true",
            # One process: these tests count rows, entries and log lines right after the
            # vault answers readiness, which one worker of several answering says nothing
            # of the others' start-up writes. Several workers: tests/cofre_cli/
            # test_workers.py and the /metrics tests of tests/api/test_lifecycle.py.
            "COFRE_SERVER__WORKERS": "1",
            # A native crash (session 45: CI once saw `cofre serve` die of SIGSEGV at
            # start with a renamed SoftHSM2) writes every thread's Python stack to the
            # log, which a failed start prints.
            "PYTHONFAULTHANDLER": "1",
            # Where `cofre keys|evidence --as NAME` finds NAME's own token.
            **cli_env(token),
        }
    )
    if database_url is not None:
        env["COFRE_DATABASE__URL"] = database_url
    if database_url is None or database_url.startswith("sqlite"):
        env["COFRE_INSECURE__ALLOW_SQLITE"] = "true"
    return VaultProcess(env=env, pki=pki, token=token, log=tmp / "vault.log", port=port)
