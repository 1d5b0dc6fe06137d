"""Typed configuration: ``COFRE_*`` environment variables, then an optional TOML file.

IN PCI SCOPE. Precedence, highest first: explicit constructor arguments, environment
variables (``COFRE_HSM__LIBRARY`` for nested fields), the TOML file named by
``COFRE_CONFIG``, then defaults. Secrets (the HSM user PIN) come from an environment
variable or a file path and are held as `pydantic.SecretStr`, so neither `repr` nor
`str` nor `model_dump_json` shows them. There is deliberately no CLI flag for a secret:
command lines are visible to every user of the machine through ``/proc``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cofre._secret_file import _read_secret_file
from cofre.errors import ConfigurationError
from cofre.origins import every_interface, listener_origin

DEFAULT_SOFTHSM_LIBRARY = Path("/usr/lib/softhsm/libsofthsm2.so")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HSMSettings(_Section):
    """Where the PKCS#11 token is and how to log in to it."""

    library: Path = DEFAULT_SOFTHSM_LIBRARY
    token_label: str = "cofre"  # noqa: S105 - a token label, not a secret
    # One of `pin` (from COFRE_HSM__PIN) or `pin_file` must be set to use the HSM.
    pin: SecretStr | None = None
    pin_file: Path | None = None
    # SoftHSM only: the softhsm2.conf this process must use. Ignored for CloudHSM.
    softhsm_conf: Path | None = None
    # Sessions a node keeps open to the token; calls on different sessions run at once,
    # so a networked HSM (a round trip per call) does not serialise the node. CloudHSM
    # allows 1,024 sessions per application. libsofthsm2 always gets 1 (hsm/session.py).
    session_pool_size: int = Field(default=8, ge=1, le=1024)
    # How long a call waits, retrying with backoff, for a key the token refuses as not
    # yet available (a new CloudHSM key syncing to a quorum of HSMs); then 503.
    key_availability_timeout_seconds: float = Field(default=5.0, ge=0, le=300)
    # How long `cofre serve` waits at start for the library's C_Initialize (its identity
    # check, then each worker's first key adoption) before it listens, unready: twice it is
    # well inside the startup probe's patience (deploy/k8s: 60 probes 2 s apart). At
    # most an hour: past time_t, the waits on it raised OverflowError (review 33).
    init_timeout_seconds: float = Field(default=15.0, gt=0, le=3600, allow_inf_nan=False)
    # Refuse a library that says it is SoftHSM whenever a session opens: `cofre serve`
    # sets it unless COFRE_INSECURE__ALLOW_SOFTWARE_HSM is (cofre_cli/_production.py).
    refuse_software_token: bool = False

    def read_pin(self) -> SecretStr:
        """Return the user PIN from `pin` or `pin_file`.

        Raises `ConfigurationError` if neither is set or the file cannot be read; the
        message names the file, never its content.
        """
        if self.pin is not None:
            return self.pin
        if self.pin_file is None:
            raise ConfigurationError(
                "no HSM PIN configured: set COFRE_HSM__PIN or COFRE_HSM__PIN_FILE"
            )
        try:
            text = self.pin_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the HSM PIN file {self.pin_file}: {exc.strerror}"
            ) from None
        if not text:
            raise ConfigurationError(f"the HSM PIN file {self.pin_file} is empty")
        return SecretStr(text)


class DatabaseSettings(_Section):
    """The token store. SQLite is the embedded default; PostgreSQL for production."""

    # None (and no url_file) means "<data_dir>/cofre.sqlite3".
    url: SecretStr | None = None
    # A file holding the URL (a Kubernetes secret volume), instead of `url`.
    url_file: Path | None = None
    # The password, put into the URL at connect time (the URL then carries none).
    password: SecretStr | None = None
    password_file: Path | None = None
    # RDS IAM authentication: a fresh 15-minute token per new connection (boto3, through
    # `infra_pci`); the URL names host, port and user, and should require TLS.
    iam_auth: bool = False
    iam_region: str | None = None
    pool_size: int = Field(default=10, ge=1, le=200)
    # PostgreSQL: the longest any one statement may run before the operation fails.
    statement_timeout_ms: int = Field(default=5000, ge=100, le=600_000)

    @model_validator(mode="after")
    def _one_source_each(self) -> DatabaseSettings:
        if self.url is not None and self.url_file is not None:
            raise ValueError("set only one of COFRE_DATABASE__URL and COFRE_DATABASE__URL_FILE")
        if self.password is not None and self.password_file is not None:
            raise ValueError(
                "set only one of COFRE_DATABASE__PASSWORD and COFRE_DATABASE__PASSWORD_FILE"
            )
        if self.iam_auth and (self.password is not None or self.password_file is not None):
            raise ValueError("COFRE_DATABASE__IAM_AUTH replaces the password: set no password")
        return self

    def read_password(self) -> str | None:
        """The password from `password` or `password_file` (None when neither is set).

        Raises `ConfigurationError` naming the file, never its content.
        """
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        return _read_secret_file(self.password_file, "database password")


