"""``/metrics`` for Prometheus scraping, on a port of its own.

IN PCI SCOPE (it runs in the vault process). It exposes the OpenTelemetry instruments of
`api.observability` (requests by route template, status, code and identity; latency;
HSM call latency), which never hold a PAN, a token or a raw path, plus the Python
process's own gauges. Plain HTTP, no identity: put it behind the NetworkPolicy that only
lets the monitoring namespace in (deploy/k8s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from prometheus_client import start_http_server

from api.observability import new_meter_provider


def start_metrics_listener(
    host: str, port: int, extra_readers: Sequence[MetricReader] = ()
) -> tuple[MeterProvider, Callable[[], None]]:
    """Serve ``/metrics`` on `host`:`port` in a background thread; return the meter
    provider to record into (with `extra_readers` too, the OTLP one) and a function that
    stops the listener."""
    reader = PrometheusMetricReader()
    provider = new_meter_provider([reader, *extra_readers])
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        provider.shutdown()

    return provider, stop
