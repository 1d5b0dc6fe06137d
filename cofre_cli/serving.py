"""Running the vault: `cofre serve` and `cofre dev` in the foreground, as one process
or as several workers sharing the port (`cofre_cli.workers`).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import functools
import gc
import logging
import logging.config
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import structlog

from api.balance import Counts, WorkerLoads
from api.health import build_health_server
from api.lifecycle import run_until_stopped
from api.metrics import start_metrics_listener
from api.observability import (
    Telemetry,
    configure_logging,
    make_telemetry,
    new_meter_provider,
    new_tracer_provider,
)
from api.otlp import TELEMETRY_STOP_SECONDS, otlp_from_env, stop_within
from api.server import TLSFiles, build_server, log_config, reload_server_certificate
from cofre.errors import ConfigurationError
from cofre.redaction import OwnDigest
from cofre.settings import Settings
from cofre_cli._listeners import check_listener_ports, claim_listener_ports
from cofre_cli._open_files import raise_open_files
from cofre_cli._opening import open_database
from cofre_cli._production import production_checks, refusing_software_tokens
from cofre_cli._ready_signal import announce_when_ready
from cofre_cli.capture import capture_places, start_capture_listener
from cofre_cli.stopping import stop_deadline
from cofre_cli.wiring import build_runtime
from cofre_cli.workers import NodeReadiness, Stamps, run_workers, worker_count
from policies.loader import load_policy

_log = structlog.get_logger("cofre.vault")


# See `serve_worker`: the cyclic collector's young-generation threshold in a worker.
_YOUNG_COLLECTION_THRESHOLD: Final = 10_000


def _configure_logs(level: str, worker: int | None) -> None:
    """Every line the process writes as masked JSON from its first: structlog's, and
    the stdlib's root logger and `warnings` (SQLAlchemy's, pydantic's serializer
    warnings quote the input), before the exporters, the database and the HSM start;
    uvicorn applies the same `log_config` again when its servers are built."""
    configure_logging(level, worker=worker)
    logging.captureWarnings(True)
    logging.config.dictConfig(log_config(level, worker=worker))


def serve(
    settings: Settings,
    *,
    migrate_schema: bool = False,
    production: bool = True,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the vault API (and the health listener, when a port is set) in the foreground
    until SIGTERM or SIGINT, drain (`api.lifecycle`), then wipe the keys and close the
    HSM session. In `production` (`cofre serve`) the settings are checked first
    (`production_checks`); only `cofre dev` passes `migrate_schema` (production runs
    `cofre db migrate` first, as the owner role). With more than one worker
    (``server.workers``, default one per core) each runs in its own process
    (`cofre_cli.workers`); raises `SystemExit` with the node's status when one failed.
    `on_ready` is called once, when every worker accepts connections and passes its
    readiness check (`cofre_cli._ready_signal`): `cofre dev` prints its banner then."""
    _configure_logs(settings.log_level, None)
    # Before anything opens a descriptor or reads the limit: the workers inherit it, and
    # their descriptor bounds are shares of it (`cofre_cli._open_files`, session 38).
    raise_open_files()
    allowed = production_checks(settings) if production else []
    if production:
        settings = refusing_software_tokens(settings)
    policy = load_policy(settings.policy_file)
    workers = worker_count(settings)
    check_listener_ports(settings, workers)
    if settings.capture.port:
        # Here, not only in each worker: there a refusal was a traceback per worker.
        capture_places(settings)
    _log.info(
        "starting",
        mode="production" if production else "dev",
        configuration=settings.redacted(),
        policy_source=policy.source,
        policy_sha256=OwnDigest(policy.sha256),
        workers=workers,
    )
    for name in allowed:
        _log.warning("INSECURE setting in effect", setting=f"COFRE_INSECURE__{name.upper()}")

    def ready() -> None:
        _log.info("ready: every worker answers", workers=workers)
        if on_ready is not None:
            on_ready()

    with claim_listener_ports(settings, workers):
        if workers == 1:
            serve_worker(settings, None, migrate_schema=migrate_schema, ready=ready)
            return
        if migrate_schema:
            # Once, here, before the workers open the store.
            open_database(settings, run_migrations=True).dispose()
        status = run_workers(settings, workers, serve_worker, on_ready=ready)
    if status:
        raise SystemExit(status)


