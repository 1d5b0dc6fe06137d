"""A small OTLP/HTTP receiver on loopback: what a collector would get from the vault.

It accepts ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` (protobuf, optionally
gzip), decodes each request with the OTLP protobuf messages and keeps it as JSON, and
writes the strings of everything it got to ``received.txt`` in its directory, where the
session's PAN leak scan reads them (tests/support/leakguard.py). Numeric OTLP fields
(nanosecond timestamps, counts, sums, bucket bounds) and the random trace and span ids
are left out of that text: they are digit noise, one in ten of them Luhn-valid, and a
PAN cannot reach them (they are numbers the SDK computes)."""

from __future__ import annotations

import gzip
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.leakscan import json_strings

_NUMERIC = re.compile(r"(UnixNano|[cC]ounts?|[sS]um|[mM]in|[mM]ax|Bounds|[tT]raceId|[sS]panId)$")


def scannable(value: Any) -> Any:
    """`value` without the numeric fields and ids (see the module text)."""
    if isinstance(value, dict):
        return {k: scannable(v) for k, v in value.items() if not _NUMERIC.search(k)}
    if isinstance(value, list):
        return [scannable(v) for v in value]
    return value


_MESSAGES: dict[str, Any] = {
    "/v1/traces": ExportTraceServiceRequest,
    "/v1/metrics": ExportMetricsServiceRequest,
    "/v1/logs": ExportLogsServiceRequest,
}


@dataclass
class OtlpReceiver:
    directory: Path
    received: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {path: [] for path in _MESSAGES}
    )
    port: int = 0

    def start(self) -> None:
        receiver = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                message_type = _MESSAGES.get(self.path)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if message_type is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                message = message_type()
                message.ParseFromString(body)
                decoded = MessageToDict(message)
                with lock:
                    receiver.received[self.path].append(decoded)
                    with (receiver.directory / "received.txt").open("a") as out:
                        out.writelines(s + "\n" for s in json_strings(scannable(decoded)))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        self.directory.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        """The strings of everything received (what the leak scan reads)."""
        return "\n".join(json_strings(scannable(self.received)))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
