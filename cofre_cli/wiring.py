"""Building the runtime objects from settings: database engine, HSM provider, vault
service, audit sequencer, API app and server.

IN PCI SCOPE (wiring). The only place outside `vault` that constructs `hsm` objects,
next to the CLI (import-linter allows the top layer to import every package).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import structlog
from sqlalchemy import Engine

from api._open_files_gauge import observe_open_files
from api._refusal_sieve import RefusalAllowances
from api.app import create_app, refusal_flusher
from api.crl import CrlWatcher
from api.dependencies import AppState
from api.errors import Draining
from api.lifecycle import Readiness
from api.models import EvidenceRequest
from api.observability import (
    Telemetry,
    make_telemetry,
)
from api.pki import certificate_inventory
from api.refusals import RefusalFlusher
from api.tls import TLS12_CIPHERS
from audit.archived_entries import archived_payloads
from audit.errors import AuditWriteFailed
from audit.publisher import PublisherThread
from audit.sequencer import Sequencer, SequencerThread
from cofre.errors import CofreError
from cofre.filemodes import refuse_readable_secrets, secure_data_dir
from cofre.redaction import OwnDigest
from cofre.settings import Settings
from cofre_cli._opening import open_database, open_hsm
from cofre_cli.audit_trail import crl_recorder, process_details
from cofre_cli.capture import (
    capture_app,
    capture_certificate,
    capture_origin,
    capture_tls_evidence,
)
from cofre_cli.informational import informational_checks
from cofre_cli.key_management import key_management, own_authorities
from cofre_cli.stopping import stop_runtime
from cofre_cli.witnessing import (
    observe_audit_queue,
    observe_witnesses,
    start_audit_workers,
)
from compliance.errors import ComplianceError
from compliance.export import EvidenceSources, export_bundle
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import RateLimited
from policies.loader import LoadedPolicy, load_policy
from policies.models import RateLimit, RelayRoute
from vault.cryptoperiod import CryptoperiodMonitor
from vault.key_presence import KeyPresenceCheck
from vault.officer_mfa import identities_without_mfa, officer_ports
from vault.policy_record import policy_event
from vault.purge import PurgeWorker
from vault.rotation import KeyRotation
from vault.rotation_worker import RotationWorker
from vault.service import CallContext, VaultService
from vault.signing import HSMTreeHeadSigner
from vault.storage.database import readiness_connections

_log = structlog.get_logger("cofre.vault")


@dataclass
class Runtime:
    """A running vault: everything `cofre serve` and the tests start and stop."""

    settings: Settings
    engine: Engine
    provider: HSMProvider
    service: VaultService
    sequencer: Sequencer
    sequencer_thread: SequencerThread
    rotation: KeyRotation
    rotation_worker: RotationWorker
    purge_worker: PurgeWorker
    telemetry: Telemetry
    # The ASGI app (a FastAPI instance; only `api` may name FastAPI's types).
    app: Any = field(repr=False)
    check_ready: Callable[[], dict[str, str]] = field(repr=False, default=dict)
    readiness: Readiness = field(default_factory=Readiness)

    policy_sha256: str = ""
    # The capture listener's app (hosted card fields; served when a capture port is set).
    capture_app: Any = field(repr=False, default=None)
    publisher_thread: PublisherThread | None = None  # heads -> witnesses, if any
    # Writes the counts of refused requests held past their limit (`api.refusals`).
    refusal_flusher: RefusalFlusher | None = None
    crl_watcher: CrlWatcher | None = None  # the mTLS listener's, once it records (serve)

    def reload_policy(self) -> bool:
        """Re-read the policy file and, if its text changed, record it in the audit log
        (`policy.reload`, with its hash and text) and put it in force. Returns whether it
        changed. Raises `PolicyInvalid` (the running policy stays) or `AuditWriteFailed`
        (the running policy stays: never a policy in force that the log does not show)."""
        loaded = load_policy(self.settings.policy_file)
        if loaded.sha256 == self.policy_sha256:
            return False
        self.service.replace_policy(
            PolicyEngine(loaded.policy), actor="cofre", source=loaded.source, text=loaded.text
        )
        self.policy_sha256 = loaded.sha256
        _log.info("policy reloaded", source=loaded.source, sha256=OwnDigest(loaded.sha256))
        _warn_without_mfa(self.service.policy)
        return True

    def record_crl_changes(self, watcher: CrlWatcher) -> None:
        """PCI DSS 10.2.1.5: each CRL `watcher` puts in force is a ``crl.load`` entry
        (finding F6), until `close` stops it, before ``process.stop``."""
        watcher.record_changes(crl_recorder(self.service.record, str(watcher.path)))
        self.crl_watcher = watcher

    def close(self, deadline: float | None = None) -> None:
        """Stop the workers by `deadline` (`cofre_cli.stopping`), then wipe every
        unwrapped data key (always) and close the HSM session."""
        stop_runtime(self, deadline)


def _record_start(
    service: VaultService, provider: HSMProvider, loaded: LoadedPolicy, settings: Settings
) -> None:
    """Put in the log what this process starts with, before any request is served, and
    load the PKCS#11 library (bounded) before the worker listens."""
    # Naming the process (host, pid), as its `process.stop` will: the start of a process
    # with no stop after it is one that did not stop cleanly.
    start = policy_event("policy.load", actor="cofre", source=loaded.source, text=loaded.text)
    service.record(replace(start, details={**start.details, **process_details()}))
    _warn_without_mfa(service.policy)
    adopted = threading.Event()
    failed: list[BaseException] = []

    def adopt() -> None:
        try:
            # Loaded here on every start, not only on the first, whose adoption lists the
            # keys: a restarted worker listened with the library unloaded, and its first
            # readiness check, which waits 0.5 s for a load, logged the HSM "not
            # answering" on a busy host (tests/cofre_cli/test_start_loads_library.py).
            provider.token_info()
            # The first start adopts the token's keys into the empty key registry before
            # the sequencer signs (if the HSM is down, the first request or readiness
            # check does).
            service.keyring.registry.adopt_if_empty()
        except CofreError:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised in the starting thread below
            failed.append(exc)
        adopted.set()

    # Waited for up to the start-up check's bound (COFRE_HSM__INIT_TIMEOUT_SECONDS), in
    # a thread: a library whose C_Initialize hangs (a networked HSM's cluster that does
    # not answer) held the worker here, before any listener. Past the bound the node
    # listens, unready; the thread carries on once the HSM answers.
    threading.Thread(target=adopt, name="cofre-key-adoption", daemon=True).start()
    bound = settings.hsm.init_timeout_seconds
    if not adopted.wait(bound):
        _log.warning(
            "PKCS#11 library not answering at start: listening, unready until it does",
            library=str(settings.hsm.library),
            reason=f"C_Initialize or the key listing has not returned in {bound:g} s",
        )
    elif failed:
        raise failed[0]  # as when it ran in this thread: anything but a Cofre error stops


