"""PCI DSS 10.2.2: an entry of an API request records its origination (`Source`: the
peer's address and its certificate's SHA-256), written only when set, so every entry
without one (the CLI's, the sequencer's, every older one) keeps its exact bytes."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from audit.log import (
    AuditEvent,
    HexDigest,
    Outcome,
    Source,
    canonical_payload,
    canonical_payloads,
)
from cofre.redaction import mask_pan_like

AT = datetime(2026, 12, 5, 3, 0, 0, 123456, tzinfo=UTC)
# A SHA-256 with a 16-digit Luhn-valid run in it ("4111111111111111"): masking it as an
# ordinary string would break the link from the entry to the certificate.
DIGITY_SHA256 = "ab" + "4111111111111111" + "c" * 46
EVENT = AuditEvent(
    action="key.create", outcome=Outcome.SUCCESS, actor="officer", key_id="cofre-pan-v1"
)


def test_an_entry_without_a_source_keeps_its_exact_bytes() -> None:
    # The bytes of a CLI action's entry before sources existed (the Merkle leaf data).
    assert canonical_payload(EVENT, AT) == (
        '{"action":"key.create","actor":"officer","details":{},"key_id":"cofre-pan-v1",'
        '"outcome":"success","request_id":null,"time":"2026-12-05T03:00:00.123456Z",'
        '"token_id":null,"v":1}'
    )
    assert canonical_payload(dataclasses.replace(EVENT, source=Source()), AT) == (
        canonical_payload(EVENT, AT)
    )


def test_a_source_is_written_with_the_fingerprint_exactly() -> None:
    assert mask_pan_like(DIGITY_SHA256) != DIGITY_SHA256  # why the fingerprint is a HexDigest
    source = Source(address="192.168.100.200", certificate=HexDigest(DIGITY_SHA256))
    entry = json.loads(canonical_payload(dataclasses.replace(EVENT, source=source), AT))
    assert entry["source"] == {"address": "192.168.100.200", "certificate": DIGITY_SHA256}
    browser = json.loads(
        canonical_payload(dataclasses.replace(EVENT, source=Source(address="2001:db8::1")), AT)
    )
    assert browser["source"] == {"address": "2001:db8::1"}


def test_an_address_is_masked_like_any_string_and_a_plain_fingerprint_refused() -> None:
    forged = Source(address="41111111 11111111 4111111111111111")
    entry = canonical_payload(dataclasses.replace(EVENT, source=forged), AT)
    assert "4111111111111111" not in entry
    with pytest.raises(TypeError):
        canonical_payload(
            dataclasses.replace(EVENT, source=Source(certificate=DIGITY_SHA256)),  # type: ignore[arg-type]
            AT,
        )


def test_a_batch_shares_one_source_and_renders_each_entry_exactly() -> None:
    source = Source(address="10.0.0.7", certificate=HexDigest(DIGITY_SHA256))
    other = Source(address="10.0.0.8", certificate=HexDigest(DIGITY_SHA256))
    base = AuditEvent(
        action="tokenize", outcome=Outcome.SUCCESS, actor="spiffe://cofre/payments", request_id="r"
    )
    events = [
        dataclasses.replace(base, token_id=f"t-{n}", source=source if n % 3 else other)
        for n in range(30)
    ]
    events.append(dataclasses.replace(base, token_id="t-none"))
    assert canonical_payloads(events, AT) == [canonical_payload(e, AT) for e in events]
    assert json.loads(canonical_payloads(events, AT)[1])["source"]["address"] == "10.0.0.7"
    assert "source" not in json.loads(canonical_payloads(events, AT)[-1])
