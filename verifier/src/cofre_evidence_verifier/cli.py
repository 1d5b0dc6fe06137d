"""`cofre-verify`: the verifier's own command, for an auditor without the vault.

    cofre-verify BUNDLE --public-key PEM --witness-key VKEY [--witness-key VKEY ...]
                 (--origin ORIGIN | --previous PREV [--earlier OLDER ...]) [--quorum N]
                 [--authority NAME ...] [--json] [--html OUT]

Exit status 0 when the bundle is VERIFIED, 1 when it is not (every problem is printed),
2 for a usage error (argparse's convention), a missing pin of the log included: the
audit key signs, and the witnesses cosign, the checkpoints of every log run with the
HSM (staging, disaster recovery, one of the PIN holder's own), so only the origin
pinned out of band, or the previous bundle's, tells this log's bundle from theirs
(session 36). `--unsafe-any-origin` verifies without one and says so in the verdict.
`--earlier` gives the bundles before the previous one, newest first, back to the signing
of every key ceremony's proposal (check 6c; session 49).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cofre_evidence_verifier import __version__
from cofre_evidence_verifier.html import render_html
from cofre_evidence_verifier.report import Report, render_text
from cofre_evidence_verifier.vault_names import parse_name
from cofre_evidence_verifier.verify import verify_bundle
from cofre_evidence_verifier.witnesses import read_witness_keys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cofre-verify",
        description="Verify a Cofre evidence bundle offline (no vault, HSM or network): "
        "signatures, file hashes, the Merkle tree, proofs.",
    )
    parser.add_argument("bundle", type=Path, help="the bundle (.tar.gz)")
    parser.add_argument(
        "--public-key", type=Path, required=True, help="the audit public key (PEM) you pinned"
    )
    parser.add_argument(
        "--witness-key",
        type=Path,
        action="append",
        default=[],
        help="a witness's cosignature/v1 verifier key file, pinned out of band (repeatable)",
    )
    parser.add_argument(
        "--quorum", type=int, default=1, help="witness cosignatures required (default 1)"
    )
    parser.add_argument(
        "--unsafe-no-witness",
        action="store_true",
        help="UNSAFE: skip the witness check (only the vault's own key then vouches)",
    )
    parser.add_argument(
        "--origin",
        help="the log's origin you pinned (cofre-audit/<log id>): every checkpoint must be "
        "of that log (required unless --previous pins it)",
    )
    parser.add_argument(
        "--unsafe-any-origin",
        action="store_true",
        help="UNSAFE: verify without pinning the log (a bundle of any log the audit key "
        "signs then verifies); the verdict says so",
    )
    parser.add_argument(
        "--authority",
        action="append",
        default=None,
        metavar="NAME",
        help="the vault's own name (host or host:port) you pinned: every officer signature "
        "of a key ceremony must be for one of them (repeatable; without it, the names the "
        "bundle records, which its exporter wrote)",
    )
    parser.add_argument("--previous", type=Path, help="the previous bundle of the chain")
    parser.add_argument(
        "--earlier",
        type=Path,
        action="append",
        default=None,
        metavar="OLDER",
        help="a bundle before the previous one (repeatable, newest first): check 6c needs "
        "the bundles back to the signing of each key ceremony's proposal",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--html", type=Path, help="also write a self-contained HTML report")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def valid_origin(origin: str) -> bool:
    """Whether `origin` can be a checkpoint's origin line (c2sp.org/tlog-checkpoint: not
    empty, one line); spaces around it would only ever fail to match."""
    return (
        bool(origin)
        and origin == origin.strip()
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in origin)
    )


# The usage error of `--earlier` alone (both commands say it in these words).
EARLIER_WITHOUT_PREVIOUS = (
    "--earlier without --previous: the earlier bundles chain through the previous one"
)


def origin_usage_problem(
    origin: str | None, previous: object | None, unsafe_any_origin: bool
) -> str | None:
    """Why the log's pins (`--origin`, `--previous`, `--unsafe-any-origin`) cannot be
    used as given, naming the options, or None: the log must be pinned, by name
    (`--origin`) or by the previous bundle of the chain (`--previous`), or left unpinned
    by name. Both verify commands ask this (the same rule, the same words)."""
    if origin is not None and not valid_origin(origin):
        return (
            "--origin is a checkpoint's first line: not empty, no control character, no "
            "leading or trailing space"
        )
    if unsafe_any_origin and (origin is not None or previous is not None):
        return "--unsafe-any-origin with --origin or --previous, which pin the log"
    if origin is None and previous is None and not unsafe_any_origin:
        return (
            "pin the log: --origin ORIGIN (its origin, cofre-audit/<log id>, taken out of "
            "band with the audit key and the witness keys), or --previous BUNDLE (the "
            "chain's previous bundle, which you verified, names it); a bundle of any log "
            "verifies only with --unsafe-any-origin"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (0 verified, 1 not, 2 usage)."""
    args = _parser().parse_args(argv)
    try:
        public_key = args.public_key.read_bytes()
    except OSError as exc:
        sys.stderr.write(f"cofre-verify: cannot read the public key: {exc}\n")
        return 2
    try:
        witness_keys = read_witness_keys(
            [path.read_text(encoding="utf-8") for path in args.witness_key]
        )
    except (OSError, ValueError) as exc:  # a NoteError, or a file that is not UTF-8
        sys.stderr.write(f"cofre-verify: cannot read a witness key: {exc}\n")
        return 2
    if args.quorum < 1:
        sys.stderr.write("cofre-verify: --quorum must be at least 1\n")
        return 2
    usage = origin_usage_problem(args.origin, args.previous, args.unsafe_any_origin)
    if usage is None and args.earlier and args.previous is None:
        usage = EARLIER_WITHOUT_PREVIOUS
    if usage is not None:
        sys.stderr.write(f"cofre-verify: {usage}\n")
        return 2
    for name in args.authority or ():
        try:
            parse_name(name)
        except ValueError as exc:
            sys.stderr.write(f"cofre-verify: --authority: {exc}\n")
            return 2
    report = verify_bundle(
        args.bundle,
        public_key,
        args.previous,
        witness_keys=witness_keys,
        quorum=args.quorum,
        unsafe_no_witnesses=args.unsafe_no_witness,
        origin=args.origin,
        unsafe_any_origin=args.unsafe_any_origin,
        authorities=args.authority,
        earlier=args.earlier or (),
    )
    sys.stdout.write(
        json.dumps(report.as_json(), indent=2) + "\n" if args.json else render_text(report)
    )
    if args.html is not None and not _wrote_html(args.html, report, args.bundle):
        report_status = 2
    else:
        report_status = 0 if report.ok else 1
    return report_status


def _wrote_html(out: Path, report: Report, bundle: Path) -> bool:
    """Write the HTML report to `out`; False, said on stderr, when it cannot be (the
    verdict already printed stands)."""
    try:
        out.write_text(render_html(report, bundle), encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"cofre-verify: cannot write the HTML report: {exc}\n")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