def _warn_without_mfa(policy: PolicyEngine) -> None:
    """Say at start and on reload who cannot run ceremonies or exports for lack of an
    MFA key in the policy (an upgrade from a vault without officer MFA)."""
    missing = identities_without_mfa(policy)
    if missing:
        _log.warning("no MFA key registered (mfa_public_key): refused", identities=missing)


def _observe(
    telemetry: Telemetry,
    provider: HSMProvider,
    service: VaultService,
    periods: CryptoperiodMonitor,
    *,
    sequencer: SequencerThread,
    publisher: PublisherThread | None,
    quorum: int,
    informational: Callable[[], dict[str, str]],
) -> Telemetry:
    """Feed the HSM's latency, the key registry's stray count, the keys' cryptoperiod
    states, the audit queue, the witness publisher's failures and lag, and which of the
    `informational` readiness checks fail into `telemetry`."""
    provider.observer = lambda operation, ms: telemetry.hsm_latency.record(
        ms, {"operation": operation}
    )
    telemetry.observe_unregistered_keys(lambda: len(service.keyring.registry.unregistered()))
    telemetry.observe_key_cryptoperiods(lambda: {s.value: n for s, n in periods.counts().items()})
    telemetry.observe_security_codes(service.security_code_counts)
    observe_audit_queue(telemetry.meter, sequencer)
    observe_witnesses(telemetry.meter, publisher, quorum)
    observe_open_files(telemetry.meter)  # the limits a 503 no longer names (session 41)
    # A ready node's health port shows these as "ok" (its body only names them).
    telemetry.observe_informational_checks(informational)
    return telemetry


def _start_purge_worker(service: VaultService, settings: Settings) -> PurgeWorker:
    worker = PurgeWorker(service, interval=settings.tokens.purge_interval_seconds)
    worker.start()
    return worker


def _refuse_period(request: EvidenceRequest, max_period_days: int) -> None:
    """Raise `ComplianceError` (422 compliance_error) for a period the request alone
    refuses: inverted or empty, or longer than the export bound."""
    if request.period_to <= request.period_from:
        raise ComplianceError("the period must end after it starts")
    if request.period_to - request.period_from > timedelta(days=max_period_days):
        raise ComplianceError(
            f"the period may be at most {max_period_days} days "
            "(COFRE_EVIDENCE__MAX_PERIOD_DAYS); export longer spans as a chain"
        )


