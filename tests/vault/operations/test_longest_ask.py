"""`longest_ask`'s one-ask path answers what its general one does.

A token made or found for items of a call lives as long as the longest life they ask
(`TokenizeOperations._lives`); most tokens of a batch have one asker, and take its
life without the comparison (issue 21). The comparison is kept here as the reference.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import InvalidTTL
from vault.operations._inputs import MAX_TTL_SECONDS, expiry
from vault.operations._items import longest, longest_ask

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def _items(ttls: list[object]) -> Any:
    return [types.SimpleNamespace(request=types.SimpleNamespace(ttl_seconds=t)) for t in ttls]


def _reference(items: Any, indices: list[int]) -> tuple[int, datetime | None]:
    wanted = {index: expiry(NOW, items[index].request.ttl_seconds) for index in indices}
    life = longest(wanted.values())
    return next(index for index in indices if wanted[index] == life), life


_ttls = st.lists(st.none() | st.integers(1, MAX_TTL_SECONDS), min_size=1, max_size=8)


@given(_ttls, st.data())
def test_the_longest_ask_is_the_references(ttls: list[object], data: st.DataObject) -> None:
    items = _items(ttls)
    indices = data.draw(st.lists(st.sampled_from(range(len(ttls))), min_size=1, unique=True))
    assert longest_ask(items, indices, NOW) == _reference(items, indices)


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1, True, 1.5, "60"])
def test_a_bad_ttl_alone_is_refused_as_before(ttl: object) -> None:
    with pytest.raises(InvalidTTL):
        longest_ask(_items([ttl]), [0], NOW)
