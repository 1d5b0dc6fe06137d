"""Session 36 (review 35c's residual): `cofre audit export --out`'s clean-up of the
partial copies earlier runs left (`cofre_cli.audit_trail._remove_stale`) checked each
by its path and then removed it by its path: whoever may write the directory that
holds the export directory could swap that directory for a link to another one
between the last check and the unlink, and the unlink then removed a file of the same
name there (another export's copy under way, or whatever the attacker named so).

The export now opens its directory once and does every look-up, creation, rename and
unlink relative to that handle: a directory swapped afterwards redirects nothing.
The swap is made here at the worst moment, just before the unlink's system call (a
wrapper around `os.unlink` that renames the directory and plants the link, then calls
the real `os.unlink`): real files, real directories, the real export function."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cofre_cli.audit_trail import EXPORT_PREFIX, private_export

LEFT = f"{EXPORT_PREFIX}00000000000000aa.tmp"


def test_a_directory_swapped_before_the_unlink_redirects_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"  # the attacker may write here
    exports = shared / "exports"  # the operator's --out directory
    exports.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"  # not the export's: must be left alone
    elsewhere.mkdir()
    stale = exports / LEFT  # left by a killed export: to be removed
    stale.write_text("partial copy\n")
    past = time.time() - 3600
    os.utime(stale, (past, past))
    victim = elsewhere / LEFT
    victim.write_text("not the export's to remove\n")
    os.utime(victim, (past, past))
    moved = shared / "exports-moved"
    real_unlink: Callable[..., None] = os.unlink
    swapped: list[str] = []

    def swap_then_unlink(target: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if not swapped and os.path.basename(os.fspath(target)) == LEFT:
            exports.rename(moved)
            exports.symlink_to(elsewhere, target_is_directory=True)
            swapped.append(os.fspath(target))
        real_unlink(target, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", swap_then_unlink)
    with private_export(exports / "audit.jsonl", lambda: None) as handle:
        handle.write("{}\n")
    monkeypatch.undo()
    assert swapped, "the clean-up never removed the partial copy"
    assert victim.read_text() == "not the export's to remove\n"
    assert not (moved / LEFT).exists()  # the partial copy it judged is the one removed
    # The export went to the directory it opened, whatever took its name since.
    assert (moved / "audit.jsonl").read_text() == "{}\n"
    assert sorted(os.listdir(elsewhere)) == [LEFT]


def test_the_clean_up_is_done_relative_to_the_opened_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every unlink the export makes names a bare file and the opened directory's
    handle: none resolves a path through the directory's name again."""
    stale = tmp_path / LEFT
    stale.write_text("partial copy\n")
    past = time.time() - 3600
    os.utime(stale, (past, past))
    calls: list[tuple[str, object]] = []
    real_unlink: Callable[..., None] = os.unlink

    def recording(target: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        calls.append((os.fspath(target), kwargs.get("dir_fd")))
        real_unlink(target, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", recording)
    with pytest.raises(RuntimeError), private_export(tmp_path / "audit.jsonl", lambda: None):
        raise RuntimeError("the copy fails midway")  # its own new file is removed too
    monkeypatch.undo()
    assert len(calls) == 2, calls
    assert all(os.sep not in name and isinstance(fd, int) for name, fd in calls), calls
    assert sorted(os.listdir(tmp_path)) == []
