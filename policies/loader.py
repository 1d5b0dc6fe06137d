"""Reading a policy file (TOML or YAML), with a message that says what is wrong.

IN PCI SCOPE. A missing policy file, or an empty one, gives the empty policy, which
denies everything (fail closed).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cofre.redaction import mask_pan_like
from policies.errors import PolicyInvalid
from policies.models import Policy


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str
    sha256: str
    # The exact text the hash is of: recorded in the audit log at each load and reload.
    text: str = ""


def parse_policy(text: str, *, kind: str, source: str = "<string>") -> LoadedPolicy:
    """Parse policy text of `kind` ``"toml"`` or ``"yaml"``.

    Raises `PolicyInvalid` naming the offending field and the reason.
    """
    try:
        data: Any = tomllib.loads(text) if kind == "toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        # Masked too (review 35c): YAML's message quotes the offending line, a snippet
        # that may hold an identity's 12-digit run or a card pasted into the file.
        problem = mask_pan_like(f"{exc}")
        raise PolicyInvalid(f"policy {source} is not valid {kind.upper()}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyInvalid(f"policy {source} must be a mapping at the top level")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        # Masked as the log and the terminal would mask it, here where it is made: a
        # field error's location is an identity's key, and some checks quote a name.
        raise PolicyInvalid(f"policy {source} is invalid: {mask_pan_like(problems)}") from None
    return LoadedPolicy(policy, source, hashlib.sha256(text.encode()).hexdigest(), text)


def load_policy(path: Path | None) -> LoadedPolicy:
    """Load the policy at `path`; ``None`` or a missing file gives the deny-all policy.

    Raises `PolicyInvalid` for a file that exists but does not parse or validate.
    """
    if path is None or not path.exists():
        return LoadedPolicy(Policy(), str(path) if path else "<none>", hashlib.sha256().hexdigest())
    kind = "yaml" if path.suffix in (".yaml", ".yml") else "toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyInvalid(f"cannot read policy {path}: {exc.strerror}") from None
    return parse_policy(text, kind=kind, source=str(path))
