"""`cofre serve` as Kubernetes runs it: probes on a plain-HTTP port, SIGTERM drains.

A real process, a real PostgreSQL. The in-flight request is held by a table lock the
test takes and releases (and the test waits on PostgreSQL's own view of the blocked
backend), so nothing here depends on timing.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509

from api.pki import ensure_dev_pki
from tests.support.pans import card_number
from tests.support.postgres import free_port
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault


def _vault(tmp_path: Path, token: SoftHSMToken, url: str) -> tuple[VaultProcess, str]:
    vault = make_vault(tmp_path / "node", token, url)
    health_port = free_port()
    vault.env.update(
        {
            "COFRE_SERVER__HEALTH_PORT": str(health_port),
            "COFRE_LOG_LEVEL": "INFO",
            # The held request waits on a lock for as long as the test holds it.
            "COFRE_DATABASE__STATEMENT_TIMEOUT_MS": "600000",
        }
    )
    return vault, f"http://127.0.0.1:{health_port}"


def _log_events(vault: VaultProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in vault.log.read_text().splitlines() if line.strip()]


def _wait_for_blocked_backend(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(6000):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            if row and row[0] > 0:
                return
            time.sleep(0.01)
    pytest.fail("the tokenize request never reached the locked table")


def test_health_listener_answers_probes_without_identity(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    vault, health = _vault(tmp_path, softhsm_token, pg_database)
    vault.start()
    try:
        with httpx.Client(base_url=health, timeout=10) as client:
            live = client.get("/livez")
            assert (live.status_code, live.json()) == (200, {"status": "alive"})
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"] == {
                "hsm": "ok",
                "database": "ok",
                "key_registry": "ok",
                "audit_sequencer": "ok",
                "key_cryptoperiods": "ok",
                "token_purge": "ok",
                "key_rotation": "ok",
                "hsm_key_presence": "ok",
            }
            # Nothing else is served here: no API route, no body read, no identity.
            for method, path in (("POST", "/v1/tokenize"), ("GET", "/healthz"), ("GET", "/")):
                assert client.request(method, path).status_code == 404
            assert client.post("/readyz").status_code == 405
    finally:
        vault.stop()


def test_idle_connections_to_the_health_port_do_not_fail_the_probes(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """Review 34: any pod may reach the health port. 40 connections that sent nothing
    filled uvicorn's limit of 32 and the kubelet's probes got 503: out of service, then
    restarted. Connections are not capped there now, and one that sends no request
    head in time is closed."""
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    health_port = free_port()
    vault.env["COFRE_SERVER__HEALTH_PORT"] = str(health_port)
    vault.start()
    held: list[socket.socket] = []
    try:
        held = [socket.create_connection(("127.0.0.1", health_port)) for _ in range(40)]
        base = f"http://127.0.0.1:{health_port}"
        assert httpx.get(base + "/livez", timeout=10).status_code == 200
        assert httpx.get(base + "/readyz", timeout=10).status_code == 200
        held[0].settimeout(60)
        assert held[0].recv(1) == b""  # closed by the vault, not by this test
    finally:
        for idle in held:
            idle.close()
        vault.stop()


def _hold_a_tokenize(
    vault: VaultProcess, dsn: str, locker: psycopg.Connection[object]
) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    """A tokenize request held in flight by `locker`'s lock on the tokens table (its
    answer in the dict returned once the thread ends); the data key exists before."""
    with vault.client() as client:
        assert client.post(
            "/v1/tokenize", json={"pan": card_number("4", 6), "format": "uuid"}
        ).is_success
    answer: dict[str, httpx.Response] = {}

    def tokenize() -> None:
        with vault.client() as client:
            answer["r"] = client.post(
                "/v1/tokenize", json={"pan": card_number("4", 7), "format": "pan_bin6_last4"}
            )

    locker.execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
    in_flight = threading.Thread(target=tokenize)
    in_flight.start()
    _wait_for_blocked_backend(dsn)
    return in_flight, answer


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_then_exits_zero(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    pg_database: str,
    signum: signal.Signals,
) -> None:
    vault, health = _vault(tmp_path, softhsm_token, pg_database)
    vault.start()
    assert vault.process is not None
    dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(dsn) as locker:
            in_flight, answer = _hold_a_tokenize(vault, dsn, locker)
            vault.process.send_signal(signum)
            # Readiness fails first, while the request is still in flight...
            with httpx.Client(base_url=health, timeout=10) as probe:
                for _ in range(6000):
                    ready = probe.get("/readyz")
                    if ready.status_code == 503:
                        break
                    time.sleep(0.01)
                assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
                assert probe.get("/livez").status_code == 200
            assert vault.process.poll() is None
            locker.rollback()  # ...then the request finishes,
        in_flight.join(timeout=60)
        assert answer["r"].status_code == 200, answer["r"].text
        assert vault.process.wait(timeout=60) == 0  # and the process exits cleanly.
    finally:
        vault.stop()
    events = _log_events(vault)
    names = [e.get("event") for e in events]
    assert names.index("draining") < names.index("vault stopped")
    stopped = next(e for e in events if e.get("event") == "vault stopped")
    assert stopped["data_keys"] == "wiped"
    assert stopped["hsm_session"] == "closed"
    # The token the held request was answered with is durable.
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM tokens").fetchone()
    assert row is not None
    assert row[0] == 2


def test_a_request_still_in_flight_at_the_drain_deadline_gets_a_problem_answer(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    """Review 34: uvicorn cancels the requests still in flight at the drain deadline,
    and a cancelled request was answered with its plain-text 500 while the vault went on
    to finish the call. It gets a 503 problem (`request_interrupted`: it may have been
    done) and the connection is closed; the node still exits 0."""
    vault, _ = _vault(tmp_path, softhsm_token, pg_database)
    vault.env["COFRE_SERVER__DRAIN_TIMEOUT_SECONDS"] = "1"
    vault.start()
    assert vault.process is not None
    dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(dsn) as locker:
            in_flight, answer = _hold_a_tokenize(vault, dsn, locker)
            vault.process.send_signal(signal.SIGTERM)
            in_flight.join(timeout=60)  # answered at the deadline, the lock still held
            locker.rollback()
        response = answer["r"]
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "request_interrupted"
        assert response.headers["connection"] == "close"
        assert vault.process.wait(timeout=60) == 0
    finally:
        vault.stop()


def _with_metrics(vault: VaultProcess) -> int:
    """Two workers, each with its Prometheus listener: the returned port and the next."""
    metrics_port = _free_port_pair()
    vault.env["COFRE_SERVER__METRICS_PORT"] = str(metrics_port)
    vault.env["COFRE_SERVER__WORKERS"] = "2"
    return metrics_port


def _free_port_pair() -> int:
    """A free port whose next port is free too: worker 1 listens on it, and a port the
    kernel handed to another test there made the node exit (Address already in use)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports on loopback")


