"""The tokens deleted before a bundle's period (`audit/deleted_tokens.txt`, session 39).

IN PCI SCOPE (as evidence). Token ids only, never a card. Check 6e of the offline
verifier fails a bundle in which a deleted token answers again (its row written back
from a backup by a writer of the database). A token deleted in an earlier period is in
an earlier bundle: so each bundle lists every token the vault's tombstones show deleted
before its period, one id a line, sorted (ids only: millions of purged tokens stay ~37
bytes each). The verifier, given the previous bundle, requires this list to hold that
bundle's list and the deletions its entries record: a row written back lost its
tombstone and is left out here, which the chain shows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from sqlalchemy import Engine, select

from audit.schema import READ_ONLY
from vault.storage.schema import tokens

NAME: Final = "audit/deleted_tokens.txt"


def stage_deleted_tokens(
    write: Callable[[bytes], None], engine: Engine, *, before: datetime, page_size: int
) -> None:
    """Write to `write` the id of every token shredded before `before`, one a line in
    ascending order, `page_size` ids at a time from one streamed read (memory bounded
    whatever the count).

    One ordered read, not keyset pages: no index serves deleted tokens in this order
    (the primary key's collation is the database's, not code point order), so each page
    would scan and sort the whole table again, quadratic in a vault's size; PostgreSQL
    sorts the deleted ids once, spilling to disk past `work_mem`."""
    reader = engine.execution_options(**READ_ONLY)
    # In code point order, as the verifier compares them (PostgreSQL's default collation
    # may not be; SQLite's is).
    ordered = tokens.c.id.collate("C") if engine.dialect.name == "postgresql" else tokens.c.id
    query = (
        select(tokens.c.id)
        .where(tokens.c.deleted_at.is_not(None), tokens.c.deleted_at < before)
        .order_by(ordered)
    )
    with reader.connect() as connection:
        streamed = connection.execution_options(stream_results=True, yield_per=page_size)
        for page in streamed.execute(query).scalars().partitions():
            write("".join(f"{token_id}\n" for token_id in page).encode())
