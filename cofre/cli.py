"""The `cofre` command line: one CLI for developers, operators, officers and auditors.

IN PCI SCOPE (wiring). Secrets are never options: the HSM PIN comes from
``COFRE_HSM__PIN`` or ``COFRE_HSM__PIN_FILE`` (see `cofre.settings`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from cofre import __version__
from cofre.errors import CofreError, ConfigurationError
from cofre.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="cofre",
    help="Cofre: a PCI-DSS tokenization vault (format-preserving tokens, HSM keys, audit).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
hsm_app = typer.Typer(
    help="The PKCS#11 token and Cofre's key hierarchy on it.", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
audit_app = typer.Typer(
    help="The tamper-evident audit log: signed heads, proofs, verification, export.",
    no_args_is_help=True,
)
app.add_typer(hsm_app, name="hsm")
app.add_typer(audit_app, name="audit")
app.add_typer(config_app, name="config")
api_app = typer.Typer(help="The vault API: its OpenAPI document.", no_args_is_help=True)
app.add_typer(api_app, name="api")
keys_app = typer.Typer(
    help="Key rotation under dual control (security officers, over mTLS).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
evidence_app = typer.Typer(
    help="Signed PCI DSS evidence bundles: export (officers, auditors) and offline verify.",
    no_args_is_help=True,
)
app.add_typer(evidence_app, name="evidence")
infra_app = typer.Typer(
    help="The PCI VPC and the CloudHSM cluster on AWS (boto3): plan, apply, verify, destroy.",
    no_args_is_help=True,
)
app.add_typer(infra_app, name="infra")
pki_app = typer.Typer(help="The development PKI (client certificates).", no_args_is_help=True)
app.add_typer(pki_app, name="pki")

DEV_CONFIG = Path(".cofre-dev") / "cofre.toml"


def _fail_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a `CofreError` into one line on stderr and exit status 1 (no traceback: a
    traceback's locals could hold a secret)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CofreError as exc:
            typer.echo(f"error [{exc.code}]: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _settings() -> Settings:
    """Load settings; in a checkout where `make run` created the dev environment and no
    ``COFRE_CONFIG`` is set, use the dev configuration (and say so on stderr)."""
    if "COFRE_CONFIG" not in os.environ and DEV_CONFIG.is_file():
        os.environ["COFRE_CONFIG"] = str(DEV_CONFIG.resolve())
        typer.echo(f"(using the dev configuration {DEV_CONFIG})", err=True)
    return load_settings()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cofre {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_version_callback,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Cofre: a PCI-DSS tokenization vault."""


