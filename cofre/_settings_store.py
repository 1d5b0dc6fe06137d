"""The token store's sections of `cofre.settings.Settings`: the database and the
tokens' lifecycle.

IN PCI SCOPE. Moved out of `cofre.settings` to keep that module small; import them from
`cofre.settings`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from cofre._secret_file import _read_secret_file
from cofre._settings_section import _Section


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
