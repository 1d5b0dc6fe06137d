"""Logs, traces and metrics, none of which ever holds a PAN.

IN PCI SCOPE. structlog renders JSON lines; a processor masks every PAN-like digit run in
every string of every event, as a safety net behind code that never logs one.
OpenTelemetry spans and metrics carry route templates (``/v1/tokens/{token}``), identity,
status and error code, never request bodies, raw paths or query strings.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TextIO, TypeVar

import structlog
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Tracer, TracerProvider

from cofre.errors import CofreError
from cofre.redaction import OwnDigest, mask_pan_like_or_withhold, mask_pan_values_or_withhold

# The methods HTTP defines (RFC 9110, and PATCH): the names the request metric, spans,
# log lines and audit entries give a request's method. Any other is `OTHER_METHOD`, as
# OpenTelemetry's conventions name it: h11 (the capture listener's parser, and the mTLS
# listener's when configured) takes any token up to the head's limit, and a method is
# text the caller chooses (review 29: a series per made-up method, for the life of the
# worker, and a card number sent as one was a metric label in clear).
KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD: Final = "_OTHER"


def method_name(method: str) -> str:
    """`method` as the vault records it: itself if HTTP defines it, else `OTHER_METHOD`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


# What a log value nearly always is: checked first, because `isinstance` against the
# `Mapping` ABC costs more than masking a short string (issue 21: masking was most of an
# access line's ~60 us).
_PLAIN: Final = (str, int, float, dict, list, tuple, type(None))


def _mask(value: Any) -> Any:
    # The project's one detector (strings, numbers, digit arrays); a mapping that is not
    # a dict is walked as one.
    if not isinstance(value, _PLAIN) and isinstance(value, Mapping):
        value = dict(value)
    return mask_pan_values_or_withhold(value)


def mask_pans(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask PAN-like digit runs in every value."""
    return {key: _mask(value) for key, value in event_dict.items()}


# The stdlib logger that hands structlog events to the OTLP log exporter (`api.otlp`);
# it has a handler only when logs are exported, and never prints.
EXPORT_LOGGER: Final = "cofre.otlp"
# Looked up once: `logging.getLogger` takes the logging module's lock, and a name's
# logger is the same object for the life of the process (`api.otlp` adds its handler).
_EXPORTER: Final = logging.getLogger(EXPORT_LOGGER)


def export_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor (after `mask_pans`): the event, as the JSON line it prints,
    to the OTLP log exporter when one is configured."""
    exporter = _EXPORTER
    if exporter.handlers:
        level = logging.getLevelNamesMapping().get(
            str(event_dict.get("level", "info")).upper(), logging.INFO
        )
        exporter.log(level, _exported_line(event_dict))
    return event_dict


_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"


def _exported_line(event_dict: Mapping[str, Any]) -> str:
    """The event as one JSON line, masked again as text, but for the digests the vault
    computed itself (`OwnDigest`): the printed line keeps them whole, and a policy's
    SHA-256 holds a Luhn-valid window about once in fifty."""
    own = {k: v for k, v in event_dict.items() if type(v) is OwnDigest}
    if not own:
        return mask_pan_like_or_withhold(json.dumps(event_dict, default=str, sort_keys=True))
    # Random letters: the masking leaves them as they are, and no other value of the
    # line can be the same (a logged string would otherwise receive the digest).
    stand_in = {k: "".join(secrets.choice(_LETTERS) for _ in range(24)) for k in own}
    line = json.dumps({**event_dict, **stand_in}, default=str, sort_keys=True)
    line = mask_pan_like_or_withhold(line)
    for key, text in stand_in.items():
        line = line.replace(f'"{text}"', json.dumps(str(own[key])), 1)
    return line


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, *, worker: int | None = None
) -> None:
    """Send structlog JSON lines to `stream` (stderr by default). Called by the server at
    start-up (structlog's configuration is process-wide by design). A worker of several
    passes its index: every line of the process carries it, from whichever thread (the
    committer, sequencer, purge and capture listener threads do not inherit a context
    variable bound in the main thread).

    Each line goes out in one write, newline included: `PrintLoggerFactory` prints the
    line and its newline as two writes, and with PYTHONUNBUFFERED (as containers set it)
    those are two syscalls, so the workers sharing one stderr interleave each other's
    lines and a log shipper reads two events glued together."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([] if worker is None else [_WorkerIndex(worker)]),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_pans,
            export_event,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


class _WorkerIndex:
    """A structlog processor: the line's ``worker``, unless the event names one."""

    def __init__(self, index: int) -> None:
        self._index = index

    def __call__(self, _: object, __: str, event: MutableMapping[str, Any]) -> Any:
        event.setdefault("worker", self._index)
        return event