# ---------------------------------------------------------------------------- dev
@app.command("dev")
@_fail_cleanly
def dev_command(
    data_dir: Annotated[
        Path,
        typer.Option(help="Where the dev token, database and PKI live.", envvar="COFRE_DATA_DIR"),
    ] = Path(".cofre-dev"),
    check: Annotated[
        bool, typer.Option("--check", help="Set up and check readiness, then exit.")
    ] = False,
) -> None:
    """Run the development vault: a SoftHSM2 token with Cofre's key hierarchy, the
    embedded SQLite store, a dev PKI and a sample policy, all created on first run in
    DATA_DIR; then serve the API on https://127.0.0.1:8443. `make run` calls this."""
    from api.pki import DevPKI
    from cofre.devenv import dev_settings, ensure_dev_environment
    from cofre.wiring import build_runtime, open_database, serve
    from hsm.keys import KeyHierarchy
    from hsm.provider import provider_from_settings

    env = ensure_dev_environment(data_dir)
    typer.echo(("created" if env.created else "reusing") + f" dev environment in {env.data_dir}")
    settings = dev_settings(env)
    provider = provider_from_settings(settings.hsm)
    created = KeyHierarchy(provider).initialize()
    _audit_key_creation(open_database(settings), created, actor="cofre dev")
    if created:
        typer.echo("created keys on the token: " + ", ".join(created))
    if check:
        runtime = build_runtime(settings, provider=provider)
        try:
            checks = runtime.service.check_ready()
        finally:
            runtime.close()
        typer.echo("ready: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
        typer.echo(f"config: COFRE_CONFIG={env.config_file}")
        return
    provider.close()
    pki = DevPKI(env.data_dir / "pki")
    rel = _relative(pki.root)
    # A well-known test card number, assembled here so no source file carries one.
    test_pan = "4111" + "1" * 12
    typer.echo(
        f"\nThe vault listens on https://{settings.server.host}:{settings.server.port}. "
        "Tokenize a test card as the 'payments' service:\n\n"
        f"  curl --cacert {rel}/ca.pem --cert {rel}/clients/payments.pem "
        f"--key {rel}/clients/payments-key.pem \\\n"
        "    -H 'content-type: application/json' "
        f'-d \'{{"pan": "{test_pan}", "format": "pan_bin6_last4"}}\' \\\n'
        f"    https://{settings.server.host}:{settings.server.port}/v1/tokenize\n\n"
        f"Other identities' certificates are in {rel}/clients/; the policy is "
        f"{_relative(env.data_dir / 'policy.toml')}. Ctrl-C stops the vault.\n"
    )
    serve(settings)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@app.command("serve")
@_fail_cleanly
def serve_command() -> None:
    """Run the vault API over mutual TLS with the configured settings (production)."""
    from cofre.wiring import serve

    serve(_settings())


def _audit_key_creation(engine: Any, labels: list[str], *, actor: str) -> None:
    """Record key creation in the audit log (key events are audited like every operation)."""
    from audit.log import AuditEvent, AuditLog, Outcome

    if not labels:
        return
    log = AuditLog()
    with engine.begin() as connection:
        for label in labels:
            log.append(
                connection,
                AuditEvent(action="key.create", outcome=Outcome.SUCCESS, actor=actor, key_id=label),
            )


# ---------------------------------------------------------------------------- hsm
@hsm_app.command("init")
@_fail_cleanly
def hsm_init() -> None:
    """Create Cofre's key hierarchy on an empty token (idempotent): KEK, fingerprint key,
    audit signing key. Data keys are created by the vault and stored wrapped."""
    from hsm.keys import KeyHierarchy
    from hsm.provider import provider_from_settings

    created = KeyHierarchy(provider_from_settings(_settings().hsm)).initialize()
    typer.echo(
        "created: " + ", ".join(created) if created else "nothing to do: the hierarchy exists"
    )


@hsm_app.command("status")
@_fail_cleanly
def hsm_status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the token, the mechanisms Cofre needs (present or not) and the key inventory
    with its attributes. Never shows key material."""
    from hsm.provider import REQUIRED_MECHANISMS, provider_from_settings

    provider = provider_from_settings(_settings().hsm)
    offered = provider.mechanism_ids()
    try:
        algorithm = provider.wrap_algorithm()
        wrap = f"{algorithm.value} ({provider.wrap_mechanism_name(algorithm)})"
    except CofreError:
        wrap = None
    report: dict[str, Any] = {
        "token": asdict(provider.token_info()),
        "mechanisms": {name: number in offered for name, number in REQUIRED_MECHANISMS.items()},
        "wrap_mechanism": wrap,
        "keys": [asdict(info) for info in provider.list_keys()],
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    token = report["token"]
    typer.echo(
        f"token {token['token_label']!r}: {token['manufacturer']} {token['model']}, "
        f"library {token['library']} v{token['library_version']}"
    )
    for name, present in report["mechanisms"].items():
        typer.echo(f"  mechanism {name:<24} {'present' if present else 'MISSING'}")
    typer.echo(f"  key wrap: {wrap or 'NONE'}")
    for key in report["keys"]:
        flags = ", ".join(
            f"{flag}={key[flag]}"
            for flag in ("sensitive", "extractable", "never_extractable")
            if key[flag] is not None
        )
        typer.echo(f"  {key['label']:<18} {key['object_class']:<12} {key['key_type']:<15} {flags}")


# ---------------------------------------------------------------------------- audit
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@audit_app.command("sequence")
@_fail_cleanly
def audit_sequence() -> None:
    """Integrate every queued entry into the tree now and sign a head for the new size."""
    from audit.sequencer import Sequencer
    from cofre.wiring import audit_signer, open_database, open_hsm

    settings = _settings()
    engine = open_database(settings)
    sequencer = Sequencer(engine, audit_signer(open_hsm(settings)))
    count = sequencer.drain()
    typer.echo(f"integrated {count} entries")


@audit_app.command("head")
@_fail_cleanly
def audit_head() -> None:
    """Print the latest signed tree head as JSON (size, root, time, key, signature)."""
    from audit.store import AuditStore
    from cofre.wiring import open_database

    head = AuditStore(open_database(_settings())).latest_head()
    if head is None:
        typer.echo("no signed tree head yet", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(head.as_json(), indent=2))


@audit_app.command("prove")
@_fail_cleanly
def audit_prove(
    index: Annotated[int, typer.Option("--index", help="Leaf index of the entry.")],
    size: Annotated[
        int | None, typer.Option("--size", help="Tree size (default: the whole tree).")
    ] = None,
    consistency_from: Annotated[
        int | None,
        typer.Option("--from-size", help="Also prove consistency from this earlier size."),
    ] = None,
) -> None:
    """Print an inclusion proof for entry INDEX (and, with --from-size, a consistency
    proof), checked against the recomputed root before it is printed."""
    from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
    from audit.store import AuditStore
    from cofre.wiring import open_database

    store = AuditStore(open_database(_settings()))
    tree_size = size if size is not None else store.size()
    entry = store.entry(index)
    proof = store.inclusion_proof(index, tree_size)
    root = store.root_at(tree_size)
    leaf = leaf_hash(entry.encode("utf-8"))
    verify_inclusion(leaf, index, tree_size, proof, root)
    out: dict[str, Any] = {
        "index": index,
        "tree_size": tree_size,
        "entry": entry,
        "leaf_hash": _b64(leaf),
        "root_hash": _b64(root),
        "inclusion_proof": [_b64(p) for p in proof],
    }
    head = store.head_at(tree_size)
    out["signed_head"] = head.as_json() if head else None
    if consistency_from is not None:
        consistency = store.consistency_proof(consistency_from, tree_size)
        verify_consistency(
            consistency_from, tree_size, consistency, store.root_at(consistency_from), root
        )
        out["consistency_from"] = consistency_from
        out["consistency_proof"] = [_b64(p) for p in consistency]
    typer.echo(json.dumps(out, indent=2))


@audit_app.command("verify")
@_fail_cleanly
def audit_verify(
    public_key: Annotated[
        Path | None,
        typer.Option(help="PEM public key of the audit signer (default: ask the HSM)."),
    ] = None,
) -> None:
    """Recompute the whole tree from the stored entries and check it against every signed
    tree head and signature. Exits 1 naming the first bad leaf index."""
    from audit.errors import AuditVerificationFailed
    from audit.store import AuditStore
    from cofre.wiring import audit_signer, open_database, open_hsm

    settings = _settings()
    if public_key is not None:
        pem = public_key.read_bytes()
    else:
        pem = audit_signer(open_hsm(settings)).public_key_pem()
    try:
        report = AuditStore(open_database(settings)).verify(pem)
    except AuditVerificationFailed as exc:
        typer.echo(f"FAILED: {exc}", err=True)
        raise typer.Exit(1) from None
    latest = report.latest_head
    typer.echo(
        f"OK: {report.entries} entries, {report.heads_checked} signed tree heads verified"
        + (f", latest head size {latest.tree_size}" if latest else ", no signed head yet")
        + (f"; {report.queued} entries queued for sequencing" if report.queued else "")
    )


@audit_app.command("export")
@_fail_cleanly
def audit_export(
    out: Annotated[Path, typer.Option("--out", help="File to write (JSON lines).")],
) -> None:
    """Write every entry (with leaf hash), every signed head and the audit public key as
    JSON lines, for offline verification."""
    from audit.store import AuditStore
    from cofre.wiring import audit_signer, open_database, open_hsm

    settings = _settings()
    pem = audit_signer(open_hsm(settings)).public_key_pem()
    lines = 0
    with out.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "public_key", "pem": pem.decode()}) + "\n")
        for line in AuditStore(open_database(settings)).export():
            handle.write(line + "\n")
            lines += 1
    typer.echo(f"wrote {lines} records to {out}")


# ---------------------------------------------------------------------------- api
@api_app.command("openapi")
def api_openapi(
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the API's OpenAPI document (docs/openapi.json is this output)."""
    from api.app import openapi_document

    text = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------- keys
Officer = Annotated[
    str,
    typer.Option(
        "--as",
        help="Your identity: certificate NAME in clients/ beside the CA bundle "
        "(or give --cert/--key).",
        envvar="COFRE_OFFICER",
    ),
]
CertOpt = Annotated[Path | None, typer.Option("--cert", help="Client certificate (PEM).")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="Client key (PEM).")]


