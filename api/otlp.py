"""OTLP export of traces, metrics and logs, configured by the standard ``OTEL_*``
environment variables.

IN PCI SCOPE (it runs in the vault process). What leaves is what `api.observability`
records: spans and metrics by route template, status, code and identity, and the
structlog events after their PAN masking; never a body, raw path or PAN.

Which signals are exported: ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER`` and
``OTEL_LOGS_EXPORTER`` (``otlp`` or ``none``). When one is unset it is ``otlp`` if an
OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the signal's own
``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT``), else ``none``: a vault with no collector does
not retry against localhost forever. ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks
``http/protobuf`` (the default) or ``grpc``; endpoints, headers, timeouts, compression,
``OTEL_METRIC_EXPORT_INTERVAL`` and the batch processors' ``OTEL_BSP_*`` /
``OTEL_BLRP_*`` are read by the OpenTelemetry SDK itself, as is the sampler
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``; `new_tracer_provider`).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from api._otlp_session import otlp_session
from api.observability import EXPORT_LOGGER
from cofre.errors import ConfigurationError

SIGNALS: Final = ("traces", "metrics", "logs")


def _wanted(signal: str, environ: Mapping[str, str]) -> bool:
    chosen = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if not chosen:
        return bool(
            environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        )
    if chosen == "none":
        return False
    if chosen != "otlp":
        raise ConfigurationError(
            f"OTEL_{signal.upper()}_EXPORTER={chosen!r}: Cofre exports with 'otlp' or 'none'"
        )
    return True


def _protocol(signal: str, environ: Mapping[str, str]) -> str:
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in {"http/protobuf", "grpc"}:
        raise ConfigurationError(
            f"OTLP protocol {protocol!r} is not supported: use 'http/protobuf' or 'grpc'"
        )
    return protocol


def _exporter(signal: str, protocol: str, environ: Mapping[str, str]) -> Any:
    # Imported on demand: the gRPC stack loads only when it is asked for.
    if protocol == "grpc":
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            return OTLPSpanExporter()
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
                OTLPMetricExporter,
            )

            return OTLPMetricExporter()
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # noqa: PLC0415
            OTLPLogExporter,
        )

        return OTLPLogExporter()
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HTTPSpanExporter,
        )

        return HTTPSpanExporter(session=_session(signal, environ))
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as HTTPMetricExporter,
        )

        return HTTPMetricExporter(session=_session(signal, environ))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # noqa: PLC0415
        OTLPLogExporter as HTTPLogExporter,
    )

    return HTTPLogExporter(session=_session(signal, environ))


def _session(signal: str, environ: Mapping[str, str]) -> Any:
    """The OTLP/HTTP exporters' session: no key log, and no CA file from the
    environment but the collector's own (`api._otlp_session`, review 35)."""
    try:
        return otlp_session(signal, environ)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"the OTLP collector's CA file cannot be loaded ({type(exc).__name__})"
        ) from None


_SEVERITY: Final = {
    logging.DEBUG: SeverityNumber.DEBUG,
    logging.INFO: SeverityNumber.INFO,
    logging.WARNING: SeverityNumber.WARN,
    logging.ERROR: SeverityNumber.ERROR,
    logging.CRITICAL: SeverityNumber.FATAL,
}


class _ExportHandler(logging.Handler):
    """Hands each record (a structlog event rendered as JSON, PANs masked) to the OTLP
    logger as its body. The SDK's own LoggingHandler is deprecated in favour of a
    package we do not need for one line."""

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__()
        self._logger = provider.get_logger("cofre")

    def emit(self, record: logging.LogRecord) -> None:
        self._logger.emit(
            timestamp=int(record.created * 1e9),
            severity_number=_SEVERITY.get(record.levelno, SeverityNumber.INFO),
            severity_text=record.levelname,
            body=record.getMessage(),
        )


@dataclass
class OtlpExport:
    """What to plug into the providers (each None when that signal is not exported)."""

    span_processor: SpanProcessor | None = None
    metric_reader: MetricReader | None = None
    logger_provider: LoggerProvider | None = None
    _handler: logging.Handler | None = field(default=None, repr=False)

    @property
    def metric_readers(self) -> list[MetricReader]:
        return [self.metric_reader] if self.metric_reader is not None else []

    def shutdown(self) -> None:
        """Flush and stop the log export (spans and metrics are flushed by their
        providers' shutdown)."""
        if self._handler is not None:
            logging.getLogger(EXPORT_LOGGER).removeHandler(self._handler)
        if self.logger_provider is not None:
            self.logger_provider.shutdown()


def otlp_from_env(environ: Mapping[str, str]) -> OtlpExport:
    """Build the exporters `environ` asks for (see the module text).

    Raises `ConfigurationError` for an exporter or protocol Cofre does not offer.
    """
    export = OtlpExport()
    if _wanted("traces", environ):
        export.span_processor = BatchSpanProcessor(
            _exporter("traces", _protocol("traces", environ), environ)
        )
    if _wanted("metrics", environ):
        export.metric_reader = PeriodicExportingMetricReader(
            _exporter("metrics", _protocol("metrics", environ), environ)
        )
    if _wanted("logs", environ):
        provider = LoggerProvider()
        provider.add_log_record_processor(
            BatchLogRecordProcessor(_exporter("logs", _protocol("logs", environ), environ))
        )
        handler = _ExportHandler(provider)
        logger = logging.getLogger(EXPORT_LOGGER)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # exported only, never printed twice
        export.logger_provider, export._handler = provider, handler
    return export


# How long a stopping vault waits for its last spans, metrics and log lines to leave,
# all signals together. Session 35: with a collector that accepts connections and never
# answers, each signal's flush waited out the SDK's own limits (its export timeout,
# ``OTEL_EXPORTER_OTLP_TIMEOUT``, per batch, up to 30 s per signal), one signal after
# another: about 90 s, past the pod's termination grace period (deploy/k8s gives the
# key wipe, the HSM logout and this flush 15 s), so every stop ended in SIGKILL.
TELEMETRY_STOP_SECONDS: Final = 5.0


def stop_within(seconds: float, stops: Mapping[str, Callable[[], None]]) -> list[str]:
    """Run each of `stops` (by name) at once, each in a daemon thread, and wait for
    them at most `seconds` in all. Returns the names of those still running (their
    unsent telemetry is lost when the process exits; the SDK's exit hooks find them
    already shut down and return at once)."""
    threads = {
        name: threading.Thread(target=stop, name=f"cofre-stop-{name}", daemon=True)
        for name, stop in stops.items()
    }
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    return [name for name, thread in threads.items() if thread.is_alive()]
