"""A real vault server on a loopback port with real mutual TLS, in this process.

Every response body its clients receive (but a successful reveal) and, when it stops,
its logs, spans and metrics are written under its temp directory, where the session's
PAN leak scan reads them (tests/support/leakguard.py)."""

from __future__ import annotations

import io
import json
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.capture import build_capture_server
from api.crl import CrlWatcher
from api.observability import (
    configure_logging,
    make_telemetry,
    new_meter_provider,
    new_tracer_provider,
)
from api.pki import DevPKI, ensure_dev_pki, issue_client
from api.server import BackgroundServer, TLSFiles, build_server
from cofre.settings import (
    AuditSettings,
    CaptureSettings,
    DatabaseSettings,
    EvidenceSettings,
    ServerSettings,
    Settings,
)
from cofre_cli.devenv import DEV_POLICY
from cofre_cli.wiring import Runtime, build_runtime
from hsm.provider import HSMProvider
from tests.support.custody import acknowledge_in_process
from tests.support.fake_acquirer import FakeAcquirer, running_acquirer
from tests.support.leakguard import record_responses
from tests.support.leakscan import json_strings
from tests.support.officers import policy_with, software_officers
from tests.support.policies import (
    SETTLEMENT_POLICY,
    TEST_CAPTURE_ORIGINS,
    TEST_IDENTITIES,
    with_capture_origins,
)
from tests.support.postgres import free_port

# The dev policy's security officers: they acknowledge key custody as each vault starts.
OFFICERS = ("officer-alice", "officer-bob")

# The shop page of the tests' capture sessions (one of `TEST_CAPTURE_ORIGINS`).
TEST_SHOP = "https://shop.example"

LIMITED = """
[identities."spiffe://cofre/limited"]
operations = ["tokenize"]
formats = ["uuid"]
rate_limit = { per_second = 0.5, burst = 2 }
"""


@dataclass
class VaultServer:
    tmp: Path
    url: str
    pki: DevPKI
    other_pki: DevPKI
    runtime: Runtime
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: io.StringIO
    # The server's CRL watcher when started with a CRL (tests reload it by hand).
    crl_watcher: CrlWatcher | None = None
    # The capture listener (server TLS only), when started with `capture`.
    capture_url: str | None = None

    def client(
        self, name: str | None = "payments", *, pki: DevPKI | None = None, signed: bool = True
    ) -> httpx.Client:
        """A client with `name`'s certificate; an officer's also signs with their second
        factor unless `signed` is false (the attacker with a stolen certificate only)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if name is not None:
            source = pki or self.pki
            context.load_cert_chain(str(source.client_cert(name)), str(source.client_key(name)))
        officer = software_officers().get(name or "")
        return httpx.Client(
            base_url=self.url,
            verify=context,
            timeout=10,
            event_hooks=record_responses(self.tmp / "responses.log"),
            # Officers sign ceremony actions and exports with their second factor.
            auth=officer.auth() if officer is not None and signed else None,
        )

    def capture_client(self) -> httpx.Client:
        """A browser-like client of the capture listener: no client certificate."""
        assert self.capture_url is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        return httpx.Client(
            base_url=self.capture_url,
            verify=context,
            timeout=10,
            event_hooks=record_responses(self.tmp / "responses.log"),
        )

    def shopper_captures(
        self, card: dict[str, str], format_name: str = "pan_bin6_last4"
    ) -> httpx.Response:
        """What any visitor of the test shop's checkout does: the shop's backend opens a
        capture session for its page (over mTLS), and the browser posts `card` with the
        session's secret (no certificate; the `Origin` header is a browser's promise)."""
        with self.client("payments") as shop:
            opened = shop.post(
                "/v1/capture-sessions", json={"origin": TEST_SHOP, "formats": [format_name]}
            )
        assert opened.status_code == 201, opened.text
        session = opened.json()
        with self.capture_client() as browser:
            return browser.post(
                f"/v1/capture/{session['session_id']}",
                json={"secret": session["client_secret"], **card},
                headers={"origin": TEST_SHOP},
            )

    def approved_rotation(self, kind: str) -> dict[str, Any]:
        """A rotation of `kind` under dual control, as two officers run it through the
        API (alice proposes, bob approves): the approval's answer (the ceremony)."""
        with self.client("officer-alice") as alice:
            proposed = alice.post("/v1/admin/keys/rotations", json={"kind": kind})
        assert proposed.status_code == 201, proposed.text
        with self.client("officer-bob") as bob:
            approved = bob.post(f"/v1/admin/keys/rotations/{proposed.json()['id']}/approve")
        assert approved.status_code == 200, approved.text
        answer: dict[str, Any] = approved.json()
        return answer

    def rotate_data_keys(self) -> None:
        """`approved_rotation` of the data keys, waited for until it completed (bounded:
        fails only on a hang)."""
        ceremony = self.approved_rotation("data")["id"]
        with self.client("officer-bob") as c:
            deadline = time.monotonic() + 30
            while c.get(f"/v1/admin/keys/rotations/{ceremony}").json()["state"] != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.1)

    def save_telemetry(self) -> None:
        """Write the logs, span strings and metric strings for the session's leak scan."""
        out = self.tmp / "telemetry"
        out.mkdir(exist_ok=True)
        (out / "logs.jsonl").write_text(self.logs.getvalue())
        spans = [json.loads(span.to_json()) for span in self.spans.get_finished_spans()]
        (out / "spans.txt").write_text("\n".join(json_strings(spans)))
        metrics = self.metrics.get_metrics_data()
        metrics_text = "\n".join(json_strings(json.loads(metrics.to_json()))) if metrics else ""
        (out / "metrics.txt").write_text(metrics_text)


