"""The capture listener's origin as the wiring hands it to the hosted fields' checks:
spelt as a browser sends ``Origin``, or a configuration error at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre.errors import ConfigurationError
from cofre.settings import CaptureSettings, Settings
from cofre_cli.capture import capture_origin
from cofre_cli.wiring import build_runtime
from hsm.provider import HSMProvider


def _settings(**capture: object) -> Settings:
    return Settings(capture=CaptureSettings.model_validate({"port": 8444, **capture}))


@pytest.mark.parametrize(
    ("configured", "origin"),
    [
        ("https://Pay.Example", "https://pay.example"),
        ("https://pay.example:443/", "https://pay.example"),
        ("HTTPS://pay.example:8443", "https://pay.example:8443"),
    ],
)
def test_a_public_origin_is_spelt_as_browsers_send_it(configured: str, origin: str) -> None:
    """The frame's check compares the browser's Origin with this string (review 22):
    a configured ``https://Pay.Example:443/`` would never match ``https://pay.example``."""
    assert capture_origin(_settings(public_origin=configured)) == origin


@pytest.mark.parametrize(
    "configured",
    ["http://pay.example", "https://pay.example/fields", "https://*.example", "pay.example"],
)
def test_a_public_origin_that_is_not_an_https_origin_stops_the_start(configured: str) -> None:
    with pytest.raises(ConfigurationError, match="COFRE_CAPTURE__PUBLIC_ORIGIN"):
        capture_origin(_settings(public_origin=configured))


def test_the_default_origin_is_unchanged() -> None:
    assert capture_origin(_settings()) == "https://localhost:8444"


def test_a_vault_without_a_capture_listener_still_starts(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """Capture off is the default: no capture app is built, so no origin is checked
    (review 23: e7a7318 normalised ``https://localhost:None`` and every `cofre serve`
    without a capture port exited with a configuration error)."""
    data = tmp_path / "data"
    data.mkdir()
    policy = data / "policy.toml"
    policy.write_text("")
    runtime = build_runtime(Settings(data_dir=data, policy_file=policy), provider=hsm_provider)
    runtime.close()


@pytest.mark.parametrize(
    ("configured", "browser_sends"),
    [
        # RFC 5952 / WHATWG serialisation of an IPv6 literal
        ("https://[FD00:0:0:0:0:0:0:5]:8444", "https://[fd00::5]:8444"),
        ("https://[fd00::0005]:8444", "https://[fd00::5]:8444"),
        ("https://[2001:DB8:0:0:1:0:0:1]", "https://[2001:db8::1:0:0:1]"),
    ],
)
def test_an_ipv6_public_origin_is_spelt_as_browsers_send_it(
    configured: str, browser_sends: str
) -> None:
    assert capture_origin(_settings(public_origin=configured)) == browser_sends


@pytest.mark.parametrize(
    ("configured", "browser_sends"),
    [
        # A host whose last label is a number is an IPv4 address to a browser (WHATWG
        # URL "ends in a number"); Python's ipaddress refuses these spellings, so they
        # pass as DNS names and are never what the browser sends.
        ("https://010.0.0.1:8444", "https://8.0.0.1:8444"),
        ("https://10.1:8444", "https://10.0.0.1:8444"),
        ("https://0x7f.0.0.1:8444", "https://127.0.0.1:8444"),
        # A zone id is not allowed in a URL by browsers: no Origin ever carries one.
        ("https://[fe80::1%25eth0]:8444", None),
    ],
)
def test_a_host_no_browser_sends_as_configured_is_refused_or_canonical(
    configured: str, browser_sends: str | None
) -> None:
    try:
        origin = capture_origin(_settings(public_origin=configured))
    except ConfigurationError:
        return
    assert origin == browser_sends


def test_an_idn_or_trailing_dot_origin_is_refused_with_its_setting_named() -> None:
    for configured in ("https://Bücher.example", "https://pay.example."):
        with pytest.raises(ConfigurationError, match="COFRE_CAPTURE__PUBLIC_ORIGIN"):
            capture_origin(_settings(public_origin=configured))
    assert capture_origin(_settings(public_origin="https://XN--BCHER-KVA.example")) == (
        "https://xn--bcher-kva.example"
    )


def test_the_default_ipv6_origin_is_canonical() -> None:
    settings = Settings(capture=CaptureSettings.model_validate({"port": 8444, "host": "FD00:0::5"}))
    assert capture_origin(settings) == "https://[fd00::5]:8444"


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.1", "https://localhost:8444"),
        ("0x7f.0.0.1", "https://localhost:8444"),
        ("10.1", "https://10.0.0.1:8444"),
    ],
)
def test_a_host_in_another_ipv4_spelling_gets_the_origin_of_the_address_it_binds(
    host: str, origin: str
) -> None:
    """getaddrinfo binds these (as `cofre.origins.every_interface` reads them); the origin is the
    bound address's, not a start refused for a setting the operator never set."""
    assert capture_origin(_settings(host=host)) == origin


@pytest.mark.parametrize("host", ["fe80::1%eth0", "vault_1"])
def test_a_host_that_makes_no_origin_stops_the_start_naming_the_host(host: str) -> None:
    """Review 25: `ipv6_text` drops a zone id, so the listener started with an origin no
    browser reaches ([fe80::1]); and the error named COFRE_CAPTURE__PUBLIC_ORIGIN, which
    the operator never set."""
    with pytest.raises(ConfigurationError, match="COFRE_CAPTURE__HOST"):
        capture_origin(_settings(host=host))