def _admin(officer: str, cert: Path | None, key: Path | None) -> Any:
    import ssl

    import httpx

    settings = _settings()
    ca = settings.server.ca_bundle or settings.data_dir / "pki" / "ca.pem"
    # The dev PKI keeps client certificates beside the CA, in clients/.
    clients = Path(ca).parent / "clients"
    cert = cert or clients / f"{officer}.pem"
    key = key or clients / f"{officer}-key.pem"
    for path in (cert, key, ca):
        if not Path(path).is_file():
            raise ConfigurationError(f"not found: {path}")
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    url = f"https://{settings.server.host}:{settings.server.port}"
    return httpx.Client(base_url=url, verify=context, timeout=30)


def _admin_call(client: Any, method: str, path: str, body: Any = None) -> Any:
    import httpx

    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise ConfigurationError(f"the vault is unreachable ({type(exc).__name__})") from None
    data = response.json()
    if response.status_code >= 400:
        typer.echo(
            f"error [{data.get('code')}]: {data.get('detail') or data.get('title')}", err=True
        )
        raise typer.Exit(1)
    return data


def _show_ceremony(data: dict[str, Any]) -> None:
    typer.echo(f"ceremony {data['id']}: {data['kind']} rotation, {data['state']}")
    typer.echo(
        f"  proposed by {data['proposer']}; approved by "
        f"{', '.join(data['approvers']) or 'nobody yet'} "
        f"({len(data['approvers'])}/{data['approvals_needed']} approvals needed)"
    )
    if data["new_version"] is not None:
        typer.echo(
            f"  version {data['old_version']} -> {data['new_version']}; progress "
            f"{data['progress_done']}/{data['progress_total']}"
        )
    if data.get("destroy_after"):
        typer.echo(f"  old key destroyed after {data['destroy_after']}")


