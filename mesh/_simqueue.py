"""The simulator's event queue: a calendar queue of virtual-time buckets.

One binary heap of every pending event (a timer per node, every datagram in flight) costs
``log2(n)`` tuple comparisons per push and per pop, each on a tuple somewhere in a heap of a
hundred thousand entries at 100,000 simulated nodes, far apart in memory. Here an event goes
into the bucket of its time (:data:`BUCKET_S` wide), appended in O(1); only the bucket being
run is a heap (a few hundred events, close together). The order is exactly the heap's: by
time, then by the order of pushing (so a seed's run, and its trace hash, are the same).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

__all__ = ["BUCKET_S", "EventQueue"]

BUCKET_S = 1e-4
"""The width of a bucket in virtual seconds: at 100,000 nodes about 150 events each."""

_SCALE = 1.0 / BUCKET_S
_FAR = 1 << 62
"""The bucket of any time too far to count buckets in (infinity)."""

Entry = tuple[float, int, int, Any]
"""(time, push counter, kind, data): the counter orders events of the same time."""


class EventQueue:
    """Events ordered by (virtual time, order of pushing)."""

    __slots__ = ("_buckets", "_counter", "_current", "_current_key", "_keys")

    def __init__(self) -> None:
        self._counter = 0
        self._current: list[Entry] = []
        """A heap: the events of every bucket up to ``_current_key``."""
        self._current_key = -_FAR
        self._buckets: dict[int, list[Entry]] = {}
        """The later buckets, each in the order of pushing."""
        self._keys: list[int] = []
        """A heap of the keys of ``_buckets``."""

    def __len__(self) -> int:
        return len(self._current) + sum(len(b) for b in self._buckets.values())

    def push(self, when: float, kind: int, data: Any) -> None:
        """Add an event at virtual time *when*."""
        self._counter += 1
        entry = (when, self._counter, kind, data)
        # int() of a product is monotonic in *when*: a bucket's events are all later than
        # those of every bucket before it.
        key = int(when * _SCALE) if when < 1e15 else _FAR
        if key <= self._current_key:
            heapq.heappush(self._current, entry)
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [entry]
            heapq.heappush(self._keys, key)
        else:
            bucket.append(entry)

    def drain(self, t: float) -> Iterator[Entry]:
        """Yield, in order, every event due at or before *t*, including those pushed while
        draining (the generator looks again after every event)."""
        heappop = heapq.heappop
        while True:
            current = self._current
            if not current:
                keys = self._keys
                if not keys:
                    return
                key = heappop(keys)
                current = self._buckets.pop(key)
                heapq.heapify(current)
                self._current = current
                self._current_key = key
            entry = current[0]
            if entry[0] > t:
                return
            heappop(current)
            yield entry
