"""What a station should run, and since when: the rule "the newest statement wins", sans-IO.

A :class:`StationState` is the configuration a station runs (entries with their
timestamps), its source, when it was last changed by an order or by its own operator
(``as_of``, milliseconds since the epoch), when it was last replaced as a whole (``base``) and,
when it came through the conductor, the operator orders it was made from. Three kinds of
statement change it:

* operator orders relayed by the conductor (:meth:`StationState.with_orders`): orders issued
  after ``as_of`` count. A full push (``replace``) among them makes the configuration exactly
  its own (and the merges after it) and moves ``base``; merge pushes alone are merged into
  what runs, entry by entry by timestamp. A chain with nothing newer than ``as_of`` is refused
  (:class:`~roles.StaleOrder`): a replay, a stale replica of the manager's view, or a newer
  local change;
* the station's own operator (:meth:`StationState.with_local`): applied at once, as of now (a
  replacement moves ``base``);
* the station file at start (:meth:`StationState.started_with`): its entries newer than
  ``base`` are merged in by timestamp; older ones were replaced since. A restart is not a
  statement: a role removed by a push does not come back from an older file.

So after any sequence of pushes, local changes, file edits and restarts, a station runs, per
role instance, its newest statement (checked against a model in ``tests/test_roles_model.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from roles._config import RoleConfig
from roles._errors import ConfigFileError, InvalidRequest, StaleOrder
from roles._operator import Order, chain_config, chain_issued, merge_chains

__all__ = ["Source", "StationState"]

Source = Literal["none", "file", "local", "conductor"]
_SOURCES: tuple[Source, ...] = ("none", "file", "local", "conductor")
_DESCRIBE: Mapping[str, str] = {
    "none": "nothing yet",
    "file": "from its station file",
    "local": "set by the station's own operator",
    "conductor": "pushed through the conductor",
}


def _orders(value: Sequence[Order]) -> tuple[Order, ...]:
    return tuple(value)


@attrs.frozen
class StationState:
    """The configuration a station runs, as of when, from where (see the module docstring)."""

    config: RoleConfig = attrs.field(factory=RoleConfig)
    as_of: int = 0
    source: Source = "none"
    orders: tuple[Order, ...] = attrs.field(default=(), converter=_orders)
    base: int = 0

    def describe(self) -> str:
        """Where the configuration came from and since when, for messages."""
        return f"{_DESCRIBE[self.source]}, as of {self.as_of}"

    @classmethod
    def from_file(cls, initial: RoleConfig) -> StationState:
        """A station's first start: its station file (any order is newer)."""
        return cls(config=initial, source="file" if len(initial) else "none")

    def started_with(self, initial: RoleConfig) -> tuple[StationState, tuple[str, ...]]:
        """This (saved) state after a start with station file *initial*: its entries newer
        than :attr:`base` merged in by timestamp. Also return the file's entries that are not
        applied because a later replacement dropped them (``role/uuid``, for the log)."""
        newer = RoleConfig(tuple(e for e in initial if e[2].timestamp > self.base))
        older = tuple(
            f"{role}/{uuid}"
            for role, uuid, entry in initial
            if entry.timestamp <= self.base and self.config.get(role, uuid) != entry
        )
        merged = self.config.merge(newer)
        if merged == self.config:
            return self, older
        return attrs.evolve(self, config=merged, source="file"), older

    def with_local(self, config: RoleConfig, now: int, *, merge: bool = False) -> StationState:
        """This state after a change by the station's own operator at *now* (a replacement,
        or with *merge* a merge): newer than everything before it."""
        as_of = max(now, self.as_of + 1)
        if merge:
            return StationState(self.config.merge(config), as_of, "local", (), self.base)
        return StationState(config, as_of, "local", (), as_of)

    def with_orders(self, orders: Sequence[Order]) -> StationState:
        """This state after a chain of (verified) config orders from the conductor.

        Raises :class:`~roles.StaleOrder` for a chain that says nothing newer than
        :attr:`as_of` (unless it describes exactly what runs, or is the very chain this state
        was made from: the conductor pushing again) and :class:`~roles.InvalidRequest` for an
        empty chain, or a control or ``forget`` order in it (those are not for a station's
        configuration).
        """
        chain = merge_chains(orders)
        if not chain or any(o.kind != "config" or o.mode == "forget" for o in chain):
            raise InvalidRequest(
                "roles.apply: expected a non-empty chain of config orders (replace or merge)"
            )
        issued = chain_issued(chain)
        fresh = [order for order in chain if order.issued > self.as_of]
        if not fresh:
            if issued == self.as_of and (
                (
                    self.source == "conductor"
                    and [o.digest() for o in merge_chains(self.orders)]
                    == [o.digest() for o in chain]
                )
                or chain_config(chain).digest() == self.config.digest()
            ):
                return self
            raise StaleOrder(
                f"{chain[-1].describe()} is not newer than the configuration this station "
                f"runs ({self.describe()}); push the configuration again so a new order is "
                "signed"
            )
        replaces = [i for i, order in enumerate(chain) if order.mode == "replace"]
        if replaces and chain[replaces[-1]].issued > self.as_of:
            start = replaces[-1]
            return StationState(
                chain_config(chain[start:]), issued, "conductor", chain, chain[start].issued
            )
        config = self.config.merge(chain_config(tuple(fresh)))
        return StationState(config, issued, "conductor", chain, self.base)

    def to_dict(self) -> dict[str, Any]:
        """The persisted form (orders as their signed texts)."""
        return {
            "config": self.config.to_dict(),
            "as_of": self.as_of,
            "source": self.source,
            "orders": [order.to_text() for order in self.orders],
            "base": self.base,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str) -> StationState:
        """Decode :meth:`to_dict`'s form; raises :class:`~roles.ConfigFileError`."""
        config = RoleConfig.from_dict(data.get("config", {}), source=source)
        times = []
        for key in ("as_of", "base"):
            value = data.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigFileError.at(source, f"$.{key}", "expected ms since the epoch")
            times.append(value)
        as_of, base = times
        kind = data.get("source", "local")
        if kind not in _SOURCES:
            raise ConfigFileError.at(source, "$.source", f"expected one of {', '.join(_SOURCES)}")
        raw = data.get("orders", [])
        if not isinstance(raw, list):
            raise ConfigFileError.at(source, "$.orders", "expected an array of orders")
        orders = tuple(
            Order.from_text(o, source=f"{source} $.orders[{i}]") for i, o in enumerate(raw)
        )
        return cls(config, as_of, kind, orders, base)
