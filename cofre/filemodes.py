"""File permissions of what Cofre keeps on disk.

IN PCI SCOPE. The data directory holds the SQLite store (token ciphertexts, the audit
log), the policy, the configuration and, in development, the SoftHSM2 token, its PINs
and the dev PKI's keys. An outside review found that a data directory created
beforehand as 0755 left ``cofre.sqlite3``, ``policy.toml`` and ``cofre.toml``
world-readable. At start-up `secure_data_dir` makes every directory in it 0700 and every
file 0600 (what Cofre owns: it never follows a symbolic link out of it), and
`refuse_readable_secrets` stops the start when a PIN file or a private key is readable by
other users, wherever it lives (a secret mounted from outside is the operator's to fix,
not ours to chmod).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cofre.errors import ConfigurationError

DIR_MODE = 0o700
FILE_MODE = 0o600


def secure_data_dir(data_dir: Path) -> list[Path]:
    """Set 0700 on `data_dir` and every directory under it, 0600 on every regular file,
    where the mode is wider; return the paths changed. Symbolic links are not followed;
    entries owned by another user are left as they are (chmod would fail)."""
    changed: list[Path] = []
    if not data_dir.is_dir():
        return changed
    uid = os.getuid()

    def tighten(path: Path, mode: int) -> None:
        st = path.lstat()
        if st.st_uid != uid or stat.S_ISLNK(st.st_mode):
            return
        if stat.S_IMODE(st.st_mode) & ~mode:
            path.chmod(stat.S_IMODE(st.st_mode) & mode)
            changed.append(path)

    tighten(data_dir, DIR_MODE)
    for root, dirs, files in os.walk(data_dir, followlinks=False):
        base = Path(root)
        for name in dirs:
            tighten(base / name, DIR_MODE)
        for name in files:
            path = base / name
            if stat.S_ISREG(path.lstat().st_mode):
                tighten(path, FILE_MODE)
    return changed


def refuse_readable_secrets(secrets: Iterable[tuple[str, Path | None]]) -> None:
    """Raise `ConfigurationError` naming the first (`what`, `path`) whose file other
    users can read (mode ``o+r``); missing paths are skipped (reading them fails later
    with its own message)."""
    for what, path in secrets:
        if path is None:
            continue
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & stat.S_IROTH:
            raise ConfigurationError(
                f"the {what} {path} is readable by every user (mode {mode:04o}); "
                f"run `chmod 600 {path}` (and keep it owned by the vault's user)"
            )
