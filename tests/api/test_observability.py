"""Request spans: built when the response is known, sampled by the standard
OTEL_TRACES_SAMPLER variables, and a refused or failed request is always traced."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.observability import (
    EXPORT_LOGGER,
    configure_logging,
    export_event,
    make_telemetry,
    new_meter_provider,
    new_tracer_provider,
)
from api.server import MaskingFormatter, log_config
from cofre.redaction import OwnDigest


def _span(status: int) -> tuple[str, int, dict[str, object]]:
    return (
        "POST /v1/tokenize",
        time.time_ns(),
        {"http.route": "/v1/tokenize", "http.response.status_code": status},
    )


def test_sampled_out_successes_still_trace_every_refusal_and_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    provider = new_tracer_provider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = make_telemetry(provider)
    for status in (200, 201, 401, 429, 500):
        telemetry.request_span(*_span(status))
    kept = [span.attributes["http.response.status_code"] for span in spans.get_finished_spans()]  # type: ignore[index]
    assert kept == [401, 429, 500]


def test_the_default_sampler_traces_every_request_with_its_start_time() -> None:
    provider = new_tracer_provider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    name, started, attributes = _span(200)
    make_telemetry(provider).request_span(name, started, attributes)
    (span,) = spans.get_finished_spans()
    assert span.name == name
    assert span.start_time == started
    assert span.end_time is not None
    assert span.end_time >= started


class _Writes(io.StringIO):
    """A stream that remembers each write it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_log_line_is_one_write_newline_included() -> None:
    """The workers share one stderr: a line written in two pieces (the event, then its
    newline) lets another worker's line land between them (seen in CI as two JSON events
    on one line)."""
    saved = structlog.get_config()
    stream = _Writes()
    try:
        configure_logging(stream=stream)
        structlog.get_logger().info("draining", signal="SIGTERM", worker=0)
        structlog.get_logger().info("vault stopped", worker=1)
    finally:
        structlog.configure(**saved)
    assert len(stream.writes) == 2
    for write in stream.writes:
        assert write.endswith("\n")
        assert write.count("\n") == 1
        json.loads(write)


def test_a_workers_lines_carry_its_index_from_every_thread() -> None:
    """Workers share one stderr. The committer, sequencer, purge and capture listener
    log from threads of their own, which do not see a context variable the main thread
    bound (review 21: the capture listener's lines had no ``worker``)."""
    saved = structlog.get_config()
    stream = io.StringIO()
    try:
        configure_logging(stream=stream, worker=3)
        thread = threading.Thread(target=lambda: structlog.get_logger().info("from a thread"))
        thread.start()
        thread.join()
        structlog.get_logger().info("from the main thread")
    finally:
        structlog.configure(**saved)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["worker"]) for e in lines] == [
        ("from a thread", 3),
        ("from the main thread", 3),
    ]


def test_requests_are_counted_per_route_method_status_and_code() -> None:
    reader = InMemoryMetricReader()
    telemetry = make_telemetry(new_tracer_provider(), new_meter_provider([reader]))
    for status, code in ((200, ""), (200, ""), (429, "rate_limited")):
        telemetry.count_request("/v1/tokenize", "POST", status, code)
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "cofre.http.requests"
    ]
    assert isinstance(metric.data, Sum)
    assert metric.data.is_monotonic
    counts = {
        (dict(p.attributes or {})["status"], dict(p.attributes or {})["code"]): p.value
        for p in metric.data.data_points
    }
    assert counts == {(200, ""): 2, (429, "rate_limited"): 1}


PAN = "4111111111111111"
ROOT = Path(__file__).resolve().parents[2]


def _structlog_lines(worker: int | None, **event: object) -> list[dict[str, object]]:
    saved = structlog.get_config()
    stream = io.StringIO()
    try:
        configure_logging(stream=stream, worker=worker)
        structlog.get_logger("t").info("card " + PAN, **event)
    finally:
        structlog.configure(**saved)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_workers_structlog_line_is_still_masked() -> None:
    (line,) = _structlog_lines(3, card=PAN, nested={"pan": PAN})
    assert line["worker"] == 3
    assert PAN not in json.dumps(line)


def test_a_single_process_line_has_no_worker() -> None:
    (line,) = _structlog_lines(None)
    assert "worker" not in line
    assert PAN not in json.dumps(line)


def test_uvicorns_lines_of_a_worker_name_it_and_are_masked() -> None:
    config = log_config("INFO", worker=2)
    formatter = logging.config.DictConfigurator(config).configure_formatter(
        dict(config["formatters"]["masked"])
    )
    assert isinstance(formatter, MaskingFormatter)
    error = ValueError("bad card " + PAN)
    record = logging.LogRecord(
        "uvicorn.error",
        logging.ERROR,
        __file__,
        1,
        "peer sent %s",
        (PAN,),
        (ValueError, error, None),
    )
    line = json.loads(formatter.format(record))
    assert line["worker"] == 2
    assert PAN not in json.dumps(line)
    single = json.loads(MaskingFormatter().format(record))
    assert "worker" not in single


# What a worker process configures (serve_worker: configure_logging, then uvicorn's
# dictConfig of log_config), then stdlib lines from outside uvicorn: asyncio's exception
# handler (an exception in a protocol callback), OpenTelemetry's exporter failing.
_WORKER = textwrap.dedent(
    """
    import asyncio, logging, logging.config
    import structlog
    from api.observability import configure_logging
    from api.server import log_config
    configure_logging("INFO", worker=1)
    logging.config.dictConfig(log_config("INFO", worker=1))
    structlog.get_logger("cofre.vault").info("vault started")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    loop = asyncio.new_event_loop()
    loop.call_exception_handler(
        {"message": "Exception in callback", "exception": ValueError("card PAN")}
    )
    loop.close()
    logging.getLogger("opentelemetry.sdk._shared_internal").error(
        "Exception while exporting Span batch."
    )
    """
).replace("PAN", PAN)


def test_every_line_of_a_worker_is_json_names_it_and_holds_no_pan() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WORKER],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert PAN not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    unnamed = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            unnamed.append(line)
            continue
        if event.get("worker") != 1:
            unnamed.append(line)
    assert not unnamed, done.stderr


def test_the_otlp_copy_of_a_line_keeps_a_digest_the_vault_computed_whole() -> None:
    """The exported copy is masked again as text; a policy hash with a Luhn-valid window
    (one in fifty) was masked there while the printed line kept it (session 17)."""
    unlucky = "6729a94eab2051d6ed2a6ce3c7174832147970651782f7b875aa56b6bfbb2bf4"
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    exporter = logging.getLogger(EXPORT_LOGGER)
    handler, level = Keep(), exporter.level
    exporter.addHandler(handler)
    exporter.setLevel(logging.INFO)
    try:
        export_event(
            None,
            "info",
            {
                "event": "starting",
                "policy_sha256": OwnDigest(unlucky),
                "note": f"card 4111111111111111 and {unlucky}",
            },
        )
    finally:
        exporter.removeHandler(handler)
        exporter.setLevel(level)
    [line] = records
    sent = json.loads(line)
    assert sent["policy_sha256"] == unlucky
    assert "4111111111111111" not in line
    assert unlucky not in sent["note"]  # a plain string holding it is still masked
