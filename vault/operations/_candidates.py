"""Tokenize's fresh tokens: the first candidate drawn for a card, and the ones drawn
again when it is taken or equals a card the vault holds. Kept apart so that
`vault.operations.tokenize` stays readable in one sitting.

IN PCI SCOPE, holds card data.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from sqlalchemy import Connection

from policies.formats import FormatSpec, FormatType, LuhnMode
from vault.errors import TokenSpaceExhausted
from vault.keyring import KeyPurpose
from vault.operations._checks import TokenizeChecks
from vault.operations._items import _Item
from vault.operations._statements import _HELD, _taken
from vault.pan import Pan
from vault.tokens import FpeTokenizer, random_token_candidates, uuid_token

_CANDIDATE_CHUNK: Final = 64


class TokenCandidates(TokenizeChecks):
    """How tokenize draws a new token and settles it against the store."""

    def _first_candidate(
        self,
        spec: FormatSpec,
        pan: Pan,
        domain: str,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> str:
        """A new card's first candidate token; `randbelow` draws a random format's
        (`vault.tokens.RandomDraws.randbelow` for a batch's cards)."""
        if spec.type is FormatType.UUID:
            return uuid_token()
        if spec.type is FormatType.FPE:
            version = self._keyring.active_version(KeyPurpose.FF1)
            return FpeTokenizer(self._keyring.ff1(version)).encrypt(spec, pan, domain=domain)
        return next(random_token_candidates(spec, pan, randbelow))

    def _settle_candidates(
        self, connection: Connection, fresh: dict[int, str], items: Sequence[_Item], domain: str
    ) -> None:
        """Replace every candidate that is taken (in the store or earlier in the call)
        or that equals a held PAN, one by one; the rest were checked in one query."""
        values = list(fresh.values())
        taken: set[str] = set()
        for start in range(0, len(values), 500):
            taken.update(_taken(connection, values[start : start + 500]))
        # The cards this call stores are not in the store yet, and a token must equal
        # none of them either (review 14: a batch of one bucket's cards could).
        stored = {items[index].request.pan.reveal() for index in fresh}
        used: set[str] = set()
        for index, candidate in list(fresh.items()):
            spec = items[index].spec
            token = candidate
            if (
                candidate in taken
                or candidate in used
                or (
                    self._may_be_card(spec, candidate)
                    and (candidate in stored or self._is_held_pan(connection, candidate))
                )
            ):
                token = self._new_token(
                    connection, spec, items[index].request.pan, domain, avoid=used | stored
                )
            fresh[index] = token
            used.add(token)

    def _new_token(
        self,
        connection: Connection,
        spec: FormatSpec,
        pan: Pan,
        domain: str,
        avoid: set[str] | None = None,
    ) -> str:
        if spec.type is FormatType.UUID:
            candidates: Iterator[str] = iter([uuid_token(), uuid_token(), uuid_token()])
        elif spec.type is FormatType.FPE:  # the card's FF1 token, then its re-issues
            version = self._keyring.active_version(KeyPurpose.FF1)
            fpe = FpeTokenizer(self._keyring.ff1(version))
            candidates = fpe.candidates(spec, pan, domain=domain)
        else:
            candidates = random_token_candidates(spec, pan)
        size = 1  # the first candidate is almost always free: try it alone
        while True:
            chunk = [c for _, c in zip(range(size), candidates, strict=False)]
            size = 2 if spec.type is FormatType.FPE else _CANDIDATE_CHUNK  # a walk each
            if not chunk:
                raise TokenSpaceExhausted(
                    "every token of this format for this BIN and last four is taken"
                )
            taken = _taken(connection, chunk)
            for candidate in chunk:
                if candidate in taken or (avoid is not None and candidate in avoid):
                    continue
                if self._may_be_card(spec, candidate) and self._is_held_pan(connection, candidate):
                    continue
                return candidate

    def _may_be_card(self, spec: FormatSpec, candidate: str) -> bool:
        """Whether the token `candidate` could be a card the vault holds, which it must
        never equal: one that passes Luhn (or may), or one in a range the policy exempts
        from Luhn, whose private-label cards fail it (review 15: a ``luhn = "fail"``
        token keeps such a card's BIN and last four, so it stays in its range)."""
        if spec.type is FormatType.UUID:
            return False
        if spec.luhn is not LuhnMode.FAIL:
            return True
        return self._policy.policy.luhn_exempt_prefix(candidate) is not None

    def _is_held_pan(self, connection: Connection, candidate: str) -> bool:
        fps = self._fingerprints(candidate)
        return connection.execute(_HELD, {"fps": fps}).first() is not None
