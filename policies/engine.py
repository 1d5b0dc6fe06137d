"""Authorisation: `authorize` raises `PolicyDenied`; it never returns a boolean.

IN PCI SCOPE. A forgotten ``if`` cannot turn a denial into a grant, because there is
nothing to test: a call either returns the identity's rules or raises.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from policies.errors import PolicyDenied, RateLimited
from policies.formats import FormatSpec
from policies.models import Action, IdentityPolicy, Policy, RateLimit, Reveal


class RateLimiter:
    """Token buckets per identity; thread-safe. `clock` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # identity -> (tokens, stamp)

    def take(self, identity: str, limit: RateLimit) -> None:
        """Take one request from `identity`'s bucket. Raises `RateLimited` when empty."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(identity, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - stamp) * limit.per_second)
            if tokens < 1.0:
                self._buckets[identity] = (tokens, now)
                retry_after = (1.0 - tokens) / limit.per_second
                raise RateLimited(
                    f"rate limit of {limit.per_second:g}/s (burst {limit.burst}) exceeded; "
                    f"retry after {retry_after:.2f}s",
                    retry_after,
                )
            self._buckets[identity] = (tokens - 1.0, now)


class PolicyEngine:
    """Answers "may `identity` do `action`?" for one loaded `Policy`."""

    def __init__(self, policy: Policy, limiter: RateLimiter | None = None) -> None:
        self._policy = policy
        self._limiter = limiter or RateLimiter()

    @property
    def policy(self) -> Policy:
        return self._policy

    def rules_for(self, identity: str) -> IdentityPolicy:
        """Return `identity`'s rules. Raises `PolicyDenied` for an unknown identity."""
        rules = self._policy.identities.get(identity)
        if rules is None:
            raise PolicyDenied("this identity is not in the policy")
        return rules

    def authorize(
        self, identity: str, action: Action, *, token_format: str | None = None
    ) -> IdentityPolicy:
        """Return `identity`'s rules when it may perform `action` (with `token_format`).

        Raises `PolicyDenied` otherwise. Does not count against the rate limit.
        """
        rules = self.rules_for(identity)
        if action not in rules.operations:
            raise PolicyDenied(f"this identity may not call {action.value}")
        if token_format is not None and token_format not in rules.formats:
            raise PolicyDenied(f"this identity may not use token format {token_format!r}")
        return rules

    def token_format(self, name: str) -> FormatSpec:
        """Return the format spec called `name`. Raises `PolicyDenied` for an unknown one."""
        spec = self._policy.format(name)
        if spec is None:
            raise PolicyDenied(f"unknown token format {name!r}")
        return spec

    def reveal(self, identity: str) -> Reveal:
        return self.rules_for(identity).reveal

    def check_rate(self, identity: str) -> None:
        """Count one request for `identity`. Raises `RateLimited` past its limit and
        `PolicyDenied` for an unknown identity."""
        rules = self.rules_for(identity)
        if rules.rate_limit is not None:
            self._limiter.take(identity, rules.rate_limit)
