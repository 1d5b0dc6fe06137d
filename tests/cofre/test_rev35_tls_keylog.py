"""Review 35: no TLS context Cofre builds as a client, nor the witness's as a server,
writes its session secrets to the file ``SSLKEYLOGFILE`` names, and none trusts a CA
file the environment names in place of its configured (or certifi's) trust.

Review 34b turned the key log off for the relay only. The adapter tier's mTLS client
to the vault, the officers' CLI, the witness client and server were made with
`ssl.create_default_context`, and the OTLP/HTTP exporters' connections with urllib3's,
both of which honour ``SSLKEYLOGFILE``: set in the process's environment, every
session secret went to that file, and with a capture of the traffic anyone read the
officers' MFA-signed requests and the vault's answers, the adapter's tokens, and the
collector's bearer token with every span. The witness client without a CA file trusted
httpx's default context, which reads ``SSL_CERT_FILE``; the OTLP/HTTP exporters
trusted ``REQUESTS_CA_BUNDLE``: an interception proxy's CA there answered for the
witness or the collector.

Each test sets the variable, drives the client or server against a real TLS peer
(`tests.support.tls_peer`, whose own context writes nothing) and requires that no
secret reached the file. The vault's own listeners are pinned in
tests/api/test_rev35_tls_keylog.py, the relay in tests/vault/test_rev34b_relay_keylog.py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from adapters.client import CofreClient
from adapters.errors import AdapterError
from api.otlp import otlp_from_env
from api.pki import DevPKI, ensure_dev_pki
from audit.note import CosignerKey
from cofre_cli._shared import admin_client
from policies.models import RelayRoute
from tests.support.certificates import issue_odd_client
from tests.support.tls_peer import TlsPeer, key_log_secrets, running_peer
from vault.errors import UpstreamUnavailable
from vault.relay_client import RelayClient
from witness.client import latest_checkpoint, submit_checkpoint
from witness.errors import WitnessUnreachable
from witness.server import WitnessConfig, WitnessServer

# Bounded waits that fail only on a hang.
WAIT = 20.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(
        tmp_path_factory.mktemp("rev35-pki"), identities=("getnet-adapter", "officer-alice")
    )


@pytest.fixture
def keylog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tls-secrets.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(path))
    return path


@pytest.fixture
def mtls_peer(pki: DevPKI) -> Iterator[TlsPeer]:
    body = json.dumps({"masked_pan": "************1111"}).encode()
    with running_peer(pki, client_ca=pki.ca, body=body) as peer:
        yield peer


def test_the_adapters_client_to_the_vault_writes_no_key_log(
    pki: DevPKI, mtls_peer: TlsPeer, keylog: Path
) -> None:
    with CofreClient(
        mtls_peer.url,
        cert=pki.client_cert("getnet-adapter"),
        key=pki.client_key("getnet-adapter"),
        ca=pki.ca,
    ) as client:
        assert client.detokenize_masked("tok_rev35") == "************1111"
    assert mtls_peer.received == [("POST", "/v1/detokenize-masked")]
    assert key_log_secrets(keylog) == []


def test_the_officers_cli_client_writes_no_key_log(
    pki: DevPKI, mtls_peer: TlsPeer, keylog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cofre.toml"
    config.write_text("")
    monkeypatch.setenv("COFRE_CONFIG", str(config))
    monkeypatch.setenv("COFRE_DATA_DIR", str(tmp_path / "data"))  # no officer token there
    monkeypatch.setenv("COFRE_SERVER__HOST", "127.0.0.1")
    monkeypatch.setenv("COFRE_SERVER__PORT", str(mtls_peer.port))
    monkeypatch.setenv("COFRE_SERVER__CA_BUNDLE", str(pki.ca))
    client = admin_client(
        "officer-alice", pki.client_cert("officer-alice"), pki.client_key("officer-alice")
    )
    try:
        assert client.get("/v1/keys").status_code == 200
    finally:
        client.close()
    assert mtls_peer.received == [("GET", "/v1/keys")]
    assert key_log_secrets(keylog) == []


def test_the_witness_client_writes_no_key_log(pki: DevPKI, keylog: Path) -> None:
    with running_peer(pki, content_type="text/plain", body=b"cosigned\n") as peer:
        assert submit_checkpoint(peer.url, b"checkpoint", ca_file=pki.ca).status == 200
        assert latest_checkpoint(peer.url, "log.example", ca_file=pki.ca) == "cosigned\n"
        # A witness on the public CAs: the handshake runs, and fails on this test CA.
        with pytest.raises(WitnessUnreachable):
            submit_checkpoint(peer.url, b"checkpoint")
    assert key_log_secrets(keylog) == []


def test_the_witness_client_without_a_ca_file_ignores_ca_files_the_environment_names(
    pki: DevPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interception proxy's CA, set for the host's other tools.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki.ca.parent))
    with running_peer(pki, content_type="text/plain", body=b"cosigned\n") as peer:
        with pytest.raises(WitnessUnreachable):
            submit_checkpoint(peer.url, b"checkpoint")
        with pytest.raises(WitnessUnreachable):
            latest_checkpoint(peer.url, "log.example")
        assert peer.received == []


def _witness_config(directory: Path, pki: DevPKI) -> WitnessConfig:
    key_file = directory / "witness.key"
    key_file.write_text(CosignerKey.generate("witness.test/w1").encode() + "\n")
    key_file.chmod(0o600)
    logs_file = directory / "logs.vkeys"
    logs_file.write_text(CosignerKey.generate("log.example").verifier_key().encode() + "\n")
    return WitnessConfig(
        key_file,
        directory / "state.sqlite3",
        logs_file,
        port=0,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
    )


def test_the_witness_server_writes_no_key_log(pki: DevPKI, keylog: Path, tmp_path: Path) -> None:
    server = WitnessServer(_witness_config(tmp_path, pki))
    server.start()
    try:
        # The test's own client context reads no environment: it writes nothing.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(pki.ca))
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(12).startswith(b"HTTP/1.")
    finally:
        server.stop()
    assert key_log_secrets(keylog) == []


def _export_one_span(peer: TlsPeer, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    """Have the vault's OTLP export (the OTEL_* variables, as `cofre serve` reads them)
    send one span to `peer` over https."""
    variables = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": peer.url,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **extra,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    export = otlp_from_env(os.environ)
    assert export.span_processor is not None
    provider = TracerProvider()
    provider.add_span_processor(export.span_processor)
    try:
        with provider.get_tracer("rev35").start_as_current_span("rev35"):
            pass
        provider.force_flush(int(WAIT * 1000))
    finally:
        provider.shutdown()
        export.shutdown()


def test_the_otlp_exporter_writes_no_key_log(
    pki: DevPKI, keylog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_peer(pki, content_type="application/x-protobuf", body=b"") as peer:
        _export_one_span(peer, monkeypatch, OTEL_EXPORTER_OTLP_CERTIFICATE=str(pki.ca))
        assert peer.received == [("POST", "/v1/traces")]
    assert key_log_secrets(keylog) == []


def test_the_otlp_exporter_still_presents_its_client_certificate(
    pki: DevPKI, mtls_peer: TlsPeer, keylog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collector that asks for mutual TLS gets the exporter's certificate, through the
    context `api._otlp_session` gives every connection."""
    _export_one_span(
        mtls_peer,
        monkeypatch,
        OTEL_EXPORTER_OTLP_CERTIFICATE=str(pki.ca),
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(pki.client_cert("getnet-adapter")),
        OTEL_EXPORTER_OTLP_CLIENT_KEY=str(pki.client_key("getnet-adapter")),
    )
    assert mtls_peer.received == [("POST", "/v1/traces")]
    assert key_log_secrets(keylog) == []


