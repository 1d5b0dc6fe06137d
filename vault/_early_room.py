"""The early rate check's memory of its last read of each identity's bucket
(`EarlyRoom`), a part of `vault.limits` kept in a room of its own (that module was
nearing 600 lines).

IN PCI SCOPE, as part of the vault's limits; it holds identities and counts, no card
data."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from policies.models import RateLimit

__all__ = ["EARLY_ROOM_ENTRIES", "EARLY_ROOM_SECONDS", "EarlyRoom"]

# How long one read of a bucket lets the early check admit calls against what it read
# (`EarlyRoom`, issue 21).
EARLY_ROOM_SECONDS: Final = 1.0
EARLY_ROOM_ENTRIES: Final = 1024


class EarlyRoom:
    """What the early rate check (`Limits.check_rate`, before a tokenize's HSM calls)
    last read of each identity's bucket in this process: the units it had room for, and
    how many units this process admitted since. A call is admitted without reading the
    bucket again while that read is under `EARLY_ROOM_SECONDS` old and its room is not
    used up; otherwise the bucket is read (issue 21: the read was a pooled connection,
    a statement and a round trip per tokenize).

    It never refuses: only a read does, so nothing is refused that the bucket allows.
    Every call admitted counts, charged or not. What it cannot see is refused by the
    transaction's charge (`charge_rate`, the limit, exact across nodes) after the call's
    HMAC: other processes' spending, and calls admitted but not yet committed when a
    read was made (at most the process's waiting calls, `api.routes._offload.THREADS`).
    Every operation that charges the bucket is admitted here first
    (`vault.operations._early`), so a spent bucket is refused before the committer. A refused charge
    forgets the identity (`forget`): its next call reads the bucket and is refused
    before any HSM call. So refused calls spend at most about the bucket's room in HMACs
    per process per second."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, RateLimit], tuple[float, int, int]] = {}
        self._serial: dict[str, threading.Lock] = {}

    def one_at_a_time(self, identity: str) -> threading.Lock:
        """A lock of `identity`'s own in this process, for calls sized from one read of
        its bucket and charged after their commit (a lookup's tokens, review 46b): held
        from the read to that charge, one such call of the identity at a time here, so
        that the next reads what the last paid. One per identity the policy authorised
        (no caller makes more)."""
        with self._lock:
            lock = self._serial.get(identity)
            if lock is None:
                lock = self._serial[identity] = threading.Lock()
            return lock

    def admit(self, identity: str, limit: RateLimit, cost: int) -> bool:
        """Admit `cost` units against the last read if it is fresh and has them left
        (they count from now on); False: read the bucket (`note` what it had)."""
        now = self._clock()
        with self._lock:
            seen = self._seen.get((identity, limit))
            if seen is None:
                return False
            read_at, room, admitted = seen
            if now - read_at > EARLY_ROOM_SECONDS or admitted + cost > room:
                return False
            self._seen[(identity, limit)] = (read_at, room, admitted + cost)
            return True

    def note(self, identity: str, limit: RateLimit, room: int, cost: int) -> None:
        """A read found room for `room` units and admitted a call of `cost`."""
        now = self._clock()
        with self._lock:
            if len(self._seen) > EARLY_ROOM_ENTRIES:  # policies reloaded many times
                self._seen = {
                    key: seen
                    for key, seen in self._seen.items()
                    if now - seen[0] <= EARLY_ROOM_SECONDS
                }
            self._seen[(identity, limit)] = (now, room, cost)

    def forget(self, identity: str) -> None:
        """The bucket refused a charge: read it at the identity's next call."""
        with self._lock:
            for key in [key for key in self._seen if key[0] == identity]:
                del self._seen[key]
