"""The shared tokens' Cofre keys, checked after every test module.

Most tests share one SoftHSM2 token (`softhsm_token`, `hsm_provider`) and, through the
CloudHSM-behaviour shim, one more (`shim_provider`). A test that rotates a token key on
one of them (`cofre-kek-v2`) or leaves a security-code epoch key there changes what
every later test finds: a test expecting version 1 then fails, many modules later, in an
order that only a full run shows (session 27's CI lost seven tests that way). This guard
names the module that changed the keys instead.

It only reports: a module's change is recorded as that module's error at teardown, and
the guard then takes the token as it is as the new baseline, so one change is reported
once. It does not destroy what it finds, because a session fixture may have made the key
on purpose and still use it; such a fixture registers its labels with `allow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hsm.provider import HSMProvider

__all__ = ["SharedTokenKeys", "shared_token_keys"]


def _cofre_labels(provider: HSMProvider) -> frozenset[str]:
    # Cofre's own labels only (`cofre-kek-v1`, `cofre-csc-e...`): a test may make a key of
    # its own under a unique label, which no other test can meet.
    return frozenset(info.label for info in provider.list_keys() if info.label.startswith("cofre-"))


@dataclass
class _Watched:
    provider: HSMProvider
    baseline: frozenset[str]


@dataclass
class SharedTokenKeys:
    """The tokens the session shares, each with the Cofre labels it is expected to hold."""

    _tokens: dict[str, _Watched] = field(default_factory=dict)

    def watch(self, name: str, provider: HSMProvider) -> None:
        """Start watching `provider`'s token; its labels now are the baseline."""
        self._tokens[name] = _Watched(provider, _cofre_labels(provider))

    def allow(self, name: str, labels: frozenset[str]) -> None:
        """Add `labels` to the baseline of token `name` (a session fixture's own keys)."""
        watched = self._tokens.get(name)
        if watched is not None:
            watched.baseline = watched.baseline | labels

    def changes(self) -> list[str]:
        """Describe each token whose Cofre labels differ from its baseline, and rebaseline."""
        found = []
        for name, watched in self._tokens.items():
            now = _cofre_labels(watched.provider)
            added, removed = sorted(now - watched.baseline), sorted(watched.baseline - now)
            if added or removed:
                found.append(
                    f"{name} token: added {added or 'nothing'}, removed {removed or 'nothing'}"
                )
                watched.baseline = now
        return found


_KEY: pytest.StashKey[SharedTokenKeys] = pytest.StashKey()


def shared_token_keys(config: pytest.Config) -> SharedTokenKeys:
    """The session's `SharedTokenKeys` (one per pytest process)."""
    keys = config.stash.get(_KEY, None)
    if keys is None:
        keys = config.stash[_KEY] = SharedTokenKeys()
    return keys
