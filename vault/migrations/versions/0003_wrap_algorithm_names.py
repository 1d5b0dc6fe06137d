"""Wrapped data keys record the wrap algorithm, not a python-pkcs11 mechanism name.

Rows written before issue 19 say ``AES_KEY_WRAP_PAD`` / ``AES_KEY_WRAP_KWP`` (RFC 5649)
or ``AES_KEY_WRAP`` (RFC 3394). The same bytes unwrap under CloudHSM's vendor mechanisms,
so the record names the algorithm (`hsm.mechanisms.WrapAlgorithm`) and each token's
mechanism is chosen when the key is used.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Kept literal: a migration must not change when the code it once matched changes.
_RELABEL = {
    "AES_KEY_WRAP_PAD": "aes-kwp-rfc5649",
    "AES_KEY_WRAP_KWP": "aes-kwp-rfc5649",
    "AES_KEY_WRAP": "aes-kw-rfc3394",
}


def upgrade() -> None:
    for old, new in _RELABEL.items():
        op.execute(
            f"UPDATE data_keys SET wrap_mechanism = '{new}' WHERE wrap_mechanism = '{old}'"  # noqa: S608 - constants above, no input
        )


def downgrade() -> None:
    op.execute(
        "UPDATE data_keys SET wrap_mechanism = 'AES_KEY_WRAP_PAD' "
        "WHERE wrap_mechanism = 'aes-kwp-rfc5649'"
    )
    op.execute(
        "UPDATE data_keys SET wrap_mechanism = 'AES_KEY_WRAP' "
        "WHERE wrap_mechanism = 'aes-kw-rfc3394'"
    )