@keys_app.command("list")
@_fail_cleanly
def keys_list(officer: Officer = "officer-alice", cert: CertOpt = None, key: KeyOpt = None) -> None:
    """Key versions and states, KEK versions, records each data key protects, ceremonies."""
    with _admin(officer, cert, key) as client:
        inventory = _admin_call(client, "GET", "/v1/admin/keys")
        ceremonies = _admin_call(client, "GET", "/v1/admin/keys/rotations")
    for k in inventory["token_keys"]:
        extra = f", {k['records']} records" if "records" in k else ""
        typer.echo(
            f"token  {k['label']:<16} {k['type']:<15} sensitive={k['sensitive']} "
            f"extractable={k['extractable']}{extra}"
        )
    for d in inventory["data_keys"]:
        records = f", {d['records']} records" if d["records"] is not None else ""
        typer.echo(
            f"data   {d['purpose']}-v{d['version']:<3} {d['state']:<10} under "
            f"{d['kek']}, created {d['created_at']}{records}"
        )
    for c in ceremonies:
        typer.echo(f"ceremony {c['id']} {c['kind']:<11} {c['state']}")


@keys_app.command("rotate")
@_fail_cleanly
def keys_rotate(
    kind: Annotated[str, typer.Option("--kind", help="kek, data or fingerprint")],
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Propose a rotation. It runs once enough other officers approve it."""
    with _admin(officer, cert, key) as client:
        _show_ceremony(_admin_call(client, "POST", "/v1/admin/keys/rotations", {"kind": kind}))


@keys_app.command("approve")
@_fail_cleanly
def keys_approve(
    ceremony_id: str, officer: Officer = "officer-bob", cert: CertOpt = None, key: KeyOpt = None
) -> None:
    """Approve a proposal (you cannot approve your own)."""
    with _admin(officer, cert, key) as client:
        _show_ceremony(
            _admin_call(client, "POST", f"/v1/admin/keys/rotations/{ceremony_id}/approve")
        )


@keys_app.command("cancel")
@_fail_cleanly
def keys_cancel(
    ceremony_id: str, officer: Officer = "officer-alice", cert: CertOpt = None, key: KeyOpt = None
) -> None:
    """Cancel a pending proposal."""
    with _admin(officer, cert, key) as client:
        _show_ceremony(
            _admin_call(client, "POST", f"/v1/admin/keys/rotations/{ceremony_id}/cancel")
        )


@keys_app.command("status")
@_fail_cleanly
def keys_status(
    ceremony_id: str,
    officer: Officer = "officer-alice",
    cert: CertOpt = None,
    key: KeyOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow with a progress bar.")] = False,
) -> None:
    """Show a ceremony; with --watch, a progress bar until it finishes."""
    import time

    from rich.progress import Progress

    with _admin(officer, cert, key) as client:
        path = f"/v1/admin/keys/rotations/{ceremony_id}"
        data = _admin_call(client, "GET", path)
        if watch and data["state"] == "running":
            with Progress() as progress:
                task = progress.add_task(
                    f"{data['kind']} rotation", total=max(1, data["progress_total"])
                )
                while data["state"] == "running":
                    progress.update(task, completed=data["progress_done"])
                    time.sleep(0.5)
                    data = _admin_call(client, "GET", path)
                progress.update(task, completed=max(1, data["progress_total"]))
        _show_ceremony(data)


# ---------------------------------------------------------------------------- evidence
@evidence_app.command("export")
@_fail_cleanly
def evidence_export(
    period_to: Annotated[str, typer.Option("--to", help="End, exclusive (ISO date or time).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the bundle (.tar.gz).")],
    period_from: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start (ISO date or time, UTC); with --previous, where the previous ended.",
        ),
    ] = None,
    previous: Annotated[
        Path | None, typer.Option("--previous", help="The previous bundle, to chain to it.")
    ] = None,
    identity: Officer = "auditor",
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Ask the vault for a signed evidence bundle of a period, as an officer or auditor.
    A chained bundle (`--previous`) starts exactly where the previous one ended."""
    body: dict[str, Any] = {"to": period_to}
    if previous is not None:
        from compliance.verifier import MANIFEST, read_bundle

        before = json.loads(read_bundle(previous)[MANIFEST])
        body["previous_head"] = before["covering_head"]
        body["previous_end_index"] = before["entries"]["end_index"]
        period_from = period_from or before["period"]["to"]
    if period_from is None:
        raise ConfigurationError("--from is required unless --previous gives the start")
    body["from"] = period_from
    with _admin(identity, cert, key) as client:
        response = client.post("/v1/evidence", json=body)
    if response.status_code != 200:
        problem = response.json()
        typer.echo(f"error [{problem.get('code')}]: {problem.get('detail')}", err=True)
        raise typer.Exit(1)
    out.write_bytes(response.content)
    typer.echo(f"wrote {out} ({len(response.content)} bytes)")


@evidence_app.command("verify")
def evidence_verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.tar.gz).")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The audit public key (PEM) you were given.")
    ],
    previous: Annotated[
        Path | None, typer.Option("--previous", help="The previous bundle of the chain.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")
    ] = None,
) -> None:
    """Verify a bundle offline (no vault, HSM or network): signatures, file hashes, the
    Merkle tree, proofs. Exit 1 naming each file or entry that is wrong."""
    from compliance.html import render_html
    from compliance.verifier import render_text, verify_bundle

    report = verify_bundle(bundle, public_key.read_bytes(), previous)
    typer.echo(json.dumps(report.as_json(), indent=2) if as_json else render_text(report))
    if html_out is not None:
        html_out.write_text(render_html(report, bundle), encoding="utf-8")
    if not report.ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- infra
