"""Tokenize's checks before any HSM call: one item's (`_check`) and the call's rate
limit and oracle buckets (`_refuse_early`).

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from cofre.redaction import name_holds_pan_like
from policies.formats import MIN_CANDIDATES, SmallSpace, hidden_candidates, may_converge
from policies.models import IdentityPolicy
from vault.errors import FormatNotApplicable, InvalidMetadata
from vault.limits import oracle_bucket
from vault.models import CallContext, TokenizeRequest
from vault.operations._early import EarlyRate
from vault.operations._inputs import card_bundle, expiry, validate_metadata
from vault.operations._items import _guard_kind, _Item
from vault.tokens import check_applicable


class TokenizeChecks(EarlyRate):
    """What tokenize refuses before it spends an HSM call."""

    def _check(self, domain: str, request: TokenizeRequest) -> _Item:
        """Check one item; its fingerprints are left for `_plan`. Raises the item's
        `VaultError`."""
        spec = self._policy.token_format(request.format)
        check_applicable(spec, request.pan)
        self._check_luhn(request.pan)
        card = card_bundle(request, spec, self._clock())
        code_epoch = None
        if request.security_code is not None:  # its hour's HSM key, made if missing
            with self._storage():
                code_epoch = self._codes.ensure_epoch(self._clock(), actor="cofre")
        metadata = validate_metadata(request.metadata)
        expiry(self._clock(), request.ttl_seconds)
        key = request.idempotency_key
        if key is not None and not 1 <= len(key) <= 128:
            raise InvalidMetadata("idempotency keys must be 1 to 128 characters")
        if key is not None and name_holds_pan_like(key):
            # It is stored in clear beside the token, like metadata.
            raise InvalidMetadata("an idempotency key must not look like a card number")
        length = len(request.pan)
        convergent = may_converge(spec, length)
        if key is not None and hidden_candidates(spec, length) < MIN_CANDIDATES:
            # A retry with the key answers the token only for the same card (409 for
            # another): over a few hundred candidates that confirms guesses as
            # convergence would, so keys go only where convergence may.
            raise FormatNotApplicable(
                f"idempotency keys are accepted only where a token hides at least "
                f"{MIN_CANDIDATES:,} possible card numbers; {length}-digit cards in format "
                f"{request.format!r} hide fewer (send the call without a key)"
            )
        if spec.deterministic and not convergent and spec.small_space is SmallSpace.REFUSE:
            raise FormatNotApplicable(
                f"format {request.format!r} converges (the same card gives the same token) "
                f"and {length}-digit cards leave fewer than {MIN_CANDIDATES:,} possible card "
                "numbers behind a token, so a caller could confirm a guess: refused by the "
                "rule on_small_space = 'refuse' (use a longer card or another format)"
            )
        kind = _guard_kind(spec, request, converges=convergent)
        if kind is None:
            guard = None
        else:
            # A card's item is its fingerprint, set by `_plan` once the call's HMACs are
            # done (b"" until then); only a fresh token's item is a random draw.
            item = b"" if kind == "card" else secrets.token_bytes(32)
            guard = (oracle_bucket(request.pan), item)
        return _Item(
            request=request,
            spec=spec,
            card=card,
            code_epoch=code_epoch,
            metadata=metadata,
            convergent=convergent,
            fingerprint=b"",
            fp_version=0,
            known_fps=[],
            guard=guard,
            guards_card=kind == "card",
        )

    def _refuse_early(
        self, ctx: CallContext, rules: IdentityPolicy, requests: Sequence[TokenizeRequest]
    ) -> None:
        """Refuse before any HSM call what the transaction would refuse anyway (a spent
        rate limit, a call that alone overfills an oracle bucket), so that refused calls
        cannot spend the HSM's capacity. Charges nothing. The bucket is read at most
        about once a second while it has room (`vault._early_room.EarlyRoom`)."""
        self._refuse_spent(ctx, rules, len(requests))
        now = self._clock()
        guarded = []
        converges: dict[tuple[str, int], bool] = {}  # a batch's cards share a few shapes
        for request in requests:
            spec = self._policy.policy.format(request.format)
            if spec is None:
                continue
            shape = (request.format, len(request.pan))
            if shape not in converges:
                converges[shape] = may_converge(spec, shape[1])
            if _guard_kind(spec, request, converges=converges[shape]) is not None:
                guarded.append(request.pan)
        self._limits.check_call_buckets(rules.oracle_guard, guarded, now)
