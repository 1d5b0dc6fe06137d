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
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cofre._secret_file import _read_secret_file

# The sections live in `cofre._settings_*`, grouped by what they configure (session 41:
# this module had reached 598 lines); they are imported from here (`__all__`).
from cofre._settings_audit import (
    ArchiveSettings,
    AuditSettings,
    EvidenceSettings,
    WitnessSettings,
)
from cofre._settings_keys import (
    DEFAULT_SOFTHSM_LIBRARY,
    MAX_PROPOSAL_TTL_HOURS,
    HSMSettings,
    KeySettings,
    OfficerTokenSettings,
)
from cofre._settings_listeners import (
    CaptureSettings,
    ServerSettings,
    TLSVersion,
)
from cofre._settings_section import _Section
from cofre._settings_store import DatabaseSettings, TokenSettings
from cofre.errors import ConfigurationError

__all__ = [
    "DEFAULT_SOFTHSM_LIBRARY",
    "MAX_PROPOSAL_TTL_HOURS",
    "OTHER_PREFIXES",
    "OTHER_VARIABLES",
    "ArchiveSettings",
    "AuditSettings",
    "CaptureSettings",
    "DatabaseSettings",
    "EvidenceSettings",
    "HSMSettings",
    "InsecureSettings",
    "KeySettings",
    "OfficerTokenSettings",
    "ServerSettings",
    "Settings",
    "TLSVersion",
    "TokenSettings",
    "WitnessSettings",
    "load_settings",
    "unknown_variables",
]


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
