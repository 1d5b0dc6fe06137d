"""`cofre dev` with COFRE_HSM__LIBRARY pointing at the CloudHSM-behaviour shim: the vault
comes up, tokenizes and detokenizes, and runs KEK, data-key and fingerprint rotations
under dual control. The shim is our reading of AWS's SDK 5 documentation, not CloudHSM;
this is the path Cofre runs on CloudHSM, exercised in every test run."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.pki import DevPKI, ensure_dev_pki
from cofre_cli.devenv import DEV_POLICY
from tests.support.cloudhsm_shim import CloudHSMShim
from tests.support.custody import acknowledge_custody
from tests.support.leakguard import record_responses
from tests.support.officers import policy_with, software_officers
from tests.support.pans import card_number
from tests.support.policies import SETTLEMENT_POLICY, TEST_IDENTITIES
from tests.support.postgres import free_port


@dataclass
class DevVault:
    pki: DevPKI
    port: int
    log: Path

    def client(self, name: str) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.client_cert(name)), str(self.pki.client_key(name)))
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}",
            verify=context,
            timeout=30,
            event_hooks=record_responses(self.log.with_name("responses.log")),
            # Officers sign ceremony actions with their second factor (the policy below
            # registers these keys; see tests/support/officers.py).
            auth=officer.auth() if (officer := software_officers().get(name)) else None,
        )


@pytest.fixture(scope="module")
def dev_on_shim(
    cloudhsm_shim: CloudHSMShim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevVault]:
    base = tmp_path_factory.mktemp("dev-shim")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    env.update(cloudhsm_shim.env())
    env["COFRE_HSM__LIBRARY"] = str(cloudhsm_shim.library)
    env["COFRE_SERVER__PORT"] = str(port)
    # Retired KEK and fingerprint keys are destroyed at once, through the shim as well.
    env["COFRE_KEYS__DESTROY_GRACE_SECONDS"] = "0"
    env["COFRE_KEYS__BACKUP_RETENTION_SECONDS"] = "0"  # the grace must cover backups
    # The dev policy gives nobody a full PAN; the round trip below reads it back through
    # the tests' in-scope settlement identity, written before `cofre dev` fills the rest.
    (base / "data").mkdir(mode=0o700)
    (base / "data" / "policy.toml").write_text(
        policy_with(DEV_POLICY + SETTLEMENT_POLICY, software_officers())
    )
    ensure_dev_pki(base / "data" / "pki", identities=TEST_IDENTITIES)
    log = base / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cofre_cli", "dev", "--data-dir", str(base / "data")],
            env=env,
            # The banner on stdout shows a curl example with the well-known test card,
            # which the suite's leak scan would rightly flag in any file; the logs (stderr)
            # are what this test keeps.
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    vault = DevVault(DevPKI(base / "data" / "pki"), port, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"cofre dev on the shim exited:\n{log.read_text()}", pytrace=False)
            try:
                with vault.client("payments") as client:
                    if client.get("/readyz").status_code == 200:
                        break
            except (httpx.HTTPError, OSError, ssl.SSLError):
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        for name in ("officer-alice", "officer-bob"):  # before any ceremony (PCI DSS 3.7.8)
            with vault.client(name) as officer:
                acknowledge_custody(officer, software_officers()[name])
        yield vault
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _rotate(vault: DevVault, kind: str) -> None:
    with vault.client("officer-alice") as alice:
        proposed = alice.post("/v1/admin/keys/rotations", json={"kind": kind})
    assert proposed.status_code == 201, proposed.text
    ceremony = proposed.json()["id"]
    with vault.client("officer-alice") as alice:
        # Dual control: the proposer cannot approve alone.
        assert alice.post(f"/v1/admin/keys/rotations/{ceremony}/approve").status_code == 409
    with vault.client("officer-bob") as bob:
        assert bob.post(f"/v1/admin/keys/rotations/{ceremony}/approve").status_code == 200
        for _ in range(600):
            state = bob.get(f"/v1/admin/keys/rotations/{ceremony}").json()["state"]
            if state == "completed":
                return
            assert state not in {"failed", "cancelled"}, state
            time.sleep(0.1)
    raise AssertionError(f"{kind} rotation did not complete")


def test_dev_vault_on_the_shim_tokenizes_and_rotates(dev_on_shim: DevVault) -> None:
    def tokenize(pan: str) -> str:
        with dev_on_shim.client("payments") as client:
            response = client.post("/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"})
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def detokenize(token: str) -> str:
        with dev_on_shim.client("settlement") as client:
            response = client.post("/v1/detokenize", json={"token": token})
        assert response.status_code == 200, response.text
        return str(response.json()["pan"])

    cards = {card_number("411111", serial): "" for serial in range(1, 6)}
    for pan in cards:
        cards[pan] = tokenize(pan)
    for kind in ("kek", "data", "fingerprint"):
        _rotate(dev_on_shim, kind)
        for pan, token in cards.items():
            assert detokenize(token) == pan
            # The fingerprint still finds the card: tokenizing it again returns its token.
            assert tokenize(pan) == token
        extra = card_number("555555", len(cards) + 1)
        cards[extra] = tokenize(extra)
    with dev_on_shim.client("officer-alice") as alice:
        inventory = alice.get("/v1/admin/keys").json()
    labels = str(inventory)
    assert "cofre-kek-v2" in labels
    assert "cofre-fp-v2" in labels
