"""The leak scan reads a pg_dump's bytea values in one scan (session 42, for time): two
values must still never read as one number, and a card in one is still found."""

from __future__ import annotations

from tests.support.leakscan import find_leaks_in_dump


def _dump(*values: bytes) -> bytes:
    rows = b"".join(b"\\\\x" + value.hex().encode() + b"\n" for value in values)
    return b"COPY t (b) FROM stdin;\n" + rows


def test_two_bytea_values_never_read_as_one_number() -> None:
    visa = "4111111111111111"
    halves = (visa[:8].encode(), visa[8:].encode())
    assert find_leaks_in_dump(_dump(*halves), [visa]) == []
    assert find_leaks_in_dump(_dump(b"\x004111 1111", b"1111 1111\x00"), [visa]) == []


def test_a_card_in_one_of_many_bytea_values_is_found() -> None:
    noise = [bytes([n]) * 12 for n in range(200)]
    card = b"\x00" + b"4111111111111111" + b"\x01"
    found = find_leaks_in_dump(_dump(*noise, card, *noise), [])
    assert [f.rsplit(" at byte ", 1)[0] for f in found] == [
        "in a bytea value: Luhn-valid run 411111******1111"
    ]
