"""The vault's PostgreSQL connections dump flat lists of bytes or str in one pass
(`vault.storage._pg_arrays`), and what goes on the wire is psycopg's own encoding.

The committer sends its values as binary arrays (the oracle guard's buckets, the
free-token check's candidates, a commit group's token and audit rows through
``unnest``). A dumper that wrote one byte differently (a NULL flag, an element type, a
length) would store a different value or be refused by PostgreSQL: the arrays are
compared byte for byte with psycopg's dumper, for the lists the committer sends and for
every other shape (those go to psycopg's code), then read back through a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.adapt import AdaptersMap, PyFormat, Transformer
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import Connection

from vault.storage._pg_arrays import FlatListBinaryDumper
from vault.storage.database import create_database_engine
from vault.storage.rawsql import fetch_all


def _dumped(dumper: type[ListBinaryDumper], value: list[Any]) -> tuple[int, bytes] | str:
    """(array type, bytes) as `dumper` sends `value` in a binary parameter, or the
    refusal's message."""
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_dumper(list, dumper)
    try:
        chosen = Transformer(adapters).get_dumper(value, PyFormat.BINARY)
        data = chosen.dump(value)
    except psycopg.DataError as exc:
        return str(exc)
    return chosen.oid, b"" if data is None else bytes(data)


_ELEMENTS = st.one_of(
    st.lists(st.binary(max_size=40) | st.none(), max_size=9),
    st.lists(st.text(max_size=12) | st.none(), max_size=9),
    st.lists(st.integers(-(2**40), 2**40), max_size=4),
    st.lists(st.binary(max_size=4) | st.text(max_size=4), max_size=4),  # mixed: refused
    st.lists(st.lists(st.binary(max_size=4), min_size=1, max_size=3), max_size=3),  # nested
)


@settings(max_examples=400, deadline=None)
@given(_ELEMENTS)
def test_every_list_is_sent_as_psycopg_sends_it(value: list[Any]) -> None:
    assert _dumped(FlatListBinaryDumper, value) == _dumped(ListBinaryDumper, value)


def test_the_committers_lists_take_the_one_pass_path() -> None:
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_dumper(list, FlatListBinaryDumper)
    transformer = Transformer(adapters)
    for value in ([b"\x01" * 16, b"\x02" * 16], ["tok-1", "tok-2"], [b"k", None], [None, "é"]):
        chosen = transformer.get_dumper(value, PyFormat.BINARY)
        assert isinstance(chosen, FlatListBinaryDumper)
        assert chosen.sub_dumper is not None
        assert chosen.sub_dumper.cls is type(next(v for v in value if v is not None))


def test_the_vaults_connections_use_it_and_postgresql_reads_back_what_was_sent(
    pg_database: str,
) -> None:
    engine = create_database_engine(pg_database)
    buckets = [bytes(range(16)), b"", b"\x00\xff" * 8, None]
    tokens = ["4111110000001111", "tok_é€", "", None]
    moments = [datetime(2026, 12, 6, tzinfo=UTC)]  # another element type: psycopg's path
    try:
        with engine.connect() as connection:
            assert isinstance(connection, Connection)
            raw = connection.connection.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            assert raw.adapters.get_dumper(list, PyFormat.BINARY) is FlatListBinaryDumper
            rows = fetch_all(
                connection,
                "SELECT %b::bytea[], %b::text[], %b::timestamptz[],"
                " cardinality(%b::bytea[]), array_ndims(%b::text[])",
                [buckets, tokens, moments, buckets[:2], tokens[:1]],
            )
    finally:
        engine.dispose()
    assert rows == [(buckets, tokens, moments, 2, 1)]