InfraConfig = Annotated[
    Path | None,
    typer.Option("--config", help="TOML declaration of the environment (else COFRE_INFRA_*)."),
]


def _infra(config: Path | None) -> Any:
    from infra_pci.aws import AwsClients
    from infra_pci.model import PciEnvironment
    from infra_pci.provision import PciProvisioner

    try:
        env = PciEnvironment.load(config)
    except ValueError as exc:
        raise ConfigurationError(f"invalid infra declaration: {exc}") from None
    return PciProvisioner(env, AwsClients.for_region(env.region))


@infra_app.command("plan")
@_fail_cleanly
def infra_plan(config: InfraConfig = None) -> None:
    """Show what `apply` would create (+) and what exists (=); changes nothing."""
    changes = _infra(config).plan()
    for change in changes:
        typer.echo(str(change))
    todo = sum(1 for c in changes if c.action == "+")
    typer.echo(f"{todo} to create" if todo else "no changes: the environment is as declared")


@infra_app.command("apply")
@_fail_cleanly
def infra_apply(config: InfraConfig = None) -> None:
    """Create what is missing (idempotent; every resource is tagged cofre:managed)."""
    changes, next_steps = _infra(config).apply()
    for change in changes:
        typer.echo(str(change))
    typer.echo(f"created {len(changes)}" if changes else "no changes")
    if next_steps:
        typer.echo("\nManual steps AWS leaves to you (docs/cloudhsm.md):")
        for number, step in enumerate(next_steps, 1):
            typer.echo(f"  {number}. {step}")