def build_runtime(
    settings: Settings,
    *,
    provider: HSMProvider | None = None,
    telemetry: Telemetry | None = None,
    sequencer_interval: float = 0.2,
    migrate_schema: bool = True,
) -> Runtime:
    """Open the database and the HSM, load the policy, start the audit sequencer and
    build the API app. The HSM may be down: the vault then starts unready and recovers
    when it comes back. Without `migrate_schema` (`cofre serve`) the schema is only
    checked."""
    readiness = Readiness()
    refuse_readable_secrets(
        [("HSM PIN file", settings.hsm.pin_file), ("TLS private key", settings.server.key_file)]
    )
    engine = open_database(settings, run_migrations=migrate_schema)
    # After the database is opened, so a store created just now is covered too.
    tightened = secure_data_dir(settings.data_dir)
    if tightened:
        _log.warning(
            "data directory permissions tightened to 0700/0600",
            data_dir=str(settings.data_dir),
            paths=[str(p) for p in tightened[:20]],
        )
    provider = provider or open_hsm(settings)
    loaded = load_policy(settings.policy_file)
    service = VaultService(
        engine,
        provider,
        PolicyEngine(loaded.policy),
        idempotency_window=timedelta(hours=settings.tokens.idempotency_key_ttl_hours),
        insecure_seal_without_domain=settings.insecure.seal_cards_without_domain,
    )
    _record_start(service, provider, loaded, settings)
    sequencer = Sequencer(
        engine,
        HSMTreeHeadSigner(provider, registry=service.keyring.registry, engine=engine),
        sign_every_entries=settings.audit.sign_every_entries,
        sign_every_seconds=settings.audit.sign_every_seconds,
        log_id=settings.audit.log_id,
    )
    thread, publisher_thread = start_audit_workers(settings, engine, sequencer, sequencer_interval)
    keys = key_management(settings, engine, provider, service)
    rotation, periods = keys.rotation, keys.periods
    worker = RotationWorker(rotation, interval=min(0.5, sequencer_interval * 2))
    worker.start()
    purge_worker = _start_purge_worker(service, settings)

    informational = informational_checks(
        thread,
        periods,
        publisher_thread,
        settings.audit.quorum,
        (purge_worker, worker),
        KeyPresenceCheck(
            engine,
            provider,
            service.keyring.registry,
            grace=settings.hsm.key_availability_timeout_seconds,
        ),
    )

    telemetry = _observe(
        telemetry or make_telemetry(),
        provider,
        service,
        periods,
        sequencer=thread,
        publisher=publisher_thread,
        quorum=settings.audit.quorum,
        informational=informational.notes,
    )

    @readiness_connections()  # the informational checks' reads too (review 36)
    def check_ready() -> dict[str, str]:
        if readiness.draining:
            raise Draining("this node is stopping")
        checks = service.check_ready()
        if not thread.alive():
            raise AuditWriteFailed(
                f"the audit sequencer is not running ({thread.last_error or 'stopped'})"
            )
        return checks | informational.for_readiness()

    bounds = settings.evidence
    export_rate = RateLimit(per_second=bounds.exports_per_hour / 3600, burst=bounds.export_burst)
    one_export = threading.Lock()

    def evidence(ctx: CallContext, request: EvidenceRequest) -> IO[bytes]:
        period = f"{request.period_from.isoformat()}/{request.period_to.isoformat()}"
        return service.evidence_export(ctx, period, lambda: bounded_build(ctx, request))

    def bounded_build(ctx: CallContext, request: EvidenceRequest) -> IO[bytes]:
        # Refusals the request alone decides come before the charge (a naive period is
        # refused by `EvidenceRequest` itself): they cost no budget.
        _refuse_period(request, bounds.max_period_days)
        # Kept in the database like every other limit: all nodes share one budget.
        service.charge_rate(f"{ctx.identity} evidence-export", export_rate)
        if not one_export.acquire(blocking=False):
            raise RateLimited("an evidence export is already running on this node", 5.0)
        try:
            return build(ctx, request)
        finally:
            one_export.release()

    def build(ctx: CallContext, request: EvidenceRequest) -> IO[bytes]:
        # An anonymous temporary file, streamed by the route and deleted when closed.
        previous = None
        if request.previous_head is not None:
            chained: dict[str, Any] = {"covering_head": request.previous_head.model_dump()}
            if request.previous_end_index is not None:
                chained["entries"] = {"end_index": request.previous_end_index}
            previous = json.dumps(chained).encode()
        return export_bundle(
            engine,
            sequencer.signer,
            sequencer,
            _evidence_sources(
                settings,
                rotation,
                keys.custody.acknowledgements,
                service.security_code_counts,
                lambda: service.policy.policy.relay_routes,
            ),
            generator=ctx.identity,
            period_from=request.period_from,
            period_to=request.period_to,
            previous_manifest=previous,
            publish=publisher_thread.publisher.publish_once if publisher_thread else None,
        )

    app = create_app(
        AppState(
            service=service,
            check_ready=check_ready,
            telemetry=telemetry,
            rotation=rotation,
            evidence=evidence,
            api_docs=settings.server.api_docs,
            capture_origin=capture_origin(settings) if settings.capture.port else None,
            capture_allow_http_localhost=settings.capture.allow_http_localhost,
            officer_mfa=keys.officer_mfa,
            custody=keys.custody,
            refusal_allowances=RefusalAllowances.from_settings(settings.audit),
        )
    )
    capture, flusher = _capture_and_refusals(settings, service, app, telemetry)
    return Runtime(
        settings,
        engine,
        provider,
        service,
        sequencer,
        thread,
        rotation,
        worker,
        purge_worker,
        telemetry,
        app,
        check_ready=check_ready,
        readiness=readiness,
        policy_sha256=loaded.sha256,
        capture_app=capture,
        publisher_thread=publisher_thread,
        refusal_flusher=flusher,
    )


