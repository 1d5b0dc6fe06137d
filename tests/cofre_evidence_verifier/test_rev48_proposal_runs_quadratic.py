"""rev48 (review of atk48a): check 6c's proposal-run check read every start of a signed
proposal for each ceremony that ran it.

`dual_control_log.run_problem` filtered, for each checked ceremony, every start of its
signed proposal to find the first earlier one of another id: O(starts of the digest)
per ceremony, O(N^2) for a bundle of N ceremonies sharing one proposal, which is what
the attack itself writes (one genuine proposal relabelled N times: the label has room
for any N). Review 35 removed this shape from check 6c (``index_pool``: five thousand
starts took 92 s); the reviewer measured 0.9 s for 5,000 copies, 16 s for 20,000, 180 s
for 60,000. The starts are ascending, so the first two answer. Counted here in entries
read, not in seconds.
"""

from __future__ import annotations

from typing import Any

from cofre_evidence_verifier.dual_control_log import index_pool, proposal_runs, run_problem

N = 5_000


class _Counted(dict[int, dict[str, Any]]):
    """A pool that counts the entries read from it."""

    reads = 0

    def __getitem__(self, key: int) -> dict[str, Any]:
        type(self).reads += 1
        return super().__getitem__(key)


def test_run_problem_reads_a_bounded_number_of_starts_per_ceremony() -> None:
    digest = "ab" * 32
    pool = _Counted(
        {
            i: {
                "action": "key.rotation.start",
                "outcome": "success",
                "key_id": f"copy-{i}",
                "details": {"kind": "kek", "proposal": digest},
            }
            for i in range(N)
        }
    )
    runs = proposal_runs(pool, index_pool(pool))
    assert len(runs[digest]) == N
    _Counted.reads = 0
    found = [run_problem(pool, runs, f"copy-{i}", i, digest) for i in range(N)]
    assert found[0] is None  # the first run of the proposal
    assert all(p is not None and "copy-0" in p for p in found[1:])
    assert _Counted.reads <= 4 * N, f"{_Counted.reads} entries read for {N} ceremonies"