class SecretsIdGenerator(IdGenerator):
    """Trace and span ids from the OS CSPRNG. OpenTelemetry's default draws them from the
    `random` module, which shares state with everything else in the process (and makes
    hypothesis, running beside an in-process server in the tests, rightly complain)."""

    def generate_span_id(self) -> int:
        return secrets.randbits(64) or 1

    def generate_trace_id(self) -> int:
        return secrets.randbits(128) or 1


# A request span whose status is at least this is kept whatever the sampler says.
ALWAYS_TRACED_STATUS: Final = 400


class RefusalsAlwaysSampled(sampling.Sampler):
    """`delegate`'s decision, except that a request span with a status of
    `ALWAYS_TRACED_STATUS` or more (a refusal or a failure) is always recorded: with
    ``OTEL_TRACES_SAMPLER=traceidratio`` and a small ``OTEL_TRACES_SAMPLER_ARG`` the
    successes are sampled and no error goes missing. The request guard starts its span
    when the response is known (`Telemetry.request_span`), so the status is there."""

    def __init__(self, delegate: sampling.Sampler) -> None:
        self.delegate = delegate

    def should_sample(self, *args: Any, **kwargs: Any) -> sampling.SamplingResult:
        attributes = kwargs.get("attributes") if "attributes" in kwargs else _nth(args, 4)
        status = (attributes or {}).get("http.response.status_code")
        if isinstance(status, int) and status >= ALWAYS_TRACED_STATUS:
            return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
        return self.delegate.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return f"RefusalsAlwaysSampled{{{self.delegate.get_description()}}}"


def _nth(args: tuple[Any, ...], index: int) -> Any:
    return args[index] if len(args) > index else None


def new_tracer_provider() -> SDKTracerProvider:
    """A tracer provider with CSPRNG ids and the ``OTEL_TRACES_SAMPLER`` sampler (every
    request by default) that keeps every refused or failed request; add span processors
    (exporters) to it."""
    # The SDK's own reading of OTEL_TRACES_SAMPLER(_ARG) (private, but what it does
    # itself when given no sampler).
    return SDKTracerProvider(
        id_generator=SecretsIdGenerator(),
        sampler=RefusalsAlwaysSampled(sampling._get_from_env_or_default()),
    )


def new_meter_provider(readers: Sequence[MetricReader] = ()) -> SDKMeterProvider:
    """A meter provider without exemplars: exemplar sampling draws from the shared
    `random` module on every measurement, and links metrics to traces we do not need.
    Its owner shuts it down (`cofre serve` does, within `api.otlp.TELEMETRY_STOP_SECONDS`):
    the SDK's exit hook called it a second time after a stop cut short, and logged
    "shutdown can only be called once" as the process's last line."""
    return SDKMeterProvider(
        metric_readers=list(readers),
        exemplar_filter=AlwaysOffExemplarFilter(),
        shutdown_on_exit=False,
    )


# How long one run of a gauge's callback that reads the HSM or the database answers
# every collection (`OncePer`). Session 35: each GET of the unauthenticated metrics port
# listed the HSM's keys and counted the security codes table, once per GET however many
# scrapers asked at once; now a flood of scrapes costs one run per this many seconds.
METRIC_CALLBACK_SECONDS: Final = 5.0

T = TypeVar("T")


class OncePer(Generic[T]):
    """`read`, run at most once per `seconds`: until then each call answers what the
    last run answered (its `CofreError` too: an HSM that is down is not asked again by
    every scraper). One run at a time: callers arriving during a run wait for it."""

    def __init__(
        self,
        read: Callable[[], T],
        seconds: float = METRIC_CALLBACK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, T | CofreError] | None = None

    def __call__(self) -> T:
        with self._lock:
            now = self._clock()
            if self._last is None or now - self._last[0] >= self._seconds:
                try:
                    self._last = (now, self._read())
                except CofreError as exc:
                    self._last = (now, exc)
            answer = self._last[1]
        if isinstance(answer, CofreError):
            raise answer
        return answer


