"""Review of session 33's private export file (`cofre audit export --out`).

The export made an existing file of the operator's 0600 and wrote the log into it. A
mode change does not take back a descriptor opened before it: another account that
had opened the file while it was readable (a report left 0644 in a shared directory,
as the host's umask makes it) read the whole copy of the log through that descriptor,
with no `audit_read` of its own (PCI DSS 10.3.1). The copy now goes into a new file,
never readable by anyone else, that takes the name's place.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from audit.errors import AuditWriteFailed
from cofre.errors import ConfigurationError
from cofre_cli.audit_trail import private_export

_LOG = '{"type":"entry","index":0}\n'


def test_a_descriptor_opened_before_the_export_reads_none_of_the_log(tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    out.write_text("last month's report\n")
    out.chmod(0o644)
    # Another account's process, holding the file open from while it was readable.
    spy = os.open(out, os.O_RDONLY)
    try:
        recorded: list[str] = []
        with private_export(out, lambda: recorded.append(out.read_text())) as handle:
            handle.write(_LOG)
        os.lseek(spy, 0, os.SEEK_SET)
        seen = os.read(spy, 1 << 16)
    finally:
        os.close(spy)
    assert recorded == ["last month's report\n"]  # recorded before the name moved
    assert _LOG.encode() not in seen
    assert out.read_text() == _LOG
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_hard_link_to_the_export_path_gets_none_of_the_log(tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    out.write_text("")
    elsewhere = tmp_path / "kept-by-someone.jsonl"
    os.link(out, elsewhere)
    with private_export(out, lambda: None) as handle:
        handle.write(_LOG)
    assert elsewhere.read_text() == ""
    assert out.read_text() == _LOG


def test_no_file_is_left_beside_the_export_when_it_is_refused(tmp_path: Path) -> None:
    """The new file is made beside the name: a read that cannot be recorded, or a name
    that is a link or a directory, leaves the directory as it was."""
    (tmp_path / "kept.jsonl").write_text("before\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "kept.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    before = sorted(os.listdir(tmp_path))

    def refuse() -> None:
        raise AuditWriteFailed("the audit log refused the entry")

    with pytest.raises(AuditWriteFailed):
        private_export(tmp_path / "kept.jsonl", refuse)
    for name in ("link.jsonl", "dir.jsonl"):
        with pytest.raises(ConfigurationError):
            private_export(tmp_path / name, lambda: None)
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "kept.jsonl").read_text() == "before\n"
