"""The head an evidence bundle covers its period with.

IN PCI SCOPE (as evidence): it reads the audit log's heads and their stored witness
cosignatures.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Engine

from audit.heads import SignedTreeHead
from audit.publisher import cosignatures_of
from audit.store import AuditStore

_NO_LIMIT: Final = 2**63 - 1


def covering_head(
    engine: Engine, store: AuditStore, end: int, page_size: int
) -> SignedTreeHead | None:
    """The first head that covers leaves [0, end) and that witnesses cosigned, else the
    first that covers them; heads are read in keyset pages."""
    first = None
    above = end - 1
    while page := store.heads_page(above, _NO_LIMIT, page_size):
        first = first or page[0]
        for head in page:
            if cosignatures_of(engine, head.tree_size):
                return head
        above = page[-1].tree_size
    return first
