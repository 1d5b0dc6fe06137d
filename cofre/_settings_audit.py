"""The audit log's sections of `cofre.settings.Settings`: signed heads and witnesses,
the archive, and evidence exports.

IN PCI SCOPE. Moved out of `cofre.settings` to keep that module small; import them from
`cofre.settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import Field, model_validator

from cofre._settings_section import _Section, check_allowance


class WitnessSettings(_Section):
    """One witness the vault publishes its checkpoints to (c2sp.org/tlog-witness)."""

    # The witness's submission prefix: `<url>/add-checkpoint` is called.
    url: str = Field(min_length=1)
    # Its cosignature/v1 verifier key, pinned: a cosignature by any other key is ignored.
    vkey: str = Field(min_length=1)
    # For an https URL whose certificate is not under certifi's public CAs.
    ca_file: Path | None = None


def _key_material(vkey: str) -> str:
    """A vkey's key part (``<name>+<id>+<base64 key>``), its name and ID aside; the whole
    text, stripped, when it is not so shaped (the vault refuses it when it loads it)."""
    parts = vkey.strip().split("+", 2)
    return parts[2] if len(parts) == 3 else vkey.strip()


# The bounds of the allowances of refusal entries (`AuditSettings`): at least one entry
# at once and one a day (`policies.models.RateLimit`'s floor), at most 10,000 at once and
# 10 a second. So whatever is set, one certificate's refusals add at most about 870,000
# entries a day per worker to the log for each allowance (at the defaults, about 86,000);
# a service whose refusals need more entries than that needs a `rate_limit`.
MAX_REFUSAL_ENTRIES_BURST: Final = 10_000
MAX_REFUSAL_ENTRIES_PER_SECOND: Final = 10.0


class AuditSettings(_Section):
    """When the sequencer signs a tree head, the witnesses that cosign it, and how many
    refusal entries a caller without a rate limit writes before they are counted."""

    sign_every_entries: int = Field(default=1000, ge=1)
    sign_every_seconds: float = Field(default=10.0, gt=0)
    # The checkpoint origin is `cofre-audit/<log_id>`: unique per vault on a witness.
    log_id: str = Field(default="cofre", pattern=r"^[A-Za-z0-9._/:-]{1,100}$")
    # COFRE_AUDIT__WITNESSES='[{"url": "...", "vkey": "..."}]' or [[audit.witnesses]].
    witnesses: tuple[WitnessSettings, ...] = ()
    # Cosignatures a head needs to count as witnessed (readiness, export's choice of
    # covering head); auditors set their own with `--quorum`. Unset: more than half of
    # the witnesses (`quorum`).
    witness_quorum: int | None = Field(default=None, ge=1)
    # How often the publisher looks for a head its witnesses have not cosigned yet.
    publish_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    # How long the oldest queued entry may wait before readiness names the stall.
    queue_stall_seconds: float = Field(default=60.0, gt=0)
    # The allowances of refusal entries of a service the policy leaves without a
    # `rate_limit`, per worker process (`api._refusal_sieve`, sessions 39 and 40): past
    # `burst` in a row, then `per_second`, its refusals are answered as ever but their
    # entries counted, one `api.refusals_counted` entry per minute. The `named_` one is
    # for its refusals about token records the vault holds, each entry naming its record.
    refusal_entries_burst: int = 100
    refusal_entries_per_second: float = 1.0
    named_refusal_entries_burst: int = 1000
    named_refusal_entries_per_second: float = 1.0

    @property
    def quorum(self) -> int:
        """`witness_quorum`, or more than half of the distinct witnesses (1 for none)."""
        if self.witness_quorum is not None:
            return self.witness_quorum
        return self._distinct_witnesses() // 2 + 1

    def _distinct_witnesses(self) -> int:
        """How many distinct witness keys are listed: by key material, as every verifier
        counts them (`audit.note.require_quorum`), not by the vkey text. A key listed
        under two names is one witness: its cosignature does not sign its name, and the
        verifiers count it once (review 30c: counted twice here, a default quorum its
        one key can never meet)."""
        return len({_key_material(w.vkey) for w in self.witnesses})

    @model_validator(mode="after")
    def _refusal_allowances_bounded(self) -> AuditSettings:
        # Checked here, not by `Field` bounds, so that the error names the variable.
        why = (
            "at least the first refusals of a flood keep their own entries, and at most "
            "this many keeps the audit log's growth under one certificate's refusals "
            "bounded (a service that needs more needs a `rate_limit`)"
        )
        for allowance in ("refusal_entries", "named_refusal_entries"):
            check_allowance(
                f"COFRE_AUDIT__{allowance.upper()}",
                getattr(self, f"{allowance}_burst"),
                getattr(self, f"{allowance}_per_second"),
                max_burst=MAX_REFUSAL_ENTRIES_BURST,
                max_per_second=MAX_REFUSAL_ENTRIES_PER_SECOND,
                why=why,
            )
        return self

    @model_validator(mode="after")
    def _a_majority(self) -> AuditSettings:
        # Every evidence verifier refuses a quorum of half the witnesses or fewer (a
        # witness the operator keeps behind cosigns a rewrite: review 30); a vault set
        # so would prefer, for its exports, heads those verifiers then refuse.
        distinct = self._distinct_witnesses()
        if self.witness_quorum is not None and 2 * self.witness_quorum <= distinct:
            raise ValueError(
                f"witness_quorum {self.witness_quorum} is not more than half of the "
                f"{distinct} witnesses: set it to {distinct // 2 + 1} or more, or unset it"
            )
        return self


class ArchiveSettings(_Section):
    """Where `cofre audit archive` ships sealed segments, and how long the log stays
    online (PCI DSS 10.5.1: twelve months kept, the last three immediately available).

    S3 credentials are never settings: boto3's default chain (IRSA, instance profile,
    ``AWS_*`` variables). `total_retention_months` is what `cofre audit archive` locks
    each object it puts for (S3 Object Lock, compliance mode, from its upload), after
    refusing a bucket without Object Lock or with a lifecycle rule expiring the archive
    sooner (`infra_pci.objectstore`); the bucket enforces the lock.
    """

    bucket: str | None = None
    prefix: str = "cofre-audit/"
    region: str | None = None
    # An S3-compatible endpoint: a VPC endpoint, MinIO, or moto's server in tests.
    endpoint_url: str | None = None
    segment_max_entries: int = Field(default=1_000_000, ge=1)
    online_retention_months: int = Field(default=3, ge=1, le=120)
    total_retention_months: int = Field(default=12, ge=12, le=1200)

    @model_validator(mode="after")
    def _online_within_total(self) -> ArchiveSettings:
        if self.online_retention_months > self.total_retention_months:
            raise ValueError("online_retention_months exceeds total_retention_months")
        return self


class EvidenceSettings(_Section):
    """Bounds on evidence exports: each reads the audit log of its period and signs a
    manifest with the HSM, so a period of decades or an export loop is a denial of
    service."""

    max_period_days: int = Field(default=31, ge=1, le=366)
    # Per identity: a bucket of `burst` exports refilled at `per_hour`; and one export
    # at a time per node.
    # The bounds of `policies.models.RateLimit` (one a day to 10^6 a second).
    exports_per_hour: float = Field(default=12.0, ge=1 / 24, le=3.6e9)
    export_burst: int = Field(default=3, ge=1, le=1_000_000_000)