@infra_app.command("verify")
@_fail_cleanly
def infra_verify(config: InfraConfig = None) -> None:
    """Read the live account and check the PCI rules; exit 1 naming each broken rule."""
    from infra_pci.verify import verify

    provisioner = _infra(config)
    findings = verify(provisioner.env, provisioner.clients)
    for finding in findings:
        typer.echo(str(finding))
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


@infra_app.command("destroy")
@_fail_cleanly
def infra_destroy(
    config: InfraConfig = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do it (without: show what would go).")
    ] = False,
) -> None:
    """Delete every resource tagged for this environment, and nothing else."""
    provisioner = _infra(config)
    if not yes:
        typer.echo("would delete (run again with --yes):")
        for change in provisioner.plan():
            if change.action == "=":
                typer.echo(f"- {change.kind:<16} {change.name}")
        return
    for change in provisioner.destroy():
        typer.echo(str(change))


# ---------------------------------------------------------------------------- pki
@pki_app.command("issue-client")
@_fail_cleanly
def pki_issue_client(
    name: Annotated[str, typer.Argument(help="The identity becomes spiffe://cofre/NAME.")],
) -> None:
    """Issue a dev client certificate for NAME (add NAME to the policy to grant it
    anything)."""
    from api.pki import ensure_dev_pki, issue_client

    pki = ensure_dev_pki(_settings().data_dir / "pki", identities=())
    path = issue_client(pki, name)
    typer.echo(f"issued {path} (identity spiffe://cofre/{name})")


@pki_app.command("list")
@_fail_cleanly
def pki_list() -> None:
    """List the dev certificates: subject, SAN, expiry."""
    from api.pki import certificate_inventory

    root = _settings().data_dir / "pki"
    paths = sorted(p for p in root.rglob("*.pem") if not p.name.endswith("-key.pem"))
    for cert in certificate_inventory(paths):
        typer.echo(f"{cert['file']}: {cert['san'] or cert['subject']} until {cert['not_after']}")


# ---------------------------------------------------------------------------- config
@config_app.command("show")
@_fail_cleanly
def config_show() -> None:
    """Print the effective configuration as JSON, secrets replaced by asterisks."""
    typer.echo(json.dumps(_settings().redacted(), indent=2))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="cofre")


if __name__ == "__main__":  # pragma: no cover
    main()
