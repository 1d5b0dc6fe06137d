"""What every `cofre` command group shares: clean failure, settings, the admin client.

IN PCI SCOPE (wiring). Secrets are never options: the HSM PIN comes from
``COFRE_HSM__PIN`` or ``COFRE_HSM__PIN_FILE`` (see `cofre.settings`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from cofre.errors import CofreError, ConfigurationError, VaultUnreachable
from cofre.redaction import mask_pan_like_or_withhold
from cofre.settings import Settings, load_settings

# Variables that pick an identity, not a configuration.
CLI_ONLY_VARIABLES = frozenset({"COFRE_OFFICER"})

P = ParamSpec("P")
R = TypeVar("R")

DEV_CONFIG = Path(".cofre-dev") / "cofre.toml"
# Set by `cli_settings` when nothing configured this command: its error then says so.
_UNCONFIGURED: ContextVar[bool] = ContextVar("cofre_cli_unconfigured", default=False)
UNCONFIGURED_HINT = (
    "no configuration found: COFRE_CONFIG is unset, no COFRE_* setting is in the "
    f"environment and there is no {DEV_CONFIG.as_posix()} in this directory; run from the "
    "checkout where `make run` created it, or set COFRE_CONFIG"
)


def fail_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a `CofreError` into one line on stderr and exit status 1 (no traceback: a
    traceback's locals could hold a secret), masked as the API masks a problem's detail:
    a message may repeat what the operator typed (`cofre audit prove --index`), and a
    command's output is often kept in a job's log (review of session 32)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        reset = _UNCONFIGURED.set(False)  # until this command's `cli_settings` says
        try:
            return func(*args, **kwargs)
        except CofreError as exc:
            typer.echo(f"error [{exc.code}]: {mask_pan_like_or_withhold(str(exc))}", err=True)
            if _UNCONFIGURED.get():
                # Run outside the checkout, every command failed on a symptom of the
                # defaults ("not found: .cofre-dev/pki/...", "no HSM PIN configured", "run
                # `cofre db migrate`" for an empty database it had just made here).
                typer.echo(f"  ({UNCONFIGURED_HINT})", err=True)
            raise typer.Exit(1) from None
        finally:
            _UNCONFIGURED.reset(reset)

    return wrapper


def cli_settings() -> Settings:
    """Load settings; in a checkout where `make run` created the dev environment and no
    ``COFRE_CONFIG`` is set, use the dev configuration (and say so on stderr)."""
    if "COFRE_CONFIG" not in os.environ and DEV_CONFIG.is_file():
        os.environ["COFRE_CONFIG"] = str(DEV_CONFIG.resolve())
        typer.echo(f"(using the dev configuration {DEV_CONFIG})", err=True)
    # Production sets settings in the environment, without a file: any one counts.
    _UNCONFIGURED.set(
        not any(
            name.upper().startswith("COFRE_") and name.upper() not in CLI_ONLY_VARIABLES
            for name in os.environ
        )
    )
    return load_settings()


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


def officer_signature(keyid: str, sign: Callable[[bytes], bytes]) -> Any:
    """An httpx auth that signs every request but GETs as RFC 9421 requires
    (`vault.httpsig`): the officer's second factor, `sign` being their token's key. The
    signature covers the ``Host`` header the request is sent with (``@authority``): it
    is good for that vault only."""
    import secrets
    import time

    import httpx

    from vault.httpsig import sign_request

    class OfficerSignature(httpx.Auth):
        requires_request_body = True

        def auth_flow(self, request: httpx.Request) -> Any:
            if request.method != "GET":
                path, _, query = request.url.raw_path.decode("ascii").partition("?")
                request.headers.update(
                    sign_request(
                        request.method,
                        path,
                        query,
                        request.content,
                        # The vault it is sent to, as the Host header names it.
                        authority=request.headers["host"],
                        keyid=keyid,
                        nonce=secrets.token_urlsafe(18),
                        created=int(time.time()),
                        sign=sign,
                    )
                )
            yield request

    return OfficerSignature()


def admin_client(officer: str, cert: Path | None, key: Path | None) -> Any:
    import httpx

    from cofre.tls import client_context
    from cofre_cli.officer_token import find_token, signer_for
    from hsm.errors import HSMAuthFailed, HSMKeyNotFound, HSMUnavailable

    settings = cli_settings()
    ca = settings.server.ca_bundle or settings.data_dir / "pki" / "ca.pem"
    # The dev PKI keeps client certificates beside the CA, in clients/.
    clients = Path(ca).parent / "clients"
    cert = cert or clients / f"{officer}.pem"
    key = key or clients / f"{officer}-key.pem"
    for path in (cert, key, ca):
        if not Path(path).is_file():
            raise ConfigurationError(f"not found: {path}")
    # Not `ssl.create_default_context`: it writes the session secrets (the signed
    # requests, what the vault answers) to the file SSLKEYLOGFILE names (review 35).
    context = client_context(ca, cert=cert, key=key)
    url = f"https://{settings.server.host}:{settings.server.port}"
    # The second factor: NAME's own token signs ceremony actions and exports. Without a
    # token the request goes unsigned and the vault refuses what needs MFA.
    token = find_token(settings, officer)
    auth = None
    if token is not None:
        try:
            signer = signer_for(token)
        except HSMAuthFailed:
            raise  # a wrong PIN is said, never turned into an unsigned request
        except (HSMUnavailable, HSMKeyNotFound) as exc:
            typer.echo(f"(no usable token for {officer} [{exc.code}]: unsigned)", err=True)
        else:
            auth = officer_signature(signer.keyid, signer.sign)
    return httpx.Client(base_url=url, verify=context, timeout=30, auth=auth)


def vault_unreachable(client: Any, exc: Exception) -> VaultUnreachable:
    """The error for an httpx failure talking to the vault: its address and why, for the
    on-call engineer (the class name alone said neither, session 36)."""
    return VaultUnreachable(
        f"the vault at {str(client.base_url).rstrip('/')} is unreachable or stopped answering "
        f"({type(exc).__name__}: {exc}); is it running (`make run` in dev), and do "
        "COFRE_SERVER__HOST and COFRE_SERVER__PORT name where it listens?"
    )


@contextlib.contextmanager
def vault_answering(client: Any) -> Iterator[None]:
    """Turn an httpx failure inside into `vault_unreachable`'s error (here, where the
    import contracts let the officers' CLI import httpx)."""
    import httpx

    try:
        yield
    except httpx.HTTPError as exc:
        raise vault_unreachable(client, exc) from None


def admin_call(client: Any, method: str, path: str, body: Any = None) -> Any:
    import httpx

    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise vault_unreachable(client, exc) from None
    data = response.json()
    if response.status_code >= 400:
        typer.echo(
            f"error [{data.get('code')}]: {data.get('detail') or data.get('title')}", err=True
        )
        if data.get("code") == "custody_not_acknowledged":  # PCI DSS 3.7.8
            typer.echo(
                "  sign the key custody statement first: cofre keys acknowledge-custody "
                "--as YOUR-NAME (docs/key-ceremony.md)",
                err=True,
            )
        raise typer.Exit(1)
    return data
