"""Thin adapter services for the rest of the platform: payments, store, ledger and
Getnet routing, showing the intended flow. They handle tokens and masked PANs only.

OUT OF PCI SCOPE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from adapters.client import CaptureSession, CofreClient
from adapters.errors import AdapterError


@dataclass(frozen=True)
class Authorization:
    approved: bool
    authorization_code: str | None
    card_token: str | None
    raw: dict[str, Any] = field(default_factory=dict)


class GetnetRoutingAdapter:
    """Sends authorizations to Getnet through the vault's relay: the card travels as a
    token to the vault, which puts the card in (the PAN, and the expiry, the name and
    the security code held for the token where the route's ``card`` pointers say) and
    calls the acquirer. This adapter never sees a card number, an expiry (a reveal to an
    identity outside PCI scope carries none, review 31) or a code; a second
    authorization with the same token carries no code."""

    route = "getnet-authorize"

    def __init__(self, vault: CofreClient) -> None:
        self._vault = vault

    def authorize(
        self, card_token: str, amount: Decimal, currency: str, order_id: str
    ) -> Authorization:
        status, body = self._vault.relay(
            self.route,
            {
                "card": {"number": card_token},
                "amount": str(amount),
                "currency": currency,
                "order_id": order_id,
            },
        )
        # No body (a 204 relayed) or not an object: nothing approved, nothing to read.
        answer = body if isinstance(body, dict) else {}
        card = answer.get("card")
        card = card if isinstance(card, dict) else {}
        return Authorization(
            approved=status == 200 and answer.get("status") == "APPROVED",
            authorization_code=answer.get("authorization_code"),
            card_token=card.get("number"),
            raw=answer,
        )


@dataclass
class LedgerEntry:
    order_id: str
    amount: Decimal
    currency: str
    masked_pan: str
    authorization_code: str | None


class LedgerAdapter:
    """Records payments with the masked card for statements."""

    def __init__(self, vault: CofreClient) -> None:
        self._vault = vault
        self.entries: list[LedgerEntry] = []

    def record(
        self,
        order_id: str,
        amount: Decimal,
        currency: str,
        card_token: str,
        authorization_code: str | None,
    ) -> LedgerEntry:
        entry = LedgerEntry(
            order_id,
            amount,
            currency,
            self._vault.detokenize_masked(card_token),
            authorization_code,
        )
        self.entries.append(entry)
        return entry


class StoreAdapter:
    """Card on file: keeps tokens, shows masked cards."""

    def __init__(self, vault: CofreClient) -> None:
        self._vault = vault
        self.cards: dict[str, str] = {}  # customer -> token

    def save_card(self, customer: str, card_token: str) -> str:
        self.cards[customer] = card_token
        return self._vault.detokenize_masked(card_token)


class PaymentsAdapter:
    """A checkout: open a hosted-fields capture session for the shop's page (the card
    goes from the shopper's browser to the vault, never through here), then authorize
    the token it yields with Getnet via the vault, then record in the ledger."""

    def __init__(
        self,
        getnet: GetnetRoutingAdapter,
        ledger: LedgerAdapter,
        vault: CofreClient | None = None,
        formats: tuple[str, ...] = ("pan_bin6_last4",),
    ) -> None:
        self._getnet = getnet
        self._ledger = ledger
        self._vault = vault
        self._formats = formats

    def open_checkout(self, page_origin: str, *, ttl_seconds: int = 600) -> CaptureSession:
        """A capture session for the checkout page at `page_origin` (single use). Give
        its id and secret to that page only; the page gets a card token back."""
        if self._vault is None:
            raise AdapterError("this payments adapter has no vault client for capture sessions")
        return self._vault.create_capture_session(
            page_origin, self._formats, ttl_seconds=ttl_seconds
        )

    def pay(
        self, order_id: str, card_token: str, amount: Decimal, currency: str = "BRL"
    ) -> Authorization:
        authorization = self._getnet.authorize(card_token, amount, currency, order_id)
        if authorization.approved:
            self._ledger.record(
                order_id, amount, currency, card_token, authorization.authorization_code
            )
        return authorization
