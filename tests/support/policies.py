"""Policy pieces the tests add to the dev policy.

The dev policy gives nobody a full PAN (the relay sends it to the acquirer from inside
the vault). Tests that check a full reveal use `settlement`, an in-scope service that may
read the payment service's tokens in full, as a real deployment might have for refunds
or a move to another processor.
"""

from __future__ import annotations

from typing import Final

from api.pki import DEV_IDENTITIES

SETTLEMENT_POLICY: Final = """
[identities."spiffe://cofre/settlement"]
description = "Tests only: an in-scope service that reads payments' cards in full"
operations = ["detokenize", "detokenize_masked", "metadata"]
reveal = "full"
read_domains = ["spiffe://cofre/payments"]
"""

TEST_IDENTITIES: Final = (*DEV_IDENTITIES, "settlement")
