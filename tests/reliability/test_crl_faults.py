"""The CRL file under a running `cofre serve` (docs/operations.md, "Certificate and CRL
rotation"): deleted, then past its nextUpdate. The on-call's probe is the plain-HTTP
health listener (an expired CRL refuses every mTLS handshake, the mTLS `/readyz`'s
too); it must name the cause, and the vault must serve again, without a restart, once
a good CRL is in place."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.pki import DevPKI
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# Every CRL below is issued later than the one before: OpenSSL puts a CRL of the same
# issuer into force for new handshakes only when its lastUpdate is strictly later.
HOURS_AGO_FIRST = 3


def _write_crl(pki: DevPKI, out: Path, *, issued_hours_ago: float, valid_for: dt.timedelta) -> None:
    """A CRL of `pki`'s CA revoking nothing, issued `issued_hours_ago`, whose nextUpdate
    is `valid_for` from now; written in place (rename: the watcher never reads half)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(hours=issued_hours_ago))
        .next_update(now + valid_for)
        .sign(ca_key, hashes.SHA256())
    )
    staged = out.with_suffix(".new")
    staged.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    staged.replace(out)


def _wait_for(what: str, condition: Callable[[], bool]) -> None:
    """Bounded: fails only if `condition` never holds (a hang), never on how long."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _ready(health: str) -> httpx.Response:
    with httpx.Client(base_url=health, timeout=10) as client:
        return client.get("/readyz")


def _served(vault: VaultProcess) -> bool:
    try:
        with vault.client(timeout=10) as client:
            return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _vault(tmp_path: Path, token: SoftHSMToken) -> tuple[VaultProcess, Path, str]:
    vault = make_vault(tmp_path / "v", token, None)
    crl = tmp_path / "crl.pem"
    _write_crl(vault.pki, crl, issued_hours_ago=HOURS_AGO_FIRST, valid_for=dt.timedelta(days=7))
    health_port = free_port()
    vault.env.update(
        {
            "COFRE_SERVER__CRL_FILE": str(crl),
            "COFRE_SERVER__CRL_RELOAD_SECONDS": "0.2",
            "COFRE_SERVER__HEALTH_PORT": str(health_port),
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    vault.start()
    return vault, crl, f"http://127.0.0.1:{health_port}"


def test_a_deleted_crl_file_is_named_and_its_return_recovers(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault, crl, health = _vault(tmp_path, softhsm_token)
    kept = crl.read_bytes()
    crl.unlink()
    _wait_for("readiness never failed", lambda: _ready(health).status_code == 503)
    assert _ready(health).json()["code"] == "crl_invalid"
    assert "CRL not loaded" in vault.log.read_text()
    # The CRL loaded before stays in force: revocations are not forgotten, and clients
    # are still served by this node (the load balancer takes it out on readiness).
    assert _served(vault)
    crl.write_bytes(kept)
    _wait_for("readiness never came back", lambda: _ready(health).status_code == 200)


def test_a_crl_past_its_next_update_refuses_everyone_even_with_an_older_valid_one_loaded(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    vault, crl, health = _vault(tmp_path, softhsm_token)
    _write_crl(vault.pki, crl, issued_hours_ago=2, valid_for=dt.timedelta(seconds=3))
    _wait_for("readiness never failed", lambda: _ready(health).status_code == 503)
    assert _ready(health).json()["code"] == "crl_expired"
    assert "CRL expired" in vault.log.read_text()
    # Fail closed: no client certificate of that CA is served. OpenSSL would have
    # accepted the handshake here (the first CRL, older, still valid, is in its store).
    with vault.client(timeout=10) as client:
        refused = client.get("/healthz")
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "crl_expired"
    _write_crl(vault.pki, crl, issued_hours_ago=1, valid_for=dt.timedelta(days=7))
    _wait_for("readiness never came back", lambda: _ready(health).status_code == 200)
    _wait_for("clients were never served again", lambda: _served(vault))