@contextmanager
def running_vault(
    tmp: Path,
    provider: HSMProvider,
    database_url: str | None = None,
    extra_policy: str = "",
    crl: Callable[[DevPKI], Path] | None = None,
    *,
    api_docs: bool = False,
    evidence: EvidenceSettings | None = None,
    capture: CaptureSettings | None = None,
    audit: AuditSettings | None = None,
    http_protocol: str = "httptools",
    capture_origins: Sequence[str] = TEST_CAPTURE_ORIGINS,
    database: DatabaseSettings | None = None,
    custodians: Sequence[str] = OFFICERS,
) -> Iterator[VaultServer]:
    """A vault server for the duration of the block; its telemetry is saved at the end.
    With `capture` (its port is picked here) the capture listener runs beside it. The
    officers in `custodians` acknowledge key custody first, as they must before a key
    ceremony (PCI DSS 3.7.8; `vault._custody_gate`)."""
    pki = ensure_dev_pki(tmp / "pki", identities=TEST_IDENTITIES)
    issue_client(pki, "stranger")
    issue_client(pki, "limited")
    other = ensure_dev_pki(tmp / "other-pki", identities=("payments",))
    policy = tmp / "policy.toml"
    policy.write_text(
        policy_with(
            with_capture_origins(DEV_POLICY, capture_origins)
            + LIMITED
            + SETTLEMENT_POLICY
            + extra_policy,
            software_officers(),
        )
    )
    port = free_port()
    settings = Settings(
        data_dir=tmp,
        policy_file=policy,
        database=database
        if database is not None
        else DatabaseSettings()
        if database_url is None
        else DatabaseSettings.model_validate({"url": database_url}),
        audit=audit or AuditSettings(sign_every_entries=50, sign_every_seconds=1.0),
        # Its names, and the port it listens on, are the authorities officers sign for
        # (vault.officer_mfa).
        server=ServerSettings(api_docs=api_docs, cert_file=pki.server_cert, port=port),
        # Suites export many bundles in a row; the export rate limit has its own test.
        evidence=evidence or EvidenceSettings(export_burst=1000),
        capture=capture or CaptureSettings(),
    )
    spans = InMemorySpanExporter()
    tracer_provider = new_tracer_provider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = InMemoryMetricReader()
    logs = io.StringIO()
    configure_logging("INFO", stream=logs)
    runtime = build_runtime(
        settings,
        provider=provider,
        telemetry=make_telemetry(tracer_provider, new_meter_provider([metrics])),
        sequencer_interval=0.05,
    )
    server = BackgroundServer(
        build_server(
            runtime.app,
            "127.0.0.1",
            port,
            TLSFiles(
                cert=pki.server_cert,
                key=pki.server_key,
                ca_bundle=pki.ca,
                crl=crl(pki) if crl else None,
            ),
            http_protocol=http_protocol,
        )
    )
    server.start()
    vault = VaultServer(
        tmp,
        f"https://127.0.0.1:{port}",
        pki,
        other,
        runtime,
        spans,
        metrics,
        logs,
        crl_watcher=server.server.crl_watcher,
    )
    capture_server = None
    if capture is not None:
        assert capture.port is not None
        capture_server = BackgroundServer(
            build_capture_server(
                vault.runtime.capture_app,
                "127.0.0.1",
                capture.port,
                cert=vault.pki.server_cert,
                key=vault.pki.server_key,
                telemetry=vault.runtime.telemetry,
            )
        )
        capture_server.start()
        vault.capture_url = capture.origin()
    try:
        # In process, not over mTLS: a vault started with a CRL that refuses everyone
        # (an expired one) or an officer's certificate takes no request.
        officers = {f"spiffe://cofre/{name}": software_officers()[name] for name in custodians}
        acknowledge_in_process(runtime.engine, runtime.service, runtime.service.policy, officers)
        yield vault
    finally:
        if capture_server is not None:
            capture_server.stop()
        server.stop()
        vault.runtime.close()
        vault.save_telemetry()
        # Collecting the metrics runs their callbacks, and those that read the store
        # (the cryptoperiods) open a connection on the engine `close` disposed: close
        # it too, or it is left to the garbage collector, whose ResourceWarning fails
        # whichever test is running then.
        vault.runtime.engine.dispose()


@pytest.fixture(scope="module")
def vault_server(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    with running_vault(tmp_path_factory.mktemp("api"), hsm_provider) as vault:
        yield vault


@pytest.fixture(scope="module")
def capture_vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    """A vault with its capture listener on, the default capture settings (a module
    that needs others defines its own)."""
    settings = CaptureSettings(port=free_port())
    with running_vault(tmp_path_factory.mktemp("cap"), hsm_provider, capture=settings) as vault:
        yield vault


@pytest.fixture
def acquirer(tmp_path: Path) -> Iterator[FakeAcquirer]:
    """An acquirer behind server TLS for the relay tests; its CA is `acquirer.ca`."""
    with running_acquirer(tmp_path / "acquirer-pki") as acquirer:
        yield acquirer
