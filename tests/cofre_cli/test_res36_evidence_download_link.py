"""Session 36 (found beside the export sweeper): `cofre evidence export --out FILE`
downloads the bundle through ``FILE.part`` and renames it. The ``.part`` file was
opened with ``open("wb")``, which follows a symbolic link and truncates what is there:
whoever may write the output directory (a shared one) planted ``FILE.part`` as a link
to a file of the officer's or auditor's (``~/.bashrc``), and the download overwrote
that file with the bundle, then left ``FILE`` a link to it. The ``.part`` file is now
made new (``O_EXCL | O_NOFOLLOW``, 0600): a name already taken is refused, untouched.
Drill 36 then moved the download to `cofre audit export`'s writer
(`cofre_cli.audit_trail.private_download`): no ``.part`` name any more but a new file of
its own making, so a link planted at the old name is never opened; one planted at the
bundle's name is refused. Real files; `_save` is the download's writer, fed the
bundle's chunks."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cofre.errors import ConfigurationError
from cofre_cli.commands.evidence import _save

BUNDLE = [b"\x1f\x8b bundle ", b"bytes\n"]


def test_a_planted_link_at_the_part_name_is_never_opened(tmp_path: Path) -> None:
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("the officer's own file\n")
    out = tmp_path / "shared" / "bundle.tar.gz"
    out.parent.mkdir()
    part = out.with_name(out.name + ".part")
    part.symlink_to(victim)
    assert _save(iter(BUNDLE), out) == sum(map(len, BUNDLE))
    assert victim.read_text() == "the officer's own file\n"
    assert part.is_symlink()  # not ours: left as it was
    assert out.read_bytes() == b"".join(BUNDLE)
    assert not out.is_symlink()


def test_a_planted_link_at_the_bundle_name_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("the officer's own file\n")
    out = tmp_path / "shared" / "bundle.tar.gz"
    out.parent.mkdir()
    out.symlink_to(victim)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        _save(iter(BUNDLE), out)
    assert victim.read_text() == "the officer's own file\n"
    assert out.is_symlink()
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle.tar.gz"]


def test_a_download_writes_a_new_private_file_and_leaves_no_part(tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    assert _save(iter(BUNDLE), out) == sum(map(len, BUNDLE))
    assert out.read_bytes() == b"".join(BUNDLE)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar.gz"]


def test_a_failed_download_removes_only_its_own_part(tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"

    def broken() -> Iterator[bytes]:
        yield b"first chunk"
        raise OSError("the connection dropped")

    with pytest.raises(ConfigurationError, match="cannot write the --out file"):
        _save(broken(), out)
    assert list(tmp_path.iterdir()) == []