@pytest.mark.parametrize("pinned", [False, True])
def test_the_otlp_exporter_ignores_ca_bundles_the_environment_names(
    pinned: bool, pki: DevPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a collector CA the exporter trusted these in place of certifi's; with one
    (`OTEL_EXPORTER_OTLP_CERTIFICATE`), requests let them override it all the same."""
    # requests' own variables, set for another tool: not the collector's CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(pki.ca))
    # The exporter retries a failed export until its timeout: a short one.
    extra = {"OTEL_EXPORTER_OTLP_TIMEOUT": "2"}
    if pinned:
        collector_ca = ensure_dev_pki(tmp_path / "collector", identities=()).ca
        extra["OTEL_EXPORTER_OTLP_CERTIFICATE"] = str(collector_ca)
    with running_peer(pki, content_type="application/x-protobuf", body=b"") as peer:
        _export_one_span(peer, monkeypatch, **extra)
        assert peer.received == []


@pytest.fixture
def misnamed_peer(pki: DevPKI, tmp_path: Path) -> Iterator[TlsPeer]:
    """A peer whose certificate the trusted CA issued, for a name that is not the one
    dialled (127.0.0.1): only the hostname check refuses it."""
    cert, key, _ = issue_odd_client(
        pki, tmp_path, "misnamed", ["spiffe://cofre/misnamed"], client_auth=False
    )
    with running_peer(pki, cert=cert, key=key, body=b"{}") as peer:
        yield peer


def _refused(call: Callable[[], object]) -> None:
    with pytest.raises((AdapterError, httpx.HTTPError, WitnessUnreachable, UpstreamUnavailable)):
        call()


def test_every_client_checks_the_peers_name(
    pki: DevPKI, misnamed_peer: TlsPeer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pin: each client context verifies the name it dials, not only the chain."""
    adapter = pki.client_cert("getnet-adapter"), pki.client_key("getnet-adapter")
    with CofreClient(misnamed_peer.url, cert=adapter[0], key=adapter[1], ca=pki.ca) as client:
        _refused(lambda: client.detokenize_masked("tok_rev35"))
    _refused(lambda: submit_checkpoint(misnamed_peer.url, b"checkpoint", ca_file=pki.ca))
    relay = RelayClient()
    route = RelayRoute(
        upstream=f"{misnamed_peer.url}/v1/authorize",
        identities=frozenset({"spiffe://cofre/getnet-adapter"}),
        ca_bundle=str(pki.ca),
        timeout_seconds=10,
    )
    try:
        _refused(lambda: relay.send("misnamed", route, {"amount": "1.00"}))
    finally:
        relay.close()
    config = tmp_path / "cofre.toml"
    config.write_text("")
    for name, value in {
        "COFRE_CONFIG": str(config),
        "COFRE_DATA_DIR": str(tmp_path / "data"),
        "COFRE_SERVER__HOST": "127.0.0.1",
        "COFRE_SERVER__PORT": str(misnamed_peer.port),
        "COFRE_SERVER__CA_BUNDLE": str(pki.ca),
    }.items():
        monkeypatch.setenv(name, value)
    officer = admin_client(
        "officer-alice", pki.client_cert("officer-alice"), pki.client_key("officer-alice")
    )
    try:
        _refused(lambda: officer.get("/v1/keys"))
    finally:
        officer.close()
    _export_one_span(
        misnamed_peer,
        monkeypatch,
        OTEL_EXPORTER_OTLP_CERTIFICATE=str(pki.ca),
        OTEL_EXPORTER_OTLP_TIMEOUT="2",
    )
    assert misnamed_peer.received == []
