"""`cofre witness`: run a C2SP tlog-witness for a vault's audit log.

Meant for a party outside the vault's operators: it needs no vault settings, database
or HSM; only its own key file, its own state file and the vault's verifier key. When
the vault's audit key is rotated, the witness's operator pins the new key received out
of band (`cofre witness trust-key`); the witness follows a handover to no other key.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from cofre_cli._shared import fail_cleanly

witness_app = typer.Typer(
    help="An independent witness that cosigns the vault's audit checkpoints.",
    no_args_is_help=True,
)


@witness_app.command("keygen")
@fail_cleanly
def witness_keygen(
    name: Annotated[str, typer.Option(help="The witness's key name (e.g. witness.example/w1).")],
    out: Annotated[Path, typer.Option(help="Directory for witness.key (0600) and .vkey.")],
) -> None:
    """Create the witness's Ed25519 key: `witness.key` (private, mode 0600) and
    `witness.vkey` (the cosignature/v1 verifier key auditors pin)."""
    from audit.note import CosignerKey

    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = out / "witness.key"
    if private.exists():
        typer.echo(f"{private} exists; not overwritten", err=True)
        raise typer.Exit(1)
    key = CosignerKey.generate(name)
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key.encode() + "\n")
    vkey = key.verifier_key().encode()
    (out / "witness.vkey").write_text(vkey + "\n", encoding="utf-8")
    typer.echo(vkey)


@witness_app.command("serve")
@fail_cleanly
def witness_serve(
    key_file: Annotated[
        Path, typer.Option(envvar="COFRE_WITNESS_KEY_FILE", help="The witness's private key file.")
    ],
    state: Annotated[
        Path, typer.Option(envvar="COFRE_WITNESS_STATE", help="Its SQLite state file.")
    ],
    logs: Annotated[
        Path,
        typer.Option(
            envvar="COFRE_WITNESS_LOGS",
            help="File of the logs' verifier keys, one a line (`cofre audit vkey`).",
        ),
    ],
    host: Annotated[
        str, typer.Option(envvar="COFRE_WITNESS_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="COFRE_WITNESS_PORT", help="Port to listen on (0: any free one).")
    ] = 7380,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="COFRE_WITNESS_TLS_CERT",
            help="Server certificate (PEM): serve HTTPS (without it, plain HTTP).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(envvar="COFRE_WITNESS_TLS_KEY", help="The certificate's private key (PEM)."),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option(
            envvar="COFRE_WITNESS_MAX_CONNECTIONS",
            min=1,
            help="Connections handled at once; more are closed unanswered.",
        ),
    ] = 64,
    max_per_address: Annotated[
        int,
        typer.Option(
            envvar="COFRE_WITNESS_MAX_PER_ADDRESS",
            min=1,
            help="Connections handled at once from one IP address (IPv6: one /64).",
        ),
    ] = 16,
    parent_pid: Annotated[
        int | None,
        typer.Option(
            hidden=True,
            help="End when this process (the caller, `cofre dev`) ends, by any signal.",
        ),
    ] = None,
) -> None:
    """Serve add-checkpoint (c2sp.org/tlog-witness) until SIGTERM or Ctrl-C."""
    import logging

    if parent_pid is not None:
        # `cofre dev`'s witness: a `cofre dev` killed outright (SIGKILL, the OOM killer)
        # stops nothing, and its witness held its port and state file for good (session
        # 33's note). First thing, so that no moment of the witness outlives it.
        from cofre_cli._parent import die_with

        die_with(parent_pid, signal.SIGTERM)

    from audit.errors import NoteError
    from witness.server import WitnessConfig, WitnessServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        server = WitnessServer(
            WitnessConfig(key_file, state, logs, host, port, tls_cert=tls_cert, tls_key=tls_key),
            max_connections=max_connections,
            max_per_address=max_per_address,
        )
    except (OSError, NoteError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    vkey = server.witness.key.verifier_key().encode()
    scheme = "https" if tls_cert else "http"
    typer.echo(f"witness {vkey} listening on {scheme}://{host}:{server.port}", err=True)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@witness_app.command("trust-key")
@fail_cleanly
def witness_trust_key(
    vkey: Annotated[
        str,
        typer.Argument(
            help="The log's NEW audit verifier key, received out of band from the vault's "
            "key custodians (`cofre audit vkey` after the rotation)."
        ),
    ],
    state: Annotated[
        Path, typer.Option(envvar="COFRE_WITNESS_STATE", help="The witness's SQLite state file.")
    ],
    logs: Annotated[
        Path | None,
        typer.Option(
            envvar="COFRE_WITNESS_LOGS",
            help="The witness's logs file: when given, the key must belong to one of them.",
        ),
    ] = None,
) -> None:
    """Pin a key the log may hand its audit key over to (a witness operator's decision).

    The witness follows a `cofre-key-handover` checkpoint only to a key pinned here
    beforehand; a running witness sees the pin at the next submission (no restart)."""
    from audit.errors import NoteError
    from audit.note import VerifierKey
    from witness.server import read_logs
    from witness.state import WitnessState

    try:
        key = VerifierKey.parse(vkey)
        known = read_logs(logs) if logs is not None else None
    except (OSError, NoteError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if known is not None and key.name not in known:
        typer.echo(f"error: no log with origin {key.name!r} in {logs}", err=True)
        raise typer.Exit(1)
    witness_state = WitnessState(state)
    try:
        added = witness_state.pin_key(key.name, key.encode())
    finally:
        witness_state.close()
    verb = "pinned" if added else "already pinned"
    typer.echo(f"{verb} {key.encode()} for key handovers of {key.name}")