def _capture_and_refusals(
    settings: Settings, service: VaultService, app: Any, telemetry: Telemetry
) -> tuple[Any, RefusalFlusher]:
    """The capture listener's app (None when no capture port is set) and the started
    writer of both apps' refusal counts (`api.refusals`)."""
    capture = capture_app(settings, service, telemetry) if settings.capture.port else None
    flusher = refusal_flusher(app, capture)
    flusher.start()
    return capture, flusher


def _evidence_sources(
    settings: Settings,
    rotation: KeyRotation,
    custody: Callable[[], list[dict[str, Any]]],
    security_codes: Callable[[datetime, datetime], dict[str, int]] | None = None,
    relay_routes: Callable[[], Mapping[str, RelayRoute]] = dict,
) -> EvidenceSources:
    server = settings.server
    cert_paths = [Path(p) for p in (server.ca_bundle, server.cert_file) if p is not None]
    clients = settings.data_dir / "pki" / "clients"
    if clients.is_dir():
        cert_paths += sorted(p for p in clients.glob("*.pem") if not p.name.endswith("-key.pem"))
    if (capture_cert := capture_certificate(settings)) is not None:
        cert_paths.append(capture_cert)
    return EvidenceSources(
        key_inventory=rotation.key_inventory,
        ceremonies=lambda: [c.as_json() for c in rotation.ceremonies()],
        settings=settings.redacted(),
        tls_settings={
            "min_tls_version": server.min_tls_version.value,
            "client_certificates": "required (CERT_REQUIRED), verified against the CA bundle",
            "crl_checking": "leaf" if server.crl_file else "off (no CRL configured)",
            "ciphers": f"{TLS12_CIPHERS} (TLS 1.2); TLS 1.3 suites",
            "compression": "off",
            "renegotiation": "off",
            # Where cards cross the internet: stated too (4.2.1; the QSA review).
            "capture_listener": capture_tls_evidence(settings),
        },
        certificates=certificate_inventory([p for p in cert_paths if p.is_file()]),
        custody=custody,
        security_codes=security_codes,
        # The names officers sign for, as `vault.officer_mfa` reads them (check 6c).
        officer_authorities=own_authorities(server.cert_file),
        officer_ports=officer_ports(server.port, server.officer_ports),
        witness_quorum=settings.audit.quorum,
        relay_routes=relay_routes,  # the policy in force at export, not at start
        archived_entries=_archived_entries(settings),
    )


def _archived_entries(
    settings: Settings,
) -> Callable[[Collection[int]], Mapping[int, str]] | None:
    """Reads retired leaves from the archive bucket (the originals of registrations
    retention carried forward, `compliance._carried`); None when no bucket is set. The
    bucket is reached at export only, with boto3's default credentials."""
    archive = settings.archive
    bucket = archive.bucket
    if not bucket:
        return None

    def read(wanted: Collection[int]) -> Mapping[int, str]:
        from infra_pci.objectstore import S3ObjectStore

        objects = S3ObjectStore(bucket, region=archive.region, endpoint_url=archive.endpoint_url)
        return archived_payloads(objects, archive.prefix, wanted)

    return read
