"""A faster binary dumper for the flat arrays the committer sends to PostgreSQL.

IN PCI SCOPE, as part of the vault's storage; it formats parameters, holds nothing.

The committer's statements send their values as binary arrays (``%b::bytea[]``,
``%b::text[]`` through ``unnest``: `vault.storage.rawsql`, `vault.limits`,
`audit._rows`), several per commit group. psycopg's list dumper is Python: for every
list it looks for its element's type twice (a set of the types, a scan for nested
lists and NULLs), then measures the dimensions and dumps each element through a
recursive walk; a py-spy profile of `cofre serve` under single tokenize on PostgreSQL
put that at ~28% of psycopg's execute, ~3% of a worker's GIL samples (issue 21,
session 40). Nearly every such list is flat, of bytes or of str (NULLs among them):
this dumper writes those in one pass, byte for byte what psycopg writes (the same
header, NULL flag, element type and lengths), and hands every other list (nested,
mixed, empty, of other element types) to psycopg's own code.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from psycopg.abc import Buffer, DumperKey, NoneType
from psycopg.adapt import PyFormat
from psycopg.types.array import BaseListDumper, ListBinaryDumper

__all__ = ["FlatListBinaryDumper"]

# Array header, one dimension: dimensions, has-NULL flag, element type; then the
# dimension's length and lower bound (PostgreSQL's `array_send`). A NULL element is
# written as the length -1.
_HEAD: Final = struct.Struct("!iiiii")
_LENGTH: Final = struct.Struct("!i")
_NULL: Final = _LENGTH.pack(-1)
_TEXT_OID: Final = 25  # psycopg's fallback element type when its dumper has none
_FLAT_TYPES: Final = frozenset({bytes, str})
# Element and array types (pg_type) of psycopg's binary dumpers for bytes and str.
_ELEMENT_OIDS: Final[dict[type, int]] = {bytes: 17, str: 25}
_ARRAY_OIDS: Final[dict[type, int]] = {bytes: 1001, str: 1009}


def _flat_type(obj: list[Any]) -> tuple[type | None, bool]:
    """The one type of `obj`'s elements when it is `bytes` or `str` (NULLs aside),
    else None; and whether `obj` holds a NULL."""
    types = set(map(type, obj))
    nulls = NoneType in types
    if nulls:
        types.discard(NoneType)
    if len(types) == 1:
        (kind,) = types
        if kind in _FLAT_TYPES:
            return kind, nulls
    return None, nulls


class FlatListBinaryDumper(ListBinaryDumper):
    """psycopg's `ListBinaryDumper` with a one-pass path for a flat list of `bytes` or
    of `str` (NULLs allowed): the same bytes on the wire, less Python per list."""

    def get_key(self, obj: list[Any], format: PyFormat) -> DumperKey:
        # psycopg's key for such a list is (list, element type): the same key, found
        # without its scans for nested lists and NULLs.
        if not self.oid:
            kind, _ = _flat_type(obj)
            if kind is not None:
                return (self.cls, kind)
        return super().get_key(obj, format)

    def upgrade(self, obj: list[Any], format: PyFormat) -> BaseListDumper:
        # psycopg's cursor makes a new transformer per statement, so this runs for
        # every list sent: psycopg's own scans the list again for its element.
        if not self.oid:
            kind, _ = _flat_type(obj)
            array_oid = _ARRAY_OIDS.get(kind) if kind is not None else None
            if array_oid is not None:
                item = next(value for value in obj if value is not None)
                sub = self._tx.get_dumper(item, format.from_pq(self.format))
                if sub.oid == _ELEMENT_OIDS[kind]:
                    # A copy of this dumper, not a new one: psycopg's constructor makes
                    # each dumper a transformer of its own (a C object built from the
                    # connection's adapters), and the copy's element dumper comes from
                    # this one's, made for this statement too.
                    dumper = object.__new__(type(self))
                    dumper.__dict__.update(self.__dict__)
                    dumper.sub_dumper = sub
                    dumper.oid = array_oid
                    return dumper
        return super().upgrade(obj, format)

    def dump(self, obj: list[Any]) -> Buffer | None:
        sub = self.sub_dumper
        if sub is None or sub.cls not in _FLAT_TYPES:
            return super().dump(obj)
        kind, nulls = _flat_type(obj)
        if kind is not sub.cls:
            return super().dump(obj)
        dump, pack = sub.dump, _LENGTH.pack
        parts: list[Buffer] = [_HEAD.pack(1, int(nulls), sub.oid or _TEXT_OID, len(obj), 1)]
        append = parts.append
        for item in obj:
            if item is None:
                append(_NULL)
                continue
            data = dump(item)  # psycopg's element dumper (bytes and str: never NULL)
            append(pack(len(data)))
            append(data)
        return b"".join(parts)