class TLSVersion(StrEnum):
    TLS1_2 = "1.2"
    TLS1_3 = "1.3"


class ServerSettings(_Section):
    """The mTLS listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    # API worker processes, each with its own HSM sessions, database pool and group
    # committer, sharing the port (SO_REUSEPORT). None: one per CPU core. One Python
    # process is bound by its GIL to one core (docs/operations.md, Sizing).
    workers: int | None = Field(default=None, ge=1, le=256)
    # TLS 1.3 unless 1.2 is set explicitly (for clients that cannot do 1.3 yet).
    min_tls_version: TLSVersion = TLSVersion.TLS1_3
    ca_bundle: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    crl_file: Path | None = None
    # The ports officers' signed requests may name in their Host (`@authority`,
    # vault.officer_mfa): the port they dial. None: 443 (a load balancer or proxy on the
    # standard port) and `port`. Set it when officers come in by another port (a
    # port-forward, a proxy on 9443), or to one port when two vaults share a host name.
    officer_ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(
        default=None, min_length=1
    )
    # Read deadlines for a request (headers, then body), and the most connections one
    # client identity may hold open (a busy client's pool holds hundreds).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_connections_per_identity: int = Field(default=2000, ge=1)
    # The HTTP/1.1 parser: httptools (llhttp, in C) or h11 (pure Python, a few times the
    # CPU per request; kept as a fallback). Both get the same limits (api.connections).
    http_protocol: Literal["httptools", "h11"] = "httptools"
    # How often the CRL file is checked for a change (it is also reloaded on SIGHUP).
    crl_reload_seconds: float = Field(default=30.0, gt=0, le=3600)
    # /docs and /openapi.json: the whole API surface for any identity. `cofre dev` turns
    # them on; production leaves them off (docs/openapi.json is the same document).
    api_docs: bool = False
    # The plain-HTTP health listener (/livez, /readyz only: no card data, no identity)
    # for probes that cannot present a client certificate (the kubelet's). Off when no
    # port is set.
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=1, le=65535)
    # Prometheus `/metrics` (plain HTTP, no card data); off when no port is set.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # On SIGTERM or SIGINT: readiness fails at once, new connections are still accepted
    # for `drain_delay_seconds` (while load balancers notice), then the listener closes
    # and in-flight requests get up to `drain_timeout_seconds` to finish.
    drain_delay_seconds: float = Field(default=0.0, ge=0, le=300)
    drain_timeout_seconds: int = Field(default=25, gt=0, le=3600)
    # The addresses of load balancers that terminate TCP in front of this listener: a
    # connection from them is held to the TLS handshakes under way in all, not to one
    # address's share (session 39: all their clients are one address). Empty: none.
    load_balancers: list[IPvAnyNetwork] = Field(default=[], max_length=64)

    @model_validator(mode="after")
    def _balancers_are_not_everyone(self) -> ServerSettings:
        if any(network.prefixlen == 0 for network in self.load_balancers):
            raise ValueError("load_balancers cannot hold every address (a /0)")
        for network in self.load_balancers:  # peers are compared as IPv4 (rev39c)
            mapped = getattr(network.network_address, "ipv4_mapped", None)
            if mapped is not None:
                raise ValueError(f"load_balancers: write {network} as an IPv4 network")
        return self


class WitnessSettings(_Section):
    """One witness the vault publishes its checkpoints to (c2sp.org/tlog-witness)."""

    # The witness's submission prefix: `<url>/add-checkpoint` is called.
    url: str = Field(min_length=1)
    # Its cosignature/v1 verifier key, pinned: a cosignature by any other key is ignored.
    vkey: str = Field(min_length=1)
    # For an https URL whose certificate is not under certifi's public CAs.
    ca_file: Path | None = None


def _key_material(vkey: str) -> str:
    """A vkey's key part (``<name>+<id>+<base64 key>``), its name and ID aside; the whole
    text, stripped, when it is not so shaped (the vault refuses it when it loads it)."""
    parts = vkey.strip().split("+", 2)
    return parts[2] if len(parts) == 3 else vkey.strip()


class AuditSettings(_Section):
    """When the sequencer signs a tree head, and the witnesses that cosign it."""

    sign_every_entries: int = Field(default=1000, ge=1)
    sign_every_seconds: float = Field(default=10.0, gt=0)
    # The checkpoint origin is `cofre-audit/<log_id>`: unique per vault on a witness.
    log_id: str = Field(default="cofre", pattern=r"^[A-Za-z0-9._/:-]{1,100}$")
    # COFRE_AUDIT__WITNESSES='[{"url": "...", "vkey": "..."}]' or [[audit.witnesses]].
    witnesses: tuple[WitnessSettings, ...] = ()
    # Cosignatures a head needs to count as witnessed (readiness, export's choice of
    # covering head); auditors set their own with `--quorum`. Unset: more than half of
    # the witnesses (`quorum`).
    witness_quorum: int | None = Field(default=None, ge=1)
    # How often the publisher looks for a head its witnesses have not cosigned yet.
    publish_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    # How long the oldest queued entry may wait before readiness names the stall.
    queue_stall_seconds: float = Field(default=60.0, gt=0)

    @property
    def quorum(self) -> int:
        """`witness_quorum`, or more than half of the distinct witnesses (1 for none)."""
        if self.witness_quorum is not None:
            return self.witness_quorum
        return self._distinct_witnesses() // 2 + 1

    def _distinct_witnesses(self) -> int:
        """How many distinct witness keys are listed: by key material, as every verifier
        counts them (`audit.note.require_quorum`), not by the vkey text. A key listed
        under two names is one witness: its cosignature does not sign its name, and the
        verifiers count it once (review 30c: counted twice here, a default quorum its
        one key can never meet)."""
        return len({_key_material(w.vkey) for w in self.witnesses})

    @model_validator(mode="after")
    def _a_majority(self) -> AuditSettings:
        # Every evidence verifier refuses a quorum of half the witnesses or fewer (a
        # witness the operator keeps behind cosigns a rewrite: review 30); a vault set
        # so would prefer, for its exports, heads those verifiers then refuse.
        distinct = self._distinct_witnesses()
        if self.witness_quorum is not None and 2 * self.witness_quorum <= distinct:
            raise ValueError(
                f"witness_quorum {self.witness_quorum} is not more than half of the "
                f"{distinct} witnesses: set it to {distinct // 2 + 1} or more, or unset it"
            )
        return self


class ArchiveSettings(_Section):
    """Where `cofre audit archive` ships sealed segments, and how long the log stays
    online (PCI DSS 10.5.1: twelve months kept, the last three immediately available).

    S3 credentials are never settings: boto3's default chain (IRSA, instance profile,
    ``AWS_*`` variables). `total_retention_months` is what `cofre audit archive` locks
    each object it puts for (S3 Object Lock, compliance mode, from its upload), after
    refusing a bucket without Object Lock or with a lifecycle rule expiring the archive
    sooner (`infra_pci.objectstore`); the bucket enforces the lock.
    """

    bucket: str | None = None
    prefix: str = "cofre-audit/"
    region: str | None = None
    # An S3-compatible endpoint: a VPC endpoint, MinIO, or moto's server in tests.
    endpoint_url: str | None = None
    segment_max_entries: int = Field(default=1_000_000, ge=1)
    online_retention_months: int = Field(default=3, ge=1, le=120)
    total_retention_months: int = Field(default=12, ge=12, le=1200)

    @model_validator(mode="after")
    def _online_within_total(self) -> ArchiveSettings:
        if self.online_retention_months > self.total_retention_months:
            raise ValueError("online_retention_months exceeds total_retention_months")
        return self


class EvidenceSettings(_Section):
    """Bounds on evidence exports: each reads the audit log of its period and signs a
    manifest with the HSM, so a period of decades or an export loop is a denial of
    service."""

    max_period_days: int = Field(default=31, ge=1, le=366)
    # Per identity: a bucket of `burst` exports refilled at `per_hour`; and one export
    # at a time per node.
    # The bounds of `policies.models.RateLimit` (one a day to 10^6 a second).
    exports_per_hour: float = Field(default=12.0, ge=1 / 24, le=3.6e9)
    export_burst: int = Field(default=3, ge=1, le=1_000_000_000)


# The longest a rotation proposal may live (7 days). The offline verifier's check 6c
# never trusts a longer life whatever a bundle's config/settings.json says (review 27
# A3: an unbounded life let a past ceremony's genuine signatures start a rotation
# today); `cofre_evidence_verifier.dual_control.MAX_PROPOSAL_TTL_HOURS` is this number.
MAX_PROPOSAL_TTL_HOURS: Final = 168


class KeySettings(_Section):
    """Key ceremonies."""

    proposal_ttl_hours: float = Field(default=24.0, gt=0, le=MAX_PROPOSAL_TTL_HOURS)
    # How long an old KEK or fingerprint key stays on the token after migration, before
    # it is destroyed (a window to roll back from backups).
    destroy_grace_seconds: float = Field(default=7 * 24 * 3600, ge=0)
    # How long database backups are kept (RDS automated backups default to 7 days). A
    # restored backup needs the KEK that wrapped its data keys, so the destroy grace may
    # not be shorter than this.
    backup_retention_seconds: float = Field(default=7 * 24 * 3600, ge=0)
    # Cryptoperiods per key kind, in days (NIST SP 800-57 Part 1 Table 1; the reasons for
    # each default are in docs/key-ceremony.md), and the warning window before each ends.
    cryptoperiod_kek_days: float = Field(default=365.0, gt=0)
    cryptoperiod_data_days: float = Field(default=365.0, gt=0)
    cryptoperiod_fingerprint_days: float = Field(default=730.0, gt=0)
    cryptoperiod_audit_days: float = Field(default=730.0, gt=0)
    cryptoperiod_warn_days: float = Field(default=30.0, ge=0)
    # An overdue key is reported by readiness and a metric; it fails readiness only when
    # this is true (taking every node out of service for a compliance finding is usually
    # worse than the finding: see docs/key-ceremony.md).
    overdue_fails_readiness: bool = False

    @model_validator(mode="after")
    def _grace_covers_backups(self) -> KeySettings:
        if self.destroy_grace_seconds < self.backup_retention_seconds:
            raise ValueError(
                f"COFRE_KEYS__DESTROY_GRACE_SECONDS ({self.destroy_grace_seconds:g}) is shorter "
                f"than COFRE_KEYS__BACKUP_RETENTION_SECONDS ({self.backup_retention_seconds:g}):"
                " a restored backup older than the grace could not be decrypted"
            )
        return self


class OfficerTokenSettings(_Section):
    """The officer's own PKCS#11 token, which signs key ceremony actions and evidence
    exports (the second factor; used by the `cofre` CLI on the officer's workstation,
    never by the vault). Unset: the dev token `cofre dev` made for the ``--as`` name under
    ``<data_dir>/officers/``. ``{name}`` in `token_label` or `pin_file` is the ``--as``
    name. The PIN comes from `pin_file` or, when unset, a prompt; never an option."""

    library: Path | None = None
    token_label: str | None = None
    pin_file: Path | None = None
    softhsm_conf: Path | None = None
    key_label: str = "cofre-mfa"


class InsecureSettings(_Section):
    """Escape hatches for `cofre serve` outside production (a demo, a test rig). Each one
    left on is logged as a warning at every start; `cofre dev` needs none of them."""

    allow_sqlite: bool = False
    allow_empty_policy: bool = False
    allow_dev_pki: bool = False
    # SoftHSM2 keeps its keys in files under the PIN: no secure cryptographic device.
    allow_software_hsm: bool = False
    # A rolling upgrade only: seal cards as vaults before session 37 did, without their
    # token domain, which older nodes (and a rollback) can open (`vault.keyring`).
    seal_cards_without_domain: bool = False


class TokenSettings(_Section):
    """Token lifecycle."""

    # How often every node tries to purge expired tokens; one node at a time does it
    # (a database lock elects it, as for the audit sequencer).
    purge_interval_seconds: float = Field(default=300.0, gt=0, le=86400)
    # How long an idempotency key answers a retry before it is forgotten (the purge
    # removes its record; a key a token row carries stays that token's). A day, as
    # Stripe and Basis Theory; the bounds are `vault.limits`' (MIN_/MAX_IDEMPOTENCY_WINDOW):
    # at least an hour of retries, at most a week of records (the table's size is the
    # rate limit times this).
    idempotency_key_ttl_hours: float = Field(default=24.0, ge=1, le=168)


class CaptureSettings(_Section):
    """The capture listener for browsers and apps (hosted card fields): server TLS only
    (a browser has no client certificate); the session's secret and origin stand in."""

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)  # None: no capture listener
    # Server certificate and key of the capture origin (default: the mTLS listener's).
    cert_file: Path | None = None
    key_file: Path | None = None
    # The origin browsers see this listener at (the hosted fields' origin); default
    # https://localhost:PORT for a loopback host, else https://HOST:PORT.
    public_origin: str | None = None
    # Development only: let a session name an http://localhost origin.
    allow_http_localhost: bool = False
    # Captures per session (brute force of its secret) and per client address.
    # The bounds of `policies.models.RateLimit` (one a day to 10^6 a second).
    session_per_second: float = Field(default=0.2, ge=1 / 86_400, le=1e6)
    session_burst: int = Field(default=10, ge=1, le=1_000_000_000)
    address_per_second: float = Field(default=2.0, ge=1 / 86_400, le=1e6)
    address_burst: int = Field(default=60, ge=1, le=1_000_000_000)
    # Database operations the listener runs at once per worker process; the rest are
    # answered 503 capture_busy. None: `database.pool_size`, half the pool (which holds
    # as many again), so anonymous traffic never holds the mTLS API's connections.
    max_in_flight: int | None = Field(default=None, ge=1, le=400)
    # Connections the listener holds at once per worker process (at most half the
    # process's open files: `cofre_cli.capture.capture_connections`); past it a new one
    # is closed at once. Anonymous connections never take the mTLS API's descriptors.
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _reachable_origin(self) -> CaptureSettings:
        # A wildcard host names no address a browser could reach: the hosted fields'
        # origin (frame-ancestors, CORS, the session's check) would be https://0.0.0.0.
        if self.port is not None and self.public_origin is None and every_interface(self.host):
            raise ValueError(
                f"COFRE_CAPTURE__HOST {self.host!r} listens on every interface: set "
                "COFRE_CAPTURE__PUBLIC_ORIGIN to the origin browsers reach it at"
            )
        return self

    def origin(self) -> str:
        """This listener's public origin."""
        if self.public_origin is not None:
            return self.public_origin.rstrip("/")
        return listener_origin(self.host, self.port)


