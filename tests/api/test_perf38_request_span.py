"""`Telemetry.traces_requests`: the request guard builds a request span's attributes
only when a span will be recorded (issue 21, session 38), and a span processor added
after the telemetry was made is seen at once."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

from api.observability import make_telemetry, new_tracer_provider


def test_no_span_processor_no_request_span_and_one_added_later_is_seen() -> None:
    provider = new_tracer_provider()
    telemetry = make_telemetry(provider)
    assert not telemetry.traces_requests
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    assert telemetry.traces_requests
    telemetry.request_span("POST /v1/tokenize", time.time_ns(), {"http.route": "/v1/tokenize"})
    assert [s.name for s in spans.get_finished_spans()] == ["POST /v1/tokenize"]


def test_a_tracer_that_is_not_the_sdks_is_always_handed_the_span() -> None:
    # Another tracer (the API's no-op one here) decides for itself what it records.
    assert make_telemetry(NoOpTracerProvider()).traces_requests
