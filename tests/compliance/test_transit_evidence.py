"""The TLS evidence of a bundle covers every listener that receives a card (the QSA
review of session 30, docs/pci-tokenization.md). PCI DSS v4.0.1 4.2.1 asks for strong
cryptography where a PAN crosses an open, public network, and 4.2.1.1 for an inventory
of the trusted keys and certificates that protect it. The capture listener is the one
listener where cards arrive over the internet (shoppers' browsers), yet a bundle's
`tls/settings.json` described only the mTLS listener (its TLS 1.3 floor and client
certificates, neither of which the capture listener has) and `tls/certificates.json`
left out the capture origin's own certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.certificates import self_signed, write_pair
from tests.support.postgres import free_port
from tests.support.vault_evidence import export_response, members

CAPTURE_HOST = "cards.shop-vault.example"


def _capture_certificate(tmp: Path) -> tuple[Path, Path]:
    """A certificate of the capture origin, apart from the mTLS listener's (as
    `COFRE_CAPTURE__CERT_FILE` names one in production: a public CA's)."""
    san = x509.SubjectAlternativeName([x509.DNSName(CAPTURE_HOST)])
    cert, key = self_signed(CAPTURE_HOST, san, days=1, critical=False)
    return write_pair(tmp, "capture", cert, key)


def test_the_capture_listener_and_its_certificate_are_in_the_tls_evidence(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    (tmp_path / "capture").mkdir()
    cert, key = _capture_certificate(tmp_path / "capture")
    capture = CaptureSettings(port=free_port(), cert_file=cert, key_file=key)
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with running_vault(tmp_path, hsm_provider, capture=capture) as vault:
        response = export_response(vault, started)
    assert response.status_code == 200, response.text
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(response.content)
    files = members(bundle)

    tls = json.loads(files["tls/settings.json"])
    listener = tls["capture_listener"]
    assert listener["origin"] == capture.origin()
    assert listener["min_tls_version"] == "1.2"  # browsers: what `api.capture` sets
    assert listener["client_certificates"].startswith("none")
    assert listener["ciphers"] == tls["ciphers"]
    assert listener["certificate"] == str(cert)

    inventory = json.loads(files["tls/certificates.json"])
    (entry,) = [c for c in inventory if c["file"] == str(cert)]
    assert entry["san"] == CAPTURE_HOST


def test_without_a_capture_listener_the_evidence_names_none(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with running_vault(tmp_path, hsm_provider) as vault:
        response = export_response(vault, started)
    assert response.status_code == 200, response.text
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(response.content)
    tls = json.loads(members(bundle)["tls/settings.json"])
    assert tls["capture_listener"] is None


def _ca_pem(common_name: str) -> bytes:
    """A self-signed CA certificate, as an acquirer's private CA would be."""
    ca = x509.BasicConstraints(ca=True, path_length=None)
    cert, _ = self_signed(common_name, ca, days=30, critical=True)
    return cert.public_bytes(serialization.Encoding.PEM)


RELAYER = """
[identities."spiffe://cofre/checkout"]
description = "A relaying service"
scope = "out"
operations = ["relay"]
"""


def _route(name: str, ca: Path) -> str:
    return f"""
[relay_routes.{name}]
identities = ["spiffe://cofre/checkout"]
upstream = "https://{name}.acquirer.example/v1/authorize"
detokenize = ["/card/number"]
ca_bundle = "{ca}"
"""


def test_relay_routes_ca_bundles_of_the_policy_in_force_are_in_the_inventory(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """4.2.1.1 (finding F8): the CAs the vault trusts when it sends PANs to acquirers
    (each relay route's `ca_bundle`) are listed, every certificate of a bundle, from the
    policy in force at export, not the one the vault started with."""
    (tmp_path / "cas").mkdir()
    first, second, gone = (tmp_path / "cas" / f"{n}.pem" for n in ("first", "second", "gone"))
    first.write_bytes(_ca_pem("First Acquirer CA"))
    second.write_bytes(_ca_pem("Second Acquirer Root") + _ca_pem("Second Acquirer Issuing"))
    gone.write_bytes(_ca_pem("Gone Acquirer CA"))
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with running_vault(
        tmp_path, hsm_provider, extra_policy=RELAYER + _route("acq", first)
    ) as vault:
        policy = vault.runtime.settings.policy_file
        assert policy is not None
        text = policy.read_text(encoding="utf-8").replace(str(first), str(second))
        policy.write_text(text + _route("old", gone), encoding="utf-8")
        assert vault.runtime.reload_policy()
        gone.unlink()  # the relay would fail on it too: the evidence says so
        response = export_response(vault, started)
    assert response.status_code == 200, response.text
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(response.content)
    inventory = json.loads(members(bundle)["tls/certificates.json"])

    relayed = [c for c in inventory if "relay_route" in c]
    assert [(c["relay_route"], c["file"], c.get("subject")) for c in relayed] == [
        ("acq", str(second), "CN=Second Acquirer Root"),
        ("acq", str(second), "CN=Second Acquirer Issuing"),
        ("old", str(gone), None),
    ]
    root = relayed[0]
    assert root["upstream"] == "https://acq.acquirer.example/v1/authorize"
    assert root["issuer"] == "CN=Second Acquirer Root"
    cert = x509.load_pem_x509_certificates(second.read_bytes())[0]
    assert root["not_after"] == cert.not_valid_after_utc.isoformat()
    assert root["serial"] == ":".join(
        f"{b:02x}" for b in cert.serial_number.to_bytes(20, "big").lstrip(b"\0")
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert root["sha256"] == hashlib.sha256(der).hexdigest()
    assert relayed[2]["error"] == "cannot read the CA bundle (FileNotFoundError)"
    assert not [c for c in inventory if c["file"] == str(first)]
