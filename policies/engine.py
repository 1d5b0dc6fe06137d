"""Authorisation: `authorize` raises `PolicyDenied`; it never returns a boolean.

IN PCI SCOPE. A forgotten ``if`` cannot turn a denial into a grant, because there is
nothing to test: a call either returns the identity's rules or raises.
"""

from __future__ import annotations

from policies.errors import PolicyDenied
from policies.formats import FormatSpec
from policies.models import Action, IdentityPolicy, Policy


class PolicyEngine:
    """Answers "may `identity` do `action`?" for one loaded `Policy`."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

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

        Raises `PolicyDenied` otherwise. Rate limits and quotas are the vault's (they
        live in the database, shared by every node).
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

    def domain(self, identity: str) -> str:
        """Return `identity`'s token domain. Raises `PolicyDenied` for an unknown one."""
        return self.rules_for(identity).domain_of(identity)

    def readable_domains(self, identity: str) -> frozenset[str]:
        """Return the domains whose tokens `identity` may read: its own and those its
        rules name. Raises `PolicyDenied` for an unknown identity."""
        rules = self.rules_for(identity)
        return rules.read_domains | {rules.domain_of(identity)}
