"""The HSM goes away under a running vault (`cofre serve` in its own process, its own copy
of the token): 503 hsm_unavailable and /readyz failing while it is gone, and the next
call succeeds once it is back, without a restart."""

from __future__ import annotations

import os
import shutil
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
from cofre.devenv import DEV_POLICY
from cofre.settings import DEFAULT_SOFTHSM_LIBRARY
from hsm.softhsm import write_softhsm_conf
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken

VISA = "4111111111111111"


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    url: str
    pki: DevPKI
    library_link: Path
    token_dir: Path
    log: Path
    env: dict[str, str]

    def client(self, name: str = "payments") -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.client_cert(name)), str(self.pki.client_key(name)))
        return httpx.Client(base_url=self.url, verify=context, timeout=30)


@pytest.fixture
def serve_process(tmp_path: Path, softhsm_token: SoftHSMToken) -> Iterator[ServeProcess]:
    tokens = tmp_path / "tokens"
    shutil.copytree(softhsm_token.token_dir, tokens)
    conf = tmp_path / "softhsm2.conf"
    write_softhsm_conf(conf, tokens)
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_token.user_pin)
    pin_file.chmod(0o600)
    pki = ensure_dev_pki(tmp_path / "pki")
    policy = tmp_path / "policy.toml"
    policy.write_text(DEV_POLICY)
    link = tmp_path / "lib" / "libsofthsm2.so"
    link.parent.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    env.update(
        {
            "COFRE_DATA_DIR": str(tmp_path),
            "COFRE_POLICY_FILE": str(policy),
            "COFRE_HSM__LIBRARY": str(link),
            "COFRE_HSM__TOKEN_LABEL": softhsm_token.label,
            "COFRE_HSM__PIN_FILE": str(pin_file),
            "COFRE_HSM__SOFTHSM_CONF": str(conf),
            "COFRE_SERVER__PORT": str(port),
            "COFRE_SERVER__CA_BUNDLE": str(pki.ca),
            "COFRE_SERVER__CERT_FILE": str(pki.server_cert),
            "COFRE_SERVER__KEY_FILE": str(pki.server_key),
        }
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cofre.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = ServeProcess(process, f"https://127.0.0.1:{port}", pki, link, tokens, log, env)
    deadline = time.monotonic() + 30
    while True:
        try:
            with served.client() as c:
                if c.get("/healthz").status_code == 200:
                    break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"cofre serve did not start:\n{log.read_text()}")
        time.sleep(0.1)
    yield served
    process.terminate()
    process.wait(timeout=20)


def _tokenize(served: ServeProcess) -> httpx.Response:
    with served.client() as c:
        return c.post("/v1/tokenize", json={"pan": VISA, "format": "pan_bin6_last4"})


def _assert_unavailable(served: ServeProcess) -> None:
    response = _tokenize(served)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "hsm_unavailable"
    with served.client() as c:
        ready = c.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "hsm_unavailable"


def test_library_missing_then_back(serve_process: ServeProcess) -> None:
    _assert_unavailable(serve_process)
    serve_process.library_link.symlink_to(DEFAULT_SOFTHSM_LIBRARY)
    response = _tokenize(serve_process)
    assert response.status_code == 200, response.text
    with serve_process.client("getnet-adapter") as c:
        assert (
            c.post("/v1/detokenize", json={"token": response.json()["token"]}).json()["pan"] == VISA
        )
    with serve_process.client() as c:
        assert c.get("/readyz").status_code == 200


def test_token_removed_then_back(serve_process: ServeProcess) -> None:
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
    assert VISA not in serve_process.log.read_text()


def _cofre(served: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cofre.cli", *args],
        env=served.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_key_rotation_from_the_cli(serve_process: ServeProcess) -> None:
    serve_process.library_link.symlink_to(DEFAULT_SOFTHSM_LIBRARY)
    token = _tokenize(serve_process).json()["token"]
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
    with serve_process.client("getnet-adapter") as c:
        assert c.post("/v1/detokenize", json={"token": token}).json()["pan"] == VISA
