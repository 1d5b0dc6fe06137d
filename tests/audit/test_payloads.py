"""`canonical_payloads` renders a batch's entries once and spells each token id into
them (issue 21): every entry's bytes must be exactly `canonical_payload`'s, since they
are the Merkle leaf data `cofre audit verify` rehashes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.log import (
    AuditEvent,
    DetailValue,
    HexDigest,
    Outcome,
    canonical_payload,
    canonical_payloads,
)

AT = datetime(2026, 12, 2, 11, 0, 0, 123456, tzinfo=UTC)

# Few distinct values, so that entries share their renderings; among them a card number
# (masked), digits that mask only as a plain string, and values equal across types.
_texts = st.sampled_from(
    ["tokenize", "spiffe://cofre/payments", "req-1", "4111111111111111", "", 'a"b\\c', "ç€𝄞"]
)
_values = st.one_of(
    _texts,
    st.sampled_from([0, 1, True, False, None, 4111111111111111]),
    st.just(HexDigest("123456789012345678901234")),
    st.just("123456789012345678901234"),
)
_token_ids = st.one_of(
    st.none(),
    st.uuids().map(str),
    st.text(max_size=128),
    st.just("\x00cofre:token-id\x00"),  # the stand-in itself
)
_events = st.builds(
    AuditEvent,
    action=_texts,
    outcome=st.sampled_from(list(Outcome)),
    actor=_texts,
    request_id=st.one_of(st.none(), _texts),
    token_id=_token_ids,
    key_id=st.one_of(st.none(), st.just("k-1")),
    details=st.dictionaries(st.sampled_from(["format", "result", "n"]), _values, max_size=3),
    document=st.one_of(st.none(), st.just("policy 4111111111111111")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_events, min_size=0, max_size=40))
def test_a_batch_of_entries_is_rendered_byte_for_byte(events: list[AuditEvent]) -> None:
    assert canonical_payloads(events, AT) == [canonical_payload(e, AT) for e in events]


def test_a_thousand_entries_that_differ_in_their_token_id() -> None:
    events = [
        AuditEvent(
            "tokenize",
            Outcome.SUCCESS,
            "spiffe://cofre/payments",
            "req-1",
            token_id=f"00000000-0000-4000-8000-{n:012d}",
            details={"format": "pan_bin6_last4", "result": "new"},
        )
        for n in range(1000)
    ]
    assert canonical_payloads(events, AT) == [canonical_payload(e, AT) for e in events]


def test_values_equal_across_types_are_rendered_each_as_its_own() -> None:
    # True == 1 and a HexDigest equals the plain string (masked where the digest is
    # not): one rendering shared between them would write the wrong bytes.
    digits = "123456789012345678901234"
    values: list[DetailValue] = [True, 1, HexDigest(digits), digits, False, 0]
    events = [
        AuditEvent("probe", Outcome.SUCCESS, "someone", token_id=str(n), details={"n": v})
        for n, v in enumerate(values * 3)
    ]
    payloads = canonical_payloads(events, AT)
    assert payloads == [canonical_payload(e, AT) for e in events]
    assert len({p.split('"token_id"')[0] for p in payloads}) == len(values)


def _batch(details: dict[str, DetailValue], n: int = 8) -> list[AuditEvent]:
    return [
        AuditEvent("tokenize", Outcome.SUCCESS, "someone", token_id=f"id-{i}", details=details)
        for i in range(n)
    ]


@pytest.mark.parametrize("key", ["token_id", 'x"token_id'])
def test_a_detail_holding_the_stand_in_is_rendered_whole(key: str) -> None:
    # Review 14: the stand-in's field also written inside details was found first, and
    # the id went there.
    events = _batch({key: "\x00cofre:token-id\x00"})
    assert canonical_payloads(events, AT) == [canonical_payload(e, AT) for e in events]


def test_a_digest_key_never_lends_its_rendering_to_a_card_key() -> None:
    # Review 14: HexDigest(card) == card, and only the plain string is masked; keyed
    # without its type, the second entry wrote the card in clear.
    card = "4111111111111111"
    events = [
        AuditEvent(
            "probe",
            Outcome.SUCCESS,
            "someone",
            token_id=f"id-{i}",
            details={(HexDigest(card) if i == 0 else card): 1},
        )
        for i in range(8)
    ]
    payloads = canonical_payloads(events, AT)
    assert all(card not in p for p in payloads[1:])
    assert payloads == [canonical_payload(e, AT) for e in events]


@pytest.mark.parametrize(
    "token_id",
    [None, "", '"', "\\", '\\"', "\x00", "\x1f\u2028\u2029", '","v":2,"x":"', "é€𝄞", "a" * 128],
)
def test_odd_token_ids_are_spelt_as_json_spells_them(token_id: str | None) -> None:
    events = [
        AuditEvent("t", Outcome.SUCCESS, "a", token_id=t, details={"format": "f"})
        for t in [token_id] * 4 + ["plain"] * 4
    ]
    payloads = canonical_payloads(events, AT)
    assert payloads == [canonical_payload(e, AT) for e in events]
    assert all(json.loads(p)["v"] == 1 for p in payloads)


def test_an_integer_long_enough_to_be_a_card_is_written_masked() -> None:
    # Review 15: integer details went out as they were, a card number among them.
    card = 4111111111111111
    events = [
        AuditEvent("probe", Outcome.SUCCESS, "someone", token_id=str(n), details={"n": v})
        for n, v in enumerate([card, -card, 10**11 - 1, 7, 411111111111] * 2)
    ]
    for payloads in (canonical_payloads(events, AT), [canonical_payload(e, AT) for e in events]):
        assert not any("4111111111111111" in p or "411111111111" in p for p in payloads)
        values = [json.loads(p)["details"]["n"] for p in payloads]
        assert values[2:4] == [10**11 - 1, 7]  # fewer digits than a card: kept, as numbers
        assert all(isinstance(v, str) for v in (values[0], values[1], values[4]))


def test_every_string_an_entry_takes_is_encodable_as_utf8() -> None:
    """Review of session 32: a Linux file name's undecodable byte reaches an entry as a
    lone surrogate (`cofre audit export --out`); its canonical payload, the leaf's
    bytes, must still be UTF-8 (it raised UnicodeEncodeError), and distinct names stay
    distinct. The document is held to the same."""
    names = ["\udcff", "\ud800x", "a\udcff" + "4111" + "1" * 12, "ç€𝄞"]
    payloads = set()
    for name in names:
        event = AuditEvent(
            action="audit_read",
            outcome=Outcome.SUCCESS,
            actor=name,
            details={name: name},
            document=name,
        )
        payload = canonical_payload(event, AT)
        raw = payload.encode("utf-8")  # strict
        assert ("4111" + "1" * 12).encode() not in raw
        payloads.add(payload)
        assert canonical_payloads([event] * 8, AT) == [payload] * 8
    assert len(payloads) == len(names)
