"""rev49e: the owner role's commands the docs show are refused by those commands.

atk49h made `cofre db migrate` and `cofre audit retire` refuse a URL that reaches
PostgreSQL over the network unverified (`cofre_cli._opening.refuse_unverified_owner_database`),
as `cofre serve` does. The docs' own examples of those commands still name
``postgresql://cofre_owner@db/cofre`` with no ``sslmode=verify-full`` nor
``sslrootcert``: an operator who copies one gets ``refusing the owner role's database``
(docs/operations.md, "Schema migrations" and "Retention"; docs/cloudhsm.md).

What should hold: every documented ``COFRE_DATABASE__URL=… cofre db migrate`` or
``cofre audit retire`` line names a URL the command accepts.
"""

from __future__ import annotations

import re
from pathlib import Path

from cofre_cli._database_tls import unverified_database

ROOT = Path(__file__).resolve().parents[2]
_OWNER_COMMAND = re.compile(
    r"COFRE_DATABASE__URL=['\"]?(?P<url>postgresql[^\s'\"]+)['\"]?\s+cofre\s+(?:db\s+migrate|audit\s+retire)"
)


def test_documented_owner_commands_name_a_url_they_accept() -> None:
    found = [
        (path, match["url"])
        for path in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
        for match in _OWNER_COMMAND.finditer(path.read_text(encoding="utf-8"))
    ]
    assert found, "the docs show the owner role's commands"
    refused = [
        f"{path.relative_to(ROOT)}: {url} ({why})"
        for path, url in found
        if (why := unverified_database(url)) is not None
    ]
    assert refused == []
