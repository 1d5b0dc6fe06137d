"""A fresh SoftHSM2 token with Cofre's key hierarchy, for bench scripts."""

from __future__ import annotations

from pathlib import Path

from hsm.keys import KeyHierarchy
from hsm.provider import HSMProvider, provider_from_settings
from tests.support.softhsm import create_token


def fresh_provider(base: Path) -> HSMProvider:
    """A provider for a new token labelled "bench" under `base` (hierarchy created)."""
    token = create_token(base, label="bench")
    provider = provider_from_settings(token.settings())
    KeyHierarchy(provider).initialize()
    return provider