def serve_worker(
    settings: Settings,
    index: int | None,
    stamps: Stamps | None = None,
    loads: Counts | None = None,
    ready: Callable[[], None] | None = None,
    *,
    migrate_schema: bool = False,
) -> None:
    """One serving process: its own runtime (HSM sessions, database pool, group
    committer, sequencer and purge threads) and listeners. `index` is None for a node of
    one process; a numbered worker shares the API and health ports (SO_REUSEPORT),
    answers the health listener's ``/readyz`` for the whole node through `stamps`
    (`cofre_cli.workers.NodeReadiness`), publishes its requests in flight in `loads` and
    sheds a connection when busier than another worker (`api.balance`), and serves its
    own Prometheus listener on the metrics port + `index`. Once it answers, it calls
    `ready` (a numbered worker's, from `cofre_cli.workers`, tells its supervisor)."""
    if index is not None:
        _configure_logs(settings.log_level, index)
    server = settings.server
    telemetry, stop_telemetry = start_telemetry(settings, os.environ, worker=index or 0)
    try:
        runtime = build_runtime(settings, migrate_schema=migrate_schema, telemetry=telemetry)
    except BaseException:
        stop_telemetry()
        raise
    stop_by: float | None = None  # set once the listeners have stopped
    try:
        api = build_server(
            runtime.app,
            server.host,
            server.port,
            tls_files(settings),
            min_tls_version=server.min_tls_version.value,
            log_level=settings.log_level,
            graceful_timeout=server.drain_timeout_seconds,
            crl_reload_seconds=server.crl_reload_seconds,
            header_timeout=server.header_timeout_seconds,
            body_timeout=server.body_timeout_seconds,
            max_connections_per_identity=server.max_connections_per_identity,
            load_balancers=tuple(server.load_balancers),
            http_protocol=server.http_protocol,
            reuse_port=index is not None,
            loads=_balancer(runtime.telemetry, index, loads),
            worker=index,
        )
        watcher = api.crl_watcher
        check_ready = runtime.check_ready
        if watcher is not None:
            # PCI DSS 10.2.1.5: each CRL this process puts in force, once (finding F6).
            runtime.record_crl_changes(watcher)
            check_ready = functools.partial(_with_crl, runtime.check_ready, watcher.check)
        # Its own check (not the node's): the supervisor hears from every worker.
        api.on_started = announce_when_ready(check_ready, runtime.readiness, ready or _nothing)
        health = None
        node: NodeReadiness | None = None
        stop_beats: Callable[[], None] = _nothing
        if server.health_port is not None:
            if index is not None and stamps is not None:
                # The probe reaches one worker; it answers for all of them. (The mTLS
                # /readyz stays the worker's own: it answers for the connection's worker.)
                node = NodeReadiness(stamps, index, check_ready, serving_loop=True)
                check_ready = node.check
                stop_beats = node.start()
            health = build_health_server(
                check_ready,
                runtime.readiness,
                server.health_host,
                server.health_port,
                log_config=log_config(settings.log_level, worker=index),
                reuse_port=index is not None,
            )
        reloads: list[Callable[[], object]] = [
            runtime.reload_policy,
            functools.partial(reload_server_certificate, api, tls_files(settings)),
        ]
        if watcher is not None:
            reloads.append(watcher.reload)
        capture_server = start_capture_listener(
            settings, runtime.capture_app, worker=index, telemetry=runtime.telemetry
        )
        # What start-up built lives as long as the process: frozen out of the cyclic
        # collector's sight, its full collections walk only what requests allocate
        # (a batch of 1,000 allocates enough to trigger several, and each walked the
        # whole heap of SQLAlchemy, FastAPI, pydantic and OpenTelemetry objects).
        # Collected first, so start-up's garbage in cycles is freed, not pinned for life.
        gc.collect()
        gc.freeze()
        # And the young generation collected every 10,000 net allocations, not 700: a
        # request's objects mostly die by reference count before a collection sees them,
        # so fewer collections walk fewer of them (bench/levers.md, session 32: batch
        # CPU per PAN lower in 7 of 8 alternating pairs, ~4%). Cyclic garbage waits a
        # little longer: at most 10,000 young objects.
        gc.set_threshold(_YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        try:
            run_until_stopped(
                api,
                health,
                runtime.readiness,
                drain_delay=server.drain_delay_seconds,
                on_reload=functools.partial(_reload_all, *reloads),
                telemetry=runtime.telemetry,
                on_loop=node.attach if node is not None else None,
            )
        finally:
            # One deadline for the whole stop from here (`cofre_cli.stopping`).
            stop_by = stop_deadline()
            stop_beats()
            if capture_server is not None:
                capture_server.stop(timeout=max(0.0, stop_by - time.monotonic()))
    finally:
        runtime.close(stop_by)
        stop_telemetry()  # after close: its last log lines are exported too


def _balancer(telemetry: Telemetry, index: int | None, loads: Counts | None) -> WorkerLoads | None:
    """Worker `index`'s slot in the node's requests in flight (`api.balance`), its
    closes counted as ``cofre.connections.rebalanced``; None for a node of one process."""
    if index is None or loads is None:
        return None
    closes = telemetry.meter.create_counter(
        "cofre.connections.rebalanced",
        description="Connections closed after an answer to even out the node's workers",
    )
    return WorkerLoads(loads, index, on_close=lambda: closes.add(1))


def start_telemetry(
    settings: Settings, environ: Mapping[str, str], *, worker: int = 0
) -> tuple[Telemetry, Callable[[], None]]:
    """Telemetry for `serve`: the OTLP exporters `environ`'s OTEL_* variables ask for
    (`api.otlp`) and the Prometheus scrape listener when a metrics port is set (worker
    N of several on the metrics port + N: each worker's counters are its own, and one
    port answering for a random worker would make them jump). Returns it and the
    function that flushes and stops it."""
    otlp = otlp_from_env(environ)
    server = settings.server
    stop_metrics: Callable[[], None] | None = None
    if server.metrics_port is not None:
        meter_provider, stop_metrics = start_metrics_listener(
            server.metrics_host, server.metrics_port + worker, otlp.metric_readers
        )
    else:
        meter_provider = new_meter_provider(otlp.metric_readers)
    tracer_provider = new_tracer_provider()  # the sampler comes from OTEL_TRACES_SAMPLER
    if otlp.span_processor is not None:
        tracer_provider.add_span_processor(otlp.span_processor)

    def stop() -> None:
        # All signals at once, within one budget: a collector that never answers
        # must not hold the stop past the pod's grace period (`api.otlp.stop_within`).
        late = stop_within(
            TELEMETRY_STOP_SECONDS,
            {
                "traces": tracer_provider.shutdown,
                "metrics": stop_metrics or meter_provider.shutdown,
                "logs": otlp.shutdown,
            },
        )
        if late:
            _log.warning("telemetry export cut short", signals=late, seconds=TELEMETRY_STOP_SECONDS)

    return make_telemetry(tracer_provider, meter_provider), stop


def _with_crl(check_ready: Callable[[], dict[str, str]], crl: Callable[[], None]) -> dict[str, str]:
    """The runtime's readiness plus the CRL's (the plain-HTTP health listener's view)."""
    checks = check_ready()
    crl()
    checks["crl"] = "ok"
    return checks


def _nothing() -> None:
    pass


def _reload_all(*reloads: Callable[[], object]) -> None:
    """SIGHUP: every reload, the CRL's even when the policy's fails."""
    errors: list[Exception] = []
    for reload in reloads:
        try:
            reload()
        except Exception as exc:  # noqa: BLE001 - re-raised after the others ran
            errors.append(exc)
    if errors:
        raise errors[0]


def tls_files(settings: Settings) -> TLSFiles:
    server = settings.server
    if server.cert_file is None or server.key_file is None or server.ca_bundle is None:
        raise ConfigurationError(
            "set COFRE_SERVER__CERT_FILE, COFRE_SERVER__KEY_FILE and COFRE_SERVER__CA_BUNDLE"
        )
    return TLSFiles(
        cert=Path(server.cert_file),
        key=Path(server.key_file),
        ca_bundle=Path(server.ca_bundle),
        crl=server.crl_file,
    )
