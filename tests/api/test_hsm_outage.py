"""The HSM goes away under a running vault (`cofre serve` in its own process, its own copy
of the token): 503 hsm_unavailable and /readyz failing while it is gone, and the next
call succeeds once it is back, without a restart."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

VISA = "4111111111111111"


@dataclass
class Outage:
    """A `cofre serve` whose PKCS#11 library path is a symlink the test controls."""

    vault: VaultProcess
    library_link: Path

    @property
    def token_dir(self) -> Path:
        return self.vault.log.parent / "tokens"

    def client(self, name: str = "payments") -> httpx.Client:
        return self.vault.client(name)


@pytest.fixture
def serve_process(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[Outage]:
    vault = make_vault(tmp_path / "v", softhsm_token, None)
    link = tmp_path / "lib" / "libsofthsm2.so"
    link.parent.mkdir()
    vault.env["COFRE_HSM__LIBRARY"] = str(link)
    vault.start(ready_path="/healthz")  # the HSM is missing: alive, not ready
    yield Outage(vault, link)
    vault.stop()


def _tokenize(served: Outage) -> httpx.Response:
    with served.client() as c:
        return c.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})


def _assert_unavailable(served: Outage) -> None:
    response = _tokenize(served)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "hsm_unavailable"
    with served.client() as c:
        ready = c.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "hsm_unavailable"


def test_library_missing_then_back(serve_process: Outage) -> None:
    _assert_unavailable(serve_process)
    serve_process.library_link.symlink_to(DEFAULT_SOFTHSM_LIBRARY)
    response = _tokenize(serve_process)
    assert response.status_code == 200, response.text
    with serve_process.client("settlement") as c:
        assert (
            c.post("/v1/detokenize", json={"token": response.json()["token"]}).json()["pan"] == VISA
        )
    # The audit sequencer retries on its own tick: once the HSM is back (and the first
    # call adopted the token's keys into the registry) readiness returns by itself.
    with serve_process.client() as c:
        for _ in range(300):
            ready = c.get("/readyz")
            if ready.status_code == 200:
                break
            time.sleep(0.1)
        assert ready.status_code == 200, ready.text


def test_token_removed_then_back(serve_process: Outage) -> None:
    serve_process.library_link.symlink_to(DEFAULT_SOFTHSM_LIBRARY)
    assert _tokenize(serve_process).status_code == 200
    aside = serve_process.token_dir.with_name("tokens-aside")
    serve_process.token_dir.rename(aside)
    try:
        _assert_unavailable(serve_process)
    finally:
        aside.rename(serve_process.token_dir)
    response = _tokenize(serve_process)
    assert response.status_code == 200, response.text
    assert VISA not in serve_process.vault.log.read_text()


def _cofre(served: Outage, *args: str) -> subprocess.CompletedProcess[str]:
    return served.vault.cofre(*args)


def test_key_rotation_from_the_cli(serve_process: Outage) -> None:
    serve_process.library_link.symlink_to(DEFAULT_SOFTHSM_LIBRARY)
    token = _tokenize(serve_process).json()["token"]
    serve_process.vault.acknowledge_custody()
    denied = _cofre(serve_process, "keys", "rotate", "--kind", "data", "--as", "payments")
    assert denied.returncode == 1
    assert "policy_denied" in denied.stderr
    proposed = _cofre(serve_process, "keys", "rotate", "--kind", "data", "--as", "officer-alice")
    assert proposed.returncode == 0, proposed.stderr
    assert "data rotation, pending" in proposed.stdout
    ceremony = proposed.stdout.split()[1].rstrip(":")
    own = _cofre(serve_process, "keys", "approve", ceremony, "--as", "officer-alice")
    assert own.returncode == 1
    assert "proposer cannot approve" in own.stderr
    approved = _cofre(serve_process, "keys", "approve", ceremony, "--as", "officer-bob")
    assert approved.returncode == 0, approved.stderr
    watched = _cofre(serve_process, "keys", "status", ceremony, "--watch")
    assert watched.returncode == 0, watched.stderr
    assert "completed" in watched.stdout
    listed = _cofre(serve_process, "keys", "list")
    assert "pan_gcm-v2" in listed.stdout
    assert "destroyed" in listed.stdout
    assert re.search(r"period cofre-kek-v1 +ok ", listed.stdout), listed.stdout
    with serve_process.client("settlement") as c:
        assert c.post("/v1/detokenize", json={"token": token}).json()["pan"] == VISA
