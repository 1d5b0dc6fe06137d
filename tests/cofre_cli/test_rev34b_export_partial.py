"""Review 34b: `cofre audit export --out` put its new file in the name's place before a
byte of the log was in it. An export that failed midway (the database gone while the
log was read, a full disk, ^C) left a partial copy under the name, in place of the
export that was there: the previous good copy gone, and a file that reads as an
export of a shorter log. Now the new file takes the name only once the copy is whole;
an export that fails leaves the name as it was and no file beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from audit.errors import AuditReadFailed
from cofre_cli.audit_trail import private_export

_LOG = '{"type":"entry","index":0}\n'


def test_an_export_that_fails_midway_leaves_the_previous_copy(tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    out.write_text("last month's export\n")
    with (
        pytest.raises(AuditReadFailed),
        private_export(out, lambda: None) as handle,
    ):
        handle.write(_LOG)
        # What `AuditStore.export` raises when the database goes while it is read.
        raise AuditReadFailed("the audit log could not be read")
    assert out.read_text() == "last month's export\n"
    assert sorted(os.listdir(tmp_path)) == ["export.jsonl"]


def test_an_export_that_fails_midway_leaves_no_file_where_there_was_none(
    tmp_path: Path,
) -> None:
    out = tmp_path / "export.jsonl"
    with pytest.raises(KeyboardInterrupt), private_export(out, lambda: None) as handle:
        handle.write(_LOG)
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
