"""Per-address rate limits of the registry: token buckets with bounded memory.

Two uses, both per client address and per process: registrations (``register`` and the
creation of federations and orchestras, generous enough for hundreds of nodes behind one NAT
address) and failed admin logins (a handful, then one every so often). Pure code: the clock is
given, so tests need not wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = [
    "DEFAULT_LOGIN_BURST",
    "DEFAULT_LOGIN_EVERY",
    "DEFAULT_REGISTER_BURST",
    "DEFAULT_REGISTER_RATE",
    "Buckets",
    "retry_after",
]

DEFAULT_REGISTER_BURST = 1500
"""Registrations one address may make at once: 500 laptops behind one NAT address running the
whole 2012 flow (look up or create the federation and the orchestra, register) together."""
DEFAULT_REGISTER_RATE = 25.0
"""Registrations per second per address once the burst is spent: those 500 laptops may
re-register every 20 s for ever."""
DEFAULT_LOGIN_BURST = 5
"""Wrong admin passwords one address may send before it is slowed."""
DEFAULT_LOGIN_EVERY = 20.0
"""Seconds after which a slowed address may try one more password."""

_MAX_KEYS = 65536


class Buckets:
    """One token bucket per key (a client address): *burst* tokens, refilled at *rate* per
    second. :meth:`take` spends a token or says how long to wait for one; :meth:`wait` only
    looks. At most 65,536 keys are remembered: past that, full buckets are forgotten first
    (they are as good as new), then the oldest.
    """

    def __init__(
        self, burst: float, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not burst >= 1 or not rate > 0:
            raise ValueError(f"a bucket needs burst >= 1 and rate > 0, not {burst}, {rate}")
        self.burst = float(burst)
        self.rate = float(rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, now: float) -> float:
        got = self._buckets.get(key)
        if got is None:
            return self.burst
        tokens, stamp = got
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until *key* has a token (0.0 if it has one now); spends nothing."""
        level = self._level(key, self._clock())
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, key: str) -> float:
        """Spend one of *key*'s tokens and return 0.0, or spend nothing and return the seconds
        until one is there."""
        now = self._clock()
        level = self._level(key, now)
        if level < 1:
            return (1 - level) / self.rate
        if key not in self._buckets and len(self._buckets) >= _MAX_KEYS:
            self._forget(now)
        self._buckets[key] = (level - 1, now)
        return 0.0

    def _forget(self, now: float) -> None:
        full = [k for k in self._buckets if self._level(k, now) >= self.burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) >= _MAX_KEYS:
            del self._buckets[next(iter(self._buckets))]


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value for a wait of *seconds*: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