class Settings(BaseSettings):
    """All of Cofre's configuration.

    Build it with `load_settings`; tests pass keyword arguments directly.
    """

    model_config = SettingsConfigDict(
        env_prefix="COFRE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path(".cofre-dev")
    policy_file: Path | None = None
    log_level: str = "INFO"
    hsm: HSMSettings = HSMSettings()
    database: DatabaseSettings = DatabaseSettings()
    server: ServerSettings = ServerSettings()
    audit: AuditSettings = AuditSettings()
    archive: ArchiveSettings = ArchiveSettings()
    keys: KeySettings = KeySettings()
    evidence: EvidenceSettings = EvidenceSettings()
    insecure: InsecureSettings = InsecureSettings()
    officer_token: OfficerTokenSettings = OfficerTokenSettings()
    tokens: TokenSettings = TokenSettings()
    capture: CaptureSettings = CaptureSettings()

    @model_validator(mode="after")
    def _pin_sources_exclusive(self) -> Settings:
        if self.hsm.pin is not None and self.hsm.pin_file is not None:
            raise ValueError("set only one of COFRE_HSM__PIN and COFRE_HSM__PIN_FILE")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get("COFRE_CONFIG")
        if config_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_path)))
        return tuple(sources)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the token store (SQLite in `data_dir` by default), from
        `url` or `url_file`, with the password from `password` / `password_file` put in.

        Raises `ConfigurationError` when a file cannot be read.
        """
        database = self.database
        if database.url is not None:
            url = database.url.get_secret_value()
        elif database.url_file is not None:
            url = _read_secret_file(database.url_file, "database URL")
        else:
            return f"sqlite:///{(self.data_dir / 'cofre.sqlite3').resolve()}"
        password = database.read_password()
        if password is None:
            return url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigurationError("the database URL does not parse") from None
        return parsed.set(password=password).render_as_string(hide_password=False)

    def redacted(self) -> dict[str, Any]:
        """Return the settings as plain data with every secret replaced by ``"**********"``.

        This is what evidence bundles and `cofre config show` print.
        """
        data: dict[str, Any] = self.model_dump(mode="json")
        if self.database.url is not None:
            data["database"]["url"] = "**********"
        return data


# ``COFRE_*`` variables that are not `Settings`: the file itself, the officer's identity
# for the CLI's ``--as``, and other programs' (the witness, the infrastructure
# declaration, the CloudHSM-behaviour shim, the test suite's PostgreSQL).
OTHER_VARIABLES: Final = frozenset({"COFRE_CONFIG", "COFRE_OFFICER", "COFRE_PG_BINDIR"})
OTHER_PREFIXES: Final = ("COFRE_WITNESS_", "COFRE_INFRA_", "COFRE_SHIM_", "COFRE_TEST_")


# What the kubelet sets for each Service of a pod's namespace (`<NAME>_SERVICE_HOST`,
# `<NAME>_PORT_8443_TCP_ADDR`...): pkg/kubelet/envvars, Docker links' names.
_SERVICE_LINK: Final = re.compile(
    r"COFRE\w*?_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)"
)
# What the kubelet puts in `<NAME>_PORT`: `tcp://<address>:<port>`. That name alone is
# also the likeliest typo of a port setting (COFRE_SERVER_PORT for COFRE_SERVER__PORT),
# which holds a number: told to turn service links off, its operator looked in the
# wrong place (session 36 review).
_LINK_ADDRESS: Final = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)


def _service_link(name: str, value: str) -> bool:
    found = _SERVICE_LINK.fullmatch(name.upper())
    return found is not None and (found[1] != "PORT" or _LINK_ADDRESS.match(value) is not None)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``COFRE_*`` names in `environ` that are no setting: pydantic-settings ignores
    a top-level name it does not know (``COFRE_POLICYFILE``, ``COFRE_HSM_PIN_FILE`` for
    ``COFRE_HSM__PIN_FILE``), so a typo left the setting at its default in silence
    (review 41). Names are read case-insensitively, as pydantic-settings reads them."""
    fields = {f"COFRE_{name.upper()}" for name in Settings.model_fields}
    unknown = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith("COFRE_") or upper in OTHER_VARIABLES:
            continue
        if upper.startswith(OTHER_PREFIXES) or upper.split("__", 1)[0] in fields:
            continue
        unknown.append(name)
    return sorted(unknown)


def load_settings(**overrides: Any) -> Settings:
    """Return the settings from the environment and ``COFRE_CONFIG``.

    Raises `ConfigurationError` with pydantic's explanation when they do not validate
    (the explanation never includes a secret value: inputs are hidden), and for a
    ``COFRE_*`` variable that is no setting (`unknown_variables`).
    """
    if unknown := unknown_variables(os.environ):
        # The kubelet's Docker-link variables for a Service whose name starts with
        # `cofre` look like typos; say where they come from (review 36).
        links = [n for n in unknown if _service_link(n, os.environ.get(n, ""))]
        hint = (
            f" ({', '.join(links)}: a Kubernetes Service's link variables; set "
            "`enableServiceLinks: false` in the pod)"
            if links
            else ""
        )
        raise ConfigurationError(
            f"unknown environment variable {', '.join(unknown)}: not a setting (nested "
            "settings take two underscores, COFRE_HSM__PIN_FILE; see the README's "
            f"configuration table){hint}"
        )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read COFRE_CONFIG: {exc}") from None