def _scrape(metrics_port: int) -> list[httpx.Response]:
    """`/metrics` of each worker (worker N listens on the metrics port + N)."""
    return [_get_when_listening(f"http://127.0.0.1:{metrics_port + n}/metrics") for n in (0, 1)]


def _get_when_listening(url: str) -> httpx.Response:
    # The node is ready when one worker answers on the shared port; the other may still be
    # starting, its metrics listener not yet bound (a refused connection, seen under load).
    for _ in range(600):
        try:
            return httpx.get(url, timeout=10)
        except httpx.ConnectError:
            time.sleep(0.05)
    return httpx.get(url, timeout=10)


def test_metrics_listener_serves_prometheus_text_without_card_data(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    vault, _ = _vault(tmp_path, softhsm_token, pg_database)
    metrics_port = _with_metrics(vault)
    vault.start()
    pan = card_number("4", 21)
    try:
        with vault.client() as client:
            made = client.post("/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"})
            assert made.status_code == 200
        scraped = _scrape(metrics_port)
    finally:
        vault.stop()
    assert [s.status_code for s in scraped] == [200, 200]
    text = "".join(s.text for s in scraped)
    assert "cofre_http_requests" in text
    assert "/v1/tokenize" in text
    assert pan not in text
    assert made.json()["token"] not in text


def test_failed_tls_handshakes_are_logged_and_counted(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    """A client without a certificate, one with a certificate from another CA and a
    plain-HTTP request to the TLS port: three failed handshakes, each a JSON log line
    with OpenSSL's reason, and a counter by reason."""
    vault, _ = _vault(tmp_path, softhsm_token, pg_database)
    metrics_port = _with_metrics(vault)
    vault.start()
    foreign = ensure_dev_pki(tmp_path / "foreign", identities=("payments",))
    try:
        no_cert = ssl.create_default_context(cafile=str(vault.pki.ca))
        wrong_ca = ssl.create_default_context(cafile=str(vault.pki.ca))
        wrong_ca.load_cert_chain(
            str(foreign.client_cert("payments")), str(foreign.client_key("payments"))
        )
        for context in (no_cert, wrong_ca):
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{vault.url}/readyz", verify=context, timeout=10)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{vault.port}/readyz", timeout=10)
        for _ in range(500):  # the server logs after the client has seen the reset
            scraped = "".join(s.text for s in _scrape(metrics_port))
            counted = [
                line
                for line in scraped.splitlines()
                if line.startswith("cofre_tls_handshake_failures_total{")
            ]
            if sum(float(line.rsplit(" ", 1)[1]) for line in counted) >= 3:
                break
            time.sleep(0.02)
    finally:
        vault.stop()
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 3, counted
    assert all('listener="mtls"' in line for line in counted), counted
    failures = [e for e in _log_events(vault) if e.get("event") == "tls handshake failed"]
    assert len(failures) == 3
    assert {e["peer"] for e in failures} == {"127.0.0.1"}
    assert {e["listener"] for e in failures} == {"mtls"}
    reasons = {e["reason"] for e in failures}
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reasons, reasons
    assert any(
        "CERTIFICATE" in r or "UNKNOWN_CA" in r
        for r in reasons - {"PEER_DID_NOT_RETURN_A_CERTIFICATE"}
    ), reasons


def _server_serial(vault: VaultProcess) -> int:
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(
        str(vault.pki.client_cert("payments")), str(vault.pki.client_key("payments"))
    )
    with (
        socket.create_connection(("127.0.0.1", vault.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_the_server_certificate(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    vault, _ = _vault(tmp_path, softhsm_token, pg_database)
    vault.start()
    assert vault.process is not None
    try:
        before = _server_serial(vault)
        vault.pki.server_cert.unlink()  # the dev PKI issues a new one from the same CA
        ensure_dev_pki(vault.pki.root)
        vault.process.send_signal(signal.SIGHUP)
        for _ in range(3000):
            if "server certificate reloaded" in vault.log.read_text():
                break
            time.sleep(0.01)
        after = _server_serial(vault)
        with vault.client() as client:  # and it still serves
            assert client.get("/readyz").status_code == 200
    finally:
        vault.stop()
    assert after != before
    assert after == x509.load_pem_x509_certificate(vault.pki.server_cert.read_bytes()).serial_number
