"""Typed settings: env vars and TOML, secrets never shown."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from cofre.errors import ConfigurationError
from cofre.settings import (
    MAX_PROPOSAL_TTL_HOURS,
    HSMSettings,
    Settings,
    load_settings,
    unknown_variables,
)
from cofre_evidence_verifier import dual_control
from vault.limits import MAX_IDEMPOTENCY_WINDOW, MIN_IDEMPOTENCY_WINDOW

PIN = "pin-that-must-not-show-9182"


def test_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COFRE_HSM__TOKEN_LABEL", "prod")
    monkeypatch.setenv("COFRE_HSM__PIN", PIN)
    monkeypatch.setenv("COFRE_SERVER__PORT", "9443")
    settings = load_settings()
    assert settings.hsm.token_label == "prod"
    assert settings.server.port == 9443
    assert settings.hsm.read_pin().get_secret_value() == PIN


def test_secrets_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COFRE_HSM__PIN", PIN)
    monkeypatch.setenv("COFRE_DATABASE__URL", "postgresql://app:dbpass123@db/cofre")
    settings = load_settings()
    for text in (
        repr(settings),
        str(settings),
        str(settings.redacted()),
        settings.model_dump_json(),
    ):
        assert PIN not in text
        assert "dbpass123" not in text


def test_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    config = tmp_path / "cofre.toml"
    config.write_text(
        f'data_dir = "/srv/cofre"\n[hsm]\ntoken_label = "t"\npin_file = "{pin_file}"\n'
    )
    monkeypatch.setenv("COFRE_CONFIG", str(config))
    settings = load_settings()
    assert settings.data_dir == Path("/srv/cofre")
    assert settings.hsm.read_pin().get_secret_value() == PIN
    # The environment wins over the file.
    monkeypatch.setenv("COFRE_HSM__TOKEN_LABEL", "from-env")
    assert load_settings().hsm.token_label == "from-env"


def test_unknown_keys_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "cofre.toml"
    config.write_text("[hsm]\ntoken_lable = 'typo'\n")
    monkeypatch.setenv("COFRE_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match="token_lable"):
        load_settings()


def test_two_pin_sources_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="only one"):
        load_settings(hsm=HSMSettings(pin=SecretStr(PIN), pin_file=tmp_path / "p"))


def test_missing_pin_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="COFRE_HSM__PIN"):
        HSMSettings().read_pin()
    with pytest.raises(ConfigurationError, match="cannot read") as info:
        HSMSettings(pin_file=tmp_path / "absent").read_pin()
    assert PIN not in str(info.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        HSMSettings(pin_file=empty).read_pin()


def test_database_url_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'cofre.sqlite3'}"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])  # noqa: S104
def test_a_capture_listener_on_every_interface_needs_its_public_origin(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """Browsers cannot reach https://0.0.0.0: the hosted fields' origin would be wrong
    (and https://:::8444 is not even a URL). A settings error, not a broken checkout."""
    monkeypatch.setenv("COFRE_CAPTURE__PORT", "8444")
    monkeypatch.setenv("COFRE_CAPTURE__HOST", host)
    with pytest.raises(ConfigurationError, match="COFRE_CAPTURE__PUBLIC_ORIGIN"):
        load_settings()
    monkeypatch.setenv("COFRE_CAPTURE__PUBLIC_ORIGIN", "https://pay.example/")
    assert load_settings().capture.origin() == "https://pay.example"


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1", "https://localhost:8444"),
        ("::1", "https://localhost:8444"),
        ("10.0.0.5", "https://10.0.0.5:8444"),
        ("fd00::5", "https://[fd00::5]:8444"),
        ("vault.internal", "https://vault.internal:8444"),
    ],
)
def test_the_capture_origin_of_one_address_is_a_url(
    monkeypatch: pytest.MonkeyPatch, host: str, origin: str
) -> None:
    monkeypatch.setenv("COFRE_CAPTURE__PORT", "8444")
    monkeypatch.setenv("COFRE_CAPTURE__HOST", host)
    assert load_settings().capture.origin() == origin


