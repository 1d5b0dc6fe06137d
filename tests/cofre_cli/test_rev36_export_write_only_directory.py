"""Session 36 review: `cofre audit export --out` into a directory its user may write but
not list (a drop directory, mode 0300 or 1733) works as it did before session 36.

Session 36 made the export work relative to its directory, opened once
(`cofre_cli.audit_trail.private_export`, review 35c), and opened it for reading: a
directory that may be written and entered but not read gave ``EACCES``, so the export
that made its file there before was refused ("cannot write the --out file (Permission
denied)"). The handle is now a path handle (``O_PATH``), which needs no read right and
serves every call made relative to it; only the sweep of the copies earlier runs left
reads the directory, best effort as before.

Run in a child process: as root (the suite's usual user) with the capabilities that
pass over file modes dropped, so the directory's mode decides as for any user."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

_EXPORT = """
import sys
from pathlib import Path
from cofre_cli.audit_trail import private_export
with private_export(Path(sys.argv[1]), lambda: None) as out:
    out.write("entry\\n")
"""


def _as_its_modes_allow(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    dropped = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}", *argv]


def test_an_export_into_a_directory_it_may_write_but_not_list(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir(mode=0o300)
    drop.chmod(0o300)  # write and enter, not read: the umask may not add read
    out = drop / "audit.jsonl"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        _as_its_modes_allow([sys.executable, "-c", _EXPORT, str(out)]),
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    drop.chmod(0o700)
    assert out.read_text() == "entry\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in drop.iterdir()] == ["audit.jsonl"]  # no copy left beside it
