"""``/metrics`` for Prometheus scraping, on a port of its own.

IN PCI SCOPE (it runs in the vault process). It exposes the OpenTelemetry instruments of
`api.observability` (requests by route template, method, status and code, never by
identity; latency; HSM call latency), which never hold a PAN, a token or a raw path, plus the Python
process's own gauges. Plain HTTP, no identity: put it behind the NetworkPolicy that only
lets the monitoring namespace in (deploy/k8s).

Anyone who reaches the port can open connections, and nothing in the monitoring
namespace is in PCI scope. Session 35: prometheus_client's own server gave every
connection a thread for as long as it stayed open (100 idle connections, 100 threads
of the vault, for ever), so here a connection must send its request head within
`HEAD_SECONDS`, and at most `MAX_SCRAPE_CONNECTIONS` are served at once (the others
are closed at once: a scraper retries at its next interval). What a scrape costs the
HSM and the database is bounded in `api.observability` (`METRIC_CALLBACK_SECONDS`).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from api.observability import new_meter_provider

# A scraper sends its request at once (as the health port's probes do).
HEAD_SECONDS: Final = 2.0
# How long one socket operation of the answer may wait on a slow reader.
ANSWER_SECONDS: Final = 10.0
# Scrapes served at once by one worker: a Prometheus pair, an OTLP collector's
# scraper and an engineer's curl, with room to spare.
MAX_SCRAPE_CONNECTIONS: Final = 16


class _DeadlineReader(socket.SocketIO):
    """The connection's raw reader, each receive given only what is left of the head's
    deadline: a client sending a byte now and then cannot hold its thread (a socket
    timeout alone restarts at every byte). Armed at the socket's receive, under the
    buffer (review 35c: armed once per `readline` of the buffered reader, it bounded
    nothing, that `readline` receiving again for each byte with the same timeout: one
    trickled 64 KiB header line held a thread for hours, 16 held every place)."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__(connection, "rb")
        self._connection = connection
        self._deadline = deadline

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request head took too long")
        self._connection.settimeout(left)
        return super().readinto(buffer)


class _ScrapeHandler(WSGIRequestHandler):
    """wsgiref's handler, silent, with the head's deadline."""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # socketserver's reader, replaced by one under the deadline
        self.rfile = io.BufferedReader(
            _DeadlineReader(self.connection, time.monotonic() + HEAD_SECONDS)
        )

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.connection.settimeout(ANSWER_SECONDS)  # the head is in: now the answer
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds."""


class _ScrapeServer(ThreadingWSGIServer):
    """A thread per connection, at most `MAX_SCRAPE_CONNECTIONS` at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._places = threading.BoundedSemaphore(MAX_SCRAPE_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._places.acquire(blocking=False):
            self.shutdown_request(request)  # every place held: closed, not queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._places.release()  # no thread took it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._places.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Nothing: socketserver prints a plain-text traceback to stderr for every
        connection that timed out or went away (one line each, unmasked, at the rate
        a client chooses)."""


def start_metrics_listener(
    host: str, port: int, extra_readers: Sequence[MetricReader] = ()
) -> tuple[MeterProvider, Callable[[], None]]:
    """Serve ``/metrics`` on `host`:`port` in a background thread; return the meter
    provider to record into (with `extra_readers` too, the OTLP one) and a function that
    stops the listener."""
    reader = PrometheusMetricReader()
    provider = new_meter_provider([reader, *extra_readers])

    class _Server(_ScrapeServer):
        # IPv4 or IPv6, as `host` is (prometheus_client's server did the same).
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    server = make_server(host, port, make_wsgi_app(REGISTRY), _Server, handler_class=_ScrapeHandler)
    thread = threading.Thread(target=server.serve_forever, name="cofre-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        provider.shutdown()

    return provider, stop
