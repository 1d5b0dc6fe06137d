"""The HSM, key ceremony and officer token sections of `cofre.settings.Settings`.

IN PCI SCOPE. Moved out of `cofre.settings` to keep that module small; import them from
`cofre.settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import Field, SecretStr, model_validator

from cofre._settings_section import _Section
from cofre.errors import ConfigurationError

DEFAULT_SOFTHSM_LIBRARY = Path("/usr/lib/softhsm/libsofthsm2.so")


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
