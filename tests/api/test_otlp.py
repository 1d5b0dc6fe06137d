"""Telemetry leaves the process: `cofre serve` exports traces, metrics and logs over
OTLP/HTTP to a real receiver configured by the standard OTEL_* variables, and none of
it holds a PAN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.otlp import otlp_from_env
from cofre.errors import ConfigurationError
from tests.support.leakscan import find_leaks
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault

PAN = "4111111111111111"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(tmp_path / "otlp")
    receiver.start()
    yield receiver
    receiver.stop()


def test_serve_exports_traces_metrics_and_logs_without_pans(
    tmp_path: Path, softhsm_token: SoftHSMToken, receiver: OtlpReceiver
) -> None:
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    vault.env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_SERVICE_NAME": "cofre-test",
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    vault.start()
    try:
        with vault.client("payments") as client:
            response = client.post("/v1/tokenize", json={"pan": PAN, "format": "pan_last4"})
            assert response.status_code == 200
            token = response.json()["token"]
            # A PAN where it does not belong: in a header, a path and a bad body.
            client.get(f"/v1/tokens/{PAN}", headers={"x-request-id": PAN})
            client.post("/v1/tokenize", json={"pan": PAN + "0", "format": "pan_last4"})
    finally:
        vault.stop()  # a clean stop flushes every exporter
    assert vault.process is not None
    assert vault.process.returncode == 0
    spans = [
        span
        for request in receiver.received["/v1/traces"]
        for resource in request["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    assert any(span["name"] == "POST /v1/tokenize" for span in spans)
    metric_names = {
        metric["name"]
        for request in receiver.received["/v1/metrics"]
        for resource in request["resourceMetrics"]
        for scope in resource["scopeMetrics"]
        for metric in scope["metrics"]
    }
    assert "cofre.http.requests" in metric_names
    logs = [
        record["body"].get("stringValue", "")
        for request in receiver.received["/v1/logs"]
        for resource in request["resourceLogs"]
        for scope in resource["scopeLogs"]
        for record in scope["logRecords"]
    ]
    assert any('"event": "request"' in line for line in logs)
    received = receiver.text()
    assert "cofre.http.requests" in received
    assert find_leaks(received.encode(), [PAN, PAN + "0"], allowed=[token]) == []


def test_exporters_follow_the_standard_variables() -> None:
    assert otlp_from_env({}).span_processor is None
    export = otlp_from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_METRICS_EXPORTER": "none",
        }
    )
    try:
        assert export.span_processor is not None
        assert export.metric_reader is None
        assert export.logger_provider is not None
    finally:
        export.shutdown()
        if export.span_processor is not None:
            export.span_processor.shutdown()
    with pytest.raises(ConfigurationError):
        otlp_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
