"""Attack 49c: the "Verify by hand" inclusion snippet of docs/audit.md accepts proofs
that prove nothing.

docs/audit.md tells an auditor to check an inclusion proof (`cofre audit prove
--index N`, run by the vault's operators, who hold the HSM PIN and the database) with a
few lines of Python, "no Cofre needed". The snippet folds the proof and compares the
result with the `root_hash` of the same file, and nothing else:

- it never ties that root and `tree_size` to a signed head (the output carries one,
  `signed_head`, whose signature the section's openssl recipe checks): a proof.json
  naming a root of its own (a one-leaf "tree" whose root is the forged entry's leaf
  hash, no proof at all) passes;
- it leaves out two steps of RFC 9162 section 2.1.3.2: step 1 (``leaf_index <
  tree_size``) and step 4a (fail when ``sn`` is 0 with siblings left). So entry E, leaf
  1 of the two-leaf tree [X, E], passes as leaf 0 of a tree of size 1 (or as leaf 1 of
  a tree of size 1), with the genuine root of size 2 and one extra sibling.

What should hold: the documented check refuses each of these (the verifier's own
`verify_inclusion` does), and ties the proof's root and size to the signed head whose
signature the reader checked.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cofre_evidence_verifier.errors import ProofError
from cofre_evidence_verifier.merkle import verify_inclusion

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _leaf(entry: bytes) -> bytes:
    return _h(b"\x00" + entry)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


X, E = b'{"action":"tokenize","x":1}', b'{"action":"detokenize","e":2}'
ROOT2 = _h(b"\x01" + _leaf(X) + _leaf(E))


def _signed_head(size: int, root: bytes) -> dict[str, Any]:
    """A head as `cofre audit prove` prints it (its signature is the openssl step's)."""
    return {
        "tree_size": size,
        "root_hash": _b64(root),
        "checkpoint": f"cofre-audit/cofre\n{size}\n{_b64(root)}\n",
        "signature": "",
    }


def _snippet() -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"Check an inclusion proof.*?```python\n(.*?)```", text, re.S)
    assert found is not None, "docs/audit.md no longer has the inclusion snippet"
    return found.group(1)


def _accepted(proof: dict[str, Any]) -> bool:
    """Whether the documented snippet, run on `proof` as its proof.json, passes."""
    text = json.dumps(proof)

    def opened(name: str, *_: object, **__: object) -> io.StringIO:
        assert name == "proof.json"
        return io.StringIO(text)

    try:
        # The documented recipe, as the reader runs it (its file read from memory).
        exec(_snippet(), {"open": opened})  # noqa: S102
    except (AssertionError, KeyError, TypeError, ValueError, IndexError):
        return False
    return True


def test_the_snippet_accepts_a_genuine_proof() -> None:
    """Control: E at leaf 1 of [X, E], with the signed head of size 2."""
    proof = {
        "index": 1,
        "tree_size": 2,
        "entry": E.decode(),
        "root_hash": _b64(ROOT2),
        "inclusion_proof": [_b64(_leaf(X))],
        "signed_head": _signed_head(2, ROOT2),
    }
    assert _accepted(proof)


def test_a_proof_with_a_root_of_its_own_is_refused() -> None:
    """A forged entry, 'proven' in a one-leaf tree whose root is its own leaf hash: no
    log holds it, and the signed head in the file (size 2) says another root."""
    forged = b'{"action":"tokenize","forged":true}'
    proof = {
        "index": 0,
        "tree_size": 1,
        "entry": forged.decode(),
        "root_hash": _b64(_leaf(forged)),
        "inclusion_proof": [],
        "signed_head": _signed_head(2, ROOT2),
    }
    assert not _accepted(proof)


@pytest.mark.parametrize(("index", "size"), [(0, 1), (1, 1)])
def test_rfc9162_steps_1_and_4a_are_kept(index: int, size: int) -> None:
    """E is leaf 1 of the tree of size 2; one sibling past the root (step 4a), or an
    index outside the tree (step 1), made it pass as leaf `index` of a tree of `size`
    with the genuine root of size 2."""
    with pytest.raises(ProofError):
        verify_inclusion(_leaf(E), index, size, [_leaf(X)], ROOT2)
    proof = {
        "index": index,
        "tree_size": size,
        "entry": E.decode(),
        "root_hash": _b64(ROOT2),
        "inclusion_proof": [_b64(_leaf(X))],
        "signed_head": _signed_head(2, ROOT2),
    }
    assert not _accepted(proof)