# Each binds every interface (getaddrinfo with AI_PASSIVE gives 0.0.0.0 or ::).
@pytest.mark.parametrize("host", ["0", "0x0", "0:0:0:0:0:0:0:0", "::0", "0000::"])
def test_every_spelling_of_every_interface_needs_a_public_origin(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv("COFRE_CAPTURE__PORT", "8444")
    monkeypatch.setenv("COFRE_CAPTURE__HOST", host)
    with pytest.raises(ConfigurationError, match="COFRE_CAPTURE__PUBLIC_ORIGIN"):
        load_settings()


# The hosted fields' frame posts with the Origin header its browser serialises; the
# listener compares it with origin() as a string (api.capture: origin == own_origin).
@pytest.mark.parametrize(
    ("host", "browser_origin"),
    [
        ("FD00::5", "https://[fd00::5]:8444"),
        ("fd00:0:0:0:0:0:0:5", "https://[fd00::5]:8444"),
        ("0:0:0:0:0:0:0:1", "https://localhost:8444"),
    ],
)
def test_an_ipv6_origin_is_what_the_browser_sends(
    monkeypatch: pytest.MonkeyPatch, host: str, browser_origin: str
) -> None:
    monkeypatch.setenv("COFRE_CAPTURE__PORT", "8444")
    monkeypatch.setenv("COFRE_CAPTURE__HOST", host)
    assert load_settings().capture.origin() == browser_origin


def test_the_default_https_port_is_not_in_the_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A browser's Origin omits the default port and spells a name in lower case
    (RFC 6454 6.1): the frame's check compares strings (review 22)."""
    monkeypatch.setenv("COFRE_CAPTURE__PORT", "443")
    monkeypatch.setenv("COFRE_CAPTURE__HOST", "Pay.Example")
    assert load_settings().capture.origin() == "https://pay.example"


@pytest.mark.parametrize(
    "name", ["COFRE_POLICYFILE", "COFRE_HSM_PIN_FILE", "cofre_databse__url", "COFRE_TYPO"]
)
def test_a_variable_that_is_no_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Review 41: pydantic-settings ignores a top-level name it does not know, so a typo
    left its setting at the default without a word."""
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigurationError, match="unknown environment variable"):
        load_settings()


def test_service_link_variables_are_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 36: the kubelet's Docker-link variables for a Service named `cofre`
    (`COFRE_SERVICE_HOST`, `COFRE_PORT_8443_TCP_ADDR`...) stopped every pod of its
    namespace that runs the image; the refusal says where they come from and what
    turns them off, as a typo's does not."""
    monkeypatch.setenv("COFRE_SERVICE_HOST", "172.20.1.2")
    monkeypatch.setenv("COFRE_PORT_8443_TCP_ADDR", "172.20.1.2")
    with pytest.raises(ConfigurationError, match="enableServiceLinks: false"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "link"),
    [
        ("COFRE_SERVER_PORT", "8443", False),  # COFRE_SERVER__PORT with one underscore
        ("COFRE_SERVER_METRICS_PORT", "9464", False),
        ("COFRE_PORT", "tcp://172.20.1.2:8443", True),  # the kubelet's, for Service cofre
        ("COFRE_METRICS_PORT", "tcp://172.20.1.3:9464", True),  # ... for cofre-metrics
    ],
)
def test_the_service_link_hint_is_not_given_for_a_typo(
    name: str, value: str, link: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 36 review: the hint was given by name alone, and the likeliest typo of a
    setting, `COFRE_SERVER_PORT` for `COFRE_SERVER__PORT`, is the name the kubelet gives
    a Service `cofre-server`'s address; it told the operator to turn service links off.
    A `<NAME>_PORT` link variable holds `tcp://<address>:<port>`, a port setting a number."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match="unknown environment variable") as refused:
        load_settings()
    assert ("enableServiceLinks" in str(refused.value)) is link, str(refused.value)


@pytest.mark.parametrize(
    "name",
    [
        "COFRE_HSM__TOKEN_LABEL",
        "cofre_log_level",
        "COFRE_OFFICER",
        "COFRE_WITNESS_PORT",
        "COFRE_INFRA_REGION",
        "COFRE_SHIM_LATENCY_US",
        "COFRE_TEST_PG_DSN",
    ],
)
def test_settings_and_other_programs_variables_pass(name: str) -> None:
    assert unknown_variables({name: "1"}) == []


def test_a_proposal_life_longer_than_seven_days_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 27 A3: the proposal life is bounded (168 h), and the bound is the
    evidence verifier's too (it imports nothing of the vault, so the number is kept
    in both and pinned equal here)."""
    assert MAX_PROPOSAL_TTL_HOURS == dual_control.MAX_PROPOSAL_TTL_HOURS == 168
    monkeypatch.setenv("COFRE_KEYS__PROPOSAL_TTL_HOURS", "168")
    assert load_settings().keys.proposal_ttl_hours == 168
    monkeypatch.setenv("COFRE_KEYS__PROPOSAL_TTL_HOURS", "169")
    with pytest.raises(ConfigurationError, match=r"keys\.proposal_ttl_hours.*168"):
        load_settings()


def test_the_idempotency_key_window_is_a_day_by_default_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 27: records of idempotency keys are forgotten after this window; an hour
    at least (retries), a week at most (the table's size is the rate limit times it),
    the bounds the vault itself checks."""
    assert load_settings().tokens.idempotency_key_ttl_hours == 24
    assert timedelta(hours=1) == MIN_IDEMPOTENCY_WINDOW
    assert timedelta(hours=168) == MAX_IDEMPOTENCY_WINDOW
    for bad in ("0.5", "169"):
        monkeypatch.setenv("COFRE_TOKENS__IDEMPOTENCY_KEY_TTL_HOURS", bad)
        with pytest.raises(ConfigurationError, match=r"tokens\.idempotency_key_ttl_hours"):
            load_settings()
    monkeypatch.setenv("COFRE_TOKENS__IDEMPOTENCY_KEY_TTL_HOURS", "168")
    assert load_settings().tokens.idempotency_key_ttl_hours == 168


