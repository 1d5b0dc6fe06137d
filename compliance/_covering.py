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
    engine: Engine, store: AuditStore, end: int, page_size: int, *, quorum: int = 1
) -> SignedTreeHead | None:
    """The first head that covers leaves [0, end) and that `quorum` distinct witnesses
    cosigned, else the first that any witness cosigned, else the first that covers
    them; heads are read in keyset pages.

    A witness cosigns the newest head it is sent, never an older one again: the first
    head with one cosignature (a witness down when it was published) stays one short of
    an auditor's majority for good, while a later head has them all (review 30)."""
    first = any_witnessed = None
    above = end - 1
    while page := store.heads_page(above, _NO_LIMIT, page_size):
        first = first or page[0]
        for head in page:
            witnesses = {s.name for s in cosignatures_of(engine, head.tree_size)}
            if len(witnesses) >= quorum:
                return head
            if witnesses and any_witnessed is None:
                any_witnessed = head
        above = page[-1].tree_size
    return any_witnessed or first
