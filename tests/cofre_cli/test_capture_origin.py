"""The capture listener's origin as the wiring hands it to the hosted fields' checks:
spelt as a browser sends ``Origin``, or a configuration error at start."""

from __future__ import annotations

import pytest

from cofre.errors import ConfigurationError
from cofre.settings import CaptureSettings, Settings
from cofre_cli.capture import capture_origin


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
