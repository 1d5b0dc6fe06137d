"""Start-up file permissions: the data directory is made 0700/0600, and a PIN file or
private key readable by every user stops the start."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cofre.errors import ConfigurationError
from cofre.filemodes import refuse_readable_secrets, secure_data_dir
from cofre.settings import HSMSettings, Settings
from cofre_cli.wiring import build_runtime
from hsm.provider import HSMProvider


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_created_0755_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "pki" / "clients").mkdir(parents=True)
    data.chmod(0o755)
    (data / "pki").chmod(0o755)
    owned = [data / n for n in ("cofre.sqlite3", "policy.toml", "cofre.toml")]
    owned.append(data / "pki" / "clients" / "payments-key.pem")
    for path in owned:
        path.write_text("x")
        path.chmod(0o644)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)
    changed = secure_data_dir(data)
    assert _mode(data) == 0o700
    assert _mode(data / "pki") == 0o700
    assert all(_mode(p) == 0o600 for p in owned)
    assert _mode(outside) == 0o644  # a link out of the data directory is not followed
    assert set(changed) >= {data, *owned}
    assert secure_data_dir(data) == []


def test_world_readable_pin_or_key_refuses_to_start(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234")
    pin.chmod(0o600)
    refuse_readable_secrets([("HSM PIN file", pin), ("TLS private key", None)])
    pin.chmod(0o644)
    with pytest.raises(ConfigurationError, match=r"HSM PIN file .* readable by every user"):
        refuse_readable_secrets([("HSM PIN file", pin)])
    key = tmp_path / "server-key.pem"
    key.write_text("k")
    key.chmod(0o604)
    with pytest.raises(ConfigurationError, match="TLS private key"):
        refuse_readable_secrets([("HSM PIN file", None), ("TLS private key", key)])


def test_runtime_start_tightens_and_refuses(tmp_path: Path, hsm_provider: HSMProvider) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    policy = data / "policy.toml"
    policy.write_text("")
    policy.chmod(0o644)
    pin = tmp_path / "pin"
    pin.write_text("1234")
    pin.chmod(0o644)
    settings = Settings(data_dir=data, policy_file=policy, hsm=HSMSettings(pin_file=pin))
    with pytest.raises(ConfigurationError, match="readable by every user"):
        build_runtime(settings, provider=hsm_provider)
    assert not (data / "cofre.sqlite3").exists()  # refused before anything was opened
    runtime = build_runtime(Settings(data_dir=data, policy_file=policy), provider=hsm_provider)
    try:
        assert _mode(data) == 0o700
        assert _mode(policy) == 0o600
        assert _mode(data / "cofre.sqlite3") == 0o600
    finally:
        runtime.close()
