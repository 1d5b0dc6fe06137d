"""Spreading a node's requests across its worker processes when the kernel does not.

IN PCI SCOPE (transport). Each worker of `cofre serve` listens on its own SO_REUSEPORT
socket, and the kernel hashes each new connection to one of them. Over hundreds of
connections the hash evens out; over the handful a payment service's pool holds, it
does not: with 4 keep-alive connections, one worker of two gets all of them one time in
eight, and 3 of 4 half the time, and keeps them for the connections' lives. That worker
then serves everything on one core (one GIL) while the other idles (issue 21: the
profiles of a batch load showed one worker holding the GIL 47% of the time and the
other 1%). A client's pool that keeps idle connections and reuses some of them (haproxy,
most HTTP client libraries) makes it worse: the open connections may be even while the
busy ones are not.

`WorkerLoads` is the remedy a keep-alive load balancer without a shared accept queue
uses (gRPC's max connection age, Envoy's drain of an overloaded host): each worker
publishes its requests in flight in a shared array, and a worker whose average over the
last second or so (`TAU_SECONDS`) is at least `MARGIN` above the least busy worker's
answers one request with ``Connection: close``. The client opens a new connection for
its next request, which the kernel hashes afresh: half the time onto another worker,
and the worker repeats until the node is even. Nothing is cut short: the request is
answered in full first, and an HTTP/1.1 client does not send another request on a
connection it was told is closing.

The average, not the moment's count: on an evenly spread node the count swings by a
few from one millisecond to the next, and the first version, which compared the
moment's counts, closed a connection every 0.5 s per worker on those swings (51 closes
in 16 s of load at 8 then 32 connections, each a TLS handshake for nothing). A worker
that really holds more connections stays above the other on average. One worker closes
at most one connection per `COOLDOWN_SECONDS` (a full mutual-TLS handshake is ~1-2 ms
of CPU), which also gives the averages time to show where the new connection landed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

# One connection closed per worker per this many seconds at most: the averages need
# about as long to show where the new connection landed.
COOLDOWN_SECONDS: Final = 1.0
# The time constant of each worker's average of its requests in flight.
TAU_SECONDS: Final = 1.0
# How far above the least busy worker's average a worker must be to close one: less
# than the two a worker holding one connection more than its even share would show
# under a closed-loop load (each connection with a request outstanding), more than the
# averages' noise on an evenly spread node.
MARGIN: Final = 1.5
# A worker whose listener is not serving (starting, or stopped): left out of the
# comparison, since the kernel sends it nothing.
NOT_LISTENING: Final = -1.0
# Each worker's slots in the shared array: its requests in flight (or NOT_LISTENING),
# their average until the moment of the third slot, and that moment (monotonic clock).
SLOTS: Final = 3


class Counts(Protocol):
    """The node's shared array (`multiprocessing.RawArray` of doubles, `SLOTS` per
    worker: `node_counts`). Each worker writes only its own slots (from its event loop),
    so no lock is needed. A reader may see one slot updated before another (an average
    older than the moment stored with it), which can make one look wrong by as much as
    the average moved (review 19): at worst one close that should not have happened,
    which the cooldown bounds as it bounds every other."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> float: ...
    def __setitem__(self, index: int, value: float, /) -> None: ...


def node_counts(context: Any, workers: int) -> Counts:
    """The shared array for `workers` workers, every one not serving yet (the
    supervisor's, before spawning; `context` is its multiprocessing context)."""
    counts: Counts = context.RawArray("d", SLOTS * workers)
    for index in range(0, len(counts), SLOTS):
        counts[index] = NOT_LISTENING
    return counts


def _decayed(value: float, average: float, since: float, now: float, tau: float) -> float:
    """The time-weighted average at `now` of a count that was `average` at `since` and
    has been `value` from then on."""
    if now <= since:
        return average
    return value + (average - value) * math.exp((since - now) / tau)


class WorkerLoads:
    """Worker `index`'s slots in the node's `Counts`, kept by its API listener's
    connections (`api.connections`): `started` once a request is in whole and
    `finished` when it is answered, `should_close` as an answer starts."""

    def __init__(
        self,
        counts: Counts,
        index: int,
        *,
        cooldown: float = COOLDOWN_SECONDS,
        tau: float = TAU_SECONDS,
        margin: float = MARGIN,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._counts = counts
        self._on_close = on_close  # counts each close (the node's metric)
        self._base = SLOTS * index
        self._cooldown = cooldown
        self._tau = tau
        self._margin = margin
        self._clock = clock
        self._in_flight = 0
        self._average = 0.0
        self._since = clock()
        self._listening = False
        self._closed_at = -math.inf

    def listening(self, serving: bool) -> None:
        """Whether this worker's API listener is serving: only then do the others
        compare themselves with it (it is publishing a real count)."""
        self._listening = serving
        self._publish()

    def started(self) -> None:
        self._move(self._in_flight + 1)

    def finished(self) -> None:
        self._move(max(0, self._in_flight - 1))

    def should_close(self) -> bool:
        """Whether the answer starting (its request already `started`) should carry
        ``Connection: close``: this worker's average of requests in flight is at least
        `margin` above the least busy serving worker's, and it has not closed one within
        the cooldown."""
        if not self._listening:
            return False
        now = self._clock()
        if now - self._closed_at < self._cooldown:
            return False
        tau, counts, base = self._tau, self._counts, self._base
        mine = _decayed(self._in_flight, self._average, self._since, now, tau)
        least = min(
            (
                _decayed(value, counts[other + 1], counts[other + 2], now, tau)
                for other in range(0, len(counts), SLOTS)
                if other != base and (value := counts[other]) != NOT_LISTENING
            ),
            default=mine,
        )
        if mine < least + self._margin:
            return False
        self._closed_at = now
        if self._on_close is not None:
            self._on_close()
        return True

    def _move(self, value: int) -> None:
        now = self._clock()
        self._average = _decayed(self._in_flight, self._average, self._since, now, self._tau)
        self._since, self._in_flight = now, value
        self._publish()

    def _publish(self) -> None:
        counts, base = self._counts, self._base
        counts[base + 1] = self._average
        counts[base + 2] = self._since
        counts[base] = self._in_flight if self._listening else NOT_LISTENING