def _witnesses(n: int) -> str:
    # Distinct key material each: the vault counts witnesses by key (review 30c).
    keys = [{"url": f"https://w{i}.example", "vkey": f"w{i}+0+key{i}"} for i in range(n)]
    return json.dumps(keys)


def test_the_witness_quorum_is_a_majority_by_default_and_a_minority_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 30: every evidence verifier refuses a quorum of half the pinned witnesses
    or fewer (a witness the operator keeps behind cosigns a rewrite), so the vault's own
    quorum (readiness, the head an export covers) is more than half of its witnesses
    unless set, and a setting of half or fewer is refused at start."""
    for n, majority in ((0, 1), (1, 1), (2, 2), (3, 2), (4, 3)):
        monkeypatch.setenv("COFRE_AUDIT__WITNESSES", _witnesses(n))
        assert load_settings().audit.quorum == majority
    monkeypatch.setenv("COFRE_AUDIT__WITNESSES", _witnesses(2))
    monkeypatch.setenv("COFRE_AUDIT__WITNESS_QUORUM", "1")
    with pytest.raises(ConfigurationError, match=r"not more than half of the 2 witnesses"):
        load_settings()
    monkeypatch.setenv("COFRE_AUDIT__WITNESS_QUORUM", "2")
    assert load_settings().audit.quorum == 2
    monkeypatch.setenv("COFRE_AUDIT__WITNESSES", _witnesses(1))
    monkeypatch.setenv("COFRE_AUDIT__WITNESS_QUORUM", "1")
    assert load_settings().audit.quorum == 1


def test_the_witness_quorum_counts_a_key_pinned_under_two_names_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 30c: the vault counted its witnesses by their vkey text, every verifier
    (`require_quorum`, `minority_quorum`) by their public key: one witness's key listed
    under two names (or with a stray space) made a default quorum of 2 that its one key
    can never meet (the vault never witnessed, exports never covered), and refused a
    `witness_quorum` of 1 that is all of it."""
    key = "AQ" + "A" * 42 + "="  # the same key material under both names
    same = [{"url": "https://a.example", "vkey": f"w{i}+0000000{i}+{key}"} for i in (1, 2)]
    monkeypatch.setenv("COFRE_AUDIT__WITNESSES", json.dumps(same))
    assert load_settings().audit.quorum == 1
    monkeypatch.setenv("COFRE_AUDIT__WITNESS_QUORUM", "1")
    assert load_settings().audit.quorum == 1
    spaced = [{"url": "https://a.example", "vkey": v} for v in ("w1+0+k", " w1+0+k ")]
    monkeypatch.delenv("COFRE_AUDIT__WITNESS_QUORUM")
    monkeypatch.setenv("COFRE_AUDIT__WITNESSES", json.dumps(spaced))
    assert load_settings().audit.quorum == 1


def test_the_pkcs11_start_up_bound_is_a_setting_of_15_seconds_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``COFRE_HSM__INIT_TIMEOUT_SECONDS`` (session 33; a constant before): how long
    `cofre serve` waits for the PKCS#11 library's ``C_Initialize`` at start before it
    listens unready. From the environment or the file; a bound that is not a positive
    number is refused at load."""
    assert HSMSettings().init_timeout_seconds == 15.0
    monkeypatch.setenv("COFRE_HSM__INIT_TIMEOUT_SECONDS", "40")
    assert load_settings().hsm.init_timeout_seconds == 40.0
    monkeypatch.delenv("COFRE_HSM__INIT_TIMEOUT_SECONDS")
    config = tmp_path / "cofre.toml"
    config.write_text("[hsm]\ninit_timeout_seconds = 2.5\n", encoding="utf-8")
    monkeypatch.setenv("COFRE_CONFIG", str(config))
    assert load_settings().hsm.init_timeout_seconds == 2.5
    for refused in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv("COFRE_HSM__INIT_TIMEOUT_SECONDS", refused)
        with pytest.raises(ConfigurationError, match=r"hsm\.init_timeout_seconds"):
            load_settings()