@dataclass
class Telemetry:
    """The tracer and the instruments the app records into."""

    tracer: Tracer
    meter: Meter

    def __post_init__(self) -> None:
        # Requests are counted here and read by the SDK at each collection (an
        # observable counter, the same name and series as the synchronous counter it
        # replaced): `Counter.add` built a `Measurement` and walked the SDK for every
        # request, ~3% of a worker's GIL samples under load (issue 21).
        self._request_counts: dict[tuple[str, str, int, str], int] = {}
        self._request_counts_lock = threading.Lock()
        self.meter.create_observable_counter(
            "cofre.http.requests",
            callbacks=[self._observe_requests],
            description="API requests by route, status and code",
        )
        self.latency = self.meter.create_histogram(
            "cofre.http.duration", unit="ms", description="API request latency"
        )
        self.hsm_latency = self.meter.create_histogram(
            "cofre.hsm.duration", unit="ms", description="HSM call latency by operation"
        )

    def count_request(self, route: str, method: str, status: int, code: str) -> None:
        """Count one request in ``cofre.http.requests``."""
        key = (route, method, status, code)
        with self._request_counts_lock:
            self._request_counts[key] = self._request_counts.get(key, 0) + 1

    def _observe_requests(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._request_counts_lock:
            counts = list(self._request_counts.items())
        return [
            Observation(n, {"route": route, "method": method, "status": status, "code": code})
            for (route, method, status, code), n in counts
        ]

    def request_span(self, name: str, started_ns: int, attributes: dict[str, Any]) -> None:
        """Record a finished request's span, started at `started_ns` (``time.time_ns``).

        Built after the response, not around it: nothing runs inside it (no child
        spans), the status is known to the sampler, and when no span processor is
        attached (no exporter configured) nothing is built at all. Building, attaching
        and detaching a span around every request was an eighth of a worker's GIL time.
        """
        if self.traces_requests:
            self.tracer.start_span(name, start_time=started_ns, attributes=attributes).end()

    @property
    def traces_requests(self) -> bool:
        """Whether `request_span` records anything: False for the SDK's tracer with
        nothing to hand spans to (no exporter configured), so that a caller need not
        build a span's attributes for every request only to drop them (issue 21)."""
        processor = getattr(self.tracer, "span_processor", None)
        return processor is None or bool(getattr(processor, "_span_processors", True))

    def observe_unregistered_keys(self, count: Callable[[], int]) -> None:
        """Report `count()` as `cofre.hsm.unregistered_keys` at each collection: keys on
        the HSM that are not in the key registry (never used; alert on > 0). Skipped
        while the HSM or database cannot answer. Run at most once per
        `METRIC_CALLBACK_SECONDS`: it lists the HSM's keys."""
        count = OncePer(count)

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [Observation(count())]
            except CofreError:
                return []

        self.meter.create_observable_gauge(
            "cofre.hsm.unregistered_keys",
            callbacks=[observe],
            description="keys on the HSM that are not in Cofre's key registry",
        )

    def observe_key_cryptoperiods(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Report `counts()` as `cofre.keys.cryptoperiod`, one series per state (``ok``,
        ``expiring``, ``overdue``): keys in use by where they stand in their cryptoperiod
        (alert on overdue > 0, warn on expiring > 0). Skipped while the HSM or database
        cannot answer."""

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [Observation(n, {"state": state}) for state, n in counts().items()]
            except CofreError:
                return []

        self.meter.create_observable_gauge(
            "cofre.keys.cryptoperiod",
            callbacks=[observe],
            description="keys in use by cryptoperiod state (ok, expiring, overdue)",
        )

    def observe_security_codes(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Report `counts()` as `cofre.security_codes`, one series per ``count``:
        ``held``, ``used``, ``expired`` (totals since the vault's database began) and
        ``held_now``. Counts only, never a code. Skipped while the database cannot
        answer. Run at most once per `METRIC_CALLBACK_SECONDS`: ``held_now`` counts a
        whole table."""
        counts = OncePer(counts)

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [Observation(n, {"count": name}) for name, n in counts().items()]
            except CofreError:
                return []

        self.meter.create_observable_gauge(
            "cofre.security_codes",
            callbacks=[observe],
            description="card security codes held, used and expired (totals), held now",
        )

    def observe_informational_checks(self, checks: Callable[[], Mapping[str, str]]) -> None:
        """Report `checks()` (the readiness checks that inform without failing readiness:
        name -> "ok" or what fails) as `cofre.readiness.informational_failing`, one series
        per ``check``: 1 while it fails, 0 when "ok". A ready node's health port shows
        them as "ok" (docs/operations.md); this is where a failing one shows. Skipped
        while the database cannot answer. Run at most once per
        `METRIC_CALLBACK_SECONDS`: the checks read the database."""
        checks = OncePer(checks)

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                notes = checks()
            except CofreError:
                return []
            return [Observation(int(note != "ok"), {"check": n}) for n, note in notes.items()]

        self.meter.create_observable_gauge(
            "cofre.readiness.informational_failing",
            callbacks=[observe],
            description="1 while a readiness check that informs (never fails readiness) fails",
        )


def make_telemetry(
    tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
) -> Telemetry:
    """Telemetry over the given providers (fresh SDK providers with no exporter if none:
    spans and metrics are then recorded and dropped)."""
    tracer_provider = tracer_provider or new_tracer_provider()
    meter_provider = meter_provider or new_meter_provider()
    return Telemetry(
        tracer=tracer_provider.get_tracer("cofre.api"),
        meter=meter_provider.get_meter("cofre.api"),
    )
