"""The manager's view: the operator orders for every station, and the stations' answers.

EventStreamr's manager kept one configuration per station and pushed it. Here the manager is
whichever node conducts, and only operators may decide what a station runs, so the view holds
the operators' signed orders themselves (:class:`~roles.Order`), which the conductor relays
with their signatures and the station verifies. The view must survive the conductor:
:class:`DesiredState` is a value that merges (commutative, associative, idempotent) and
travels between conductor candidates, so a new conductor has the same orders to push.

* Per station path (``/room-a/cam1``), a *chain* of config orders: the newest full push
  (``replace``) and the ``merge`` pushes issued after it; :meth:`DesiredState.config_for`
  folds it into the configuration the station should run. Chains merge by union, dropping
  what a newer full push made obsolete. A ``forget`` order (``stagemesh roles forget``) ends
  a chain like a full push with nothing in it, and the station is no longer managed
  (:meth:`DesiredState.wanted`); it stays in the chain as a signed tombstone, so a replica
  that missed it cannot bring the older orders back.
* Per station, the last :class:`StationAnswer`: which configuration (by digest) it answered
  about, and whether it applied it (and the digest of what it then ran) or the typed error it
  raised. Answers merge by ``time``.

Sans-IO: the caller passes ``now`` (federation time), checks signatures (:meth:`filtered`)
and does the pushing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mesh._names import InvalidName
from roles._config import RoleConfig, canonical_json, check_station_path
from roles._errors import ConfigFileError, RolesError, error_family, error_from_wire
from roles._operator import MAX_CHAIN, Order, chain_config, chain_issued, merge_chains

__all__ = ["DesiredState", "StationAnswer"]


@attrs.frozen
class StationAnswer:
    """A station's answer to a pushed configuration: the ``digest`` of that configuration,
    whether it was ``applied``, else the error's ``error_type`` and ``error_message`` (the typed
    error's wire form), and the federation ``time`` it was recorded.

    ``station_digest`` is the digest of what the station ran after applying, when it differs
    from ``digest``: merge pushes are merged into what the station ran before (its file, a
    local change), so the station then announces that digest, not the chain's. ``chain``
    (:func:`~roles._operator.chain_digest`) then names the chain of orders it applied: only
    that chain is known to make the station run ``station_digest``."""

    digest: str
    applied: bool
    time: float
    error_type: str | None = None
    error_message: str | None = None
    station_digest: str | None = None
    chain: str | None = None

    @classmethod
    def ok(
        cls, digest: str, now: float, station_digest: str | None = None, chain: str | None = None
    ) -> StationAnswer:
        """The answer "applied configuration *digest*" (the orders of *chain*, the station
        then running *station_digest*, when that differs)."""
        if station_digest is None or station_digest == digest:
            return cls(digest=digest, applied=True, time=now)
        return cls(digest, True, now, station_digest=station_digest, chain=chain)

    def runs(self, digest: str, chain: str, announced: object) -> bool:
        """Whether this answer says that a station announcing *announced* runs the chain
        *chain* (whose configuration has *digest*) merged into what it ran before: it applied
        that very chain and then ran *announced*."""
        return (
            self.applied
            and self.digest == digest
            and self.station_digest is not None
            and self.chain == chain
            and announced == self.station_digest
        )

    @classmethod
    def refused(cls, digest: str, error: RolesError, now: float) -> StationAnswer:
        """The answer "refused configuration *digest* with *error*"."""
        return cls(
            digest=digest,
            applied=False,
            time=now,
            error_type=error.wire_name,
            error_message=error.message,
        )

    def error(self) -> RolesError | None:
        """Return the typed error of a refusal (rebuilt from its wire form), else ``None``."""
        if self.applied:
            return None
        return error_from_wire(self.error_type or "InvalidConfiguration", self.error_message or "")

    @property
    def error_family(self) -> str | None:
        """The family of the error (the seed's name: see :func:`~roles.error_family`)."""
        return error_family(self.error_type) if self.error_type else None

    def to_dict(self) -> dict[str, Any]:
        """Return a msgpack/JSON-able dict (``station_digest`` only when set)."""
        doc: dict[str, Any] = {
            "digest": self.digest,
            "applied": self.applied,
            "time": self.time,
            "error_type": self.error_type,
            "error_family": self.error_family,
            "error_message": self.error_message,
        }
        if self.station_digest is not None:
            doc["station_digest"] = self.station_digest
            doc["chain"] = self.chain
        return doc

    def sort_key(self) -> tuple[float, str]:
        """Newer answers win a merge; ties are broken by canonical JSON."""
        return (self.time, canonical_json(self.to_dict()))

    @classmethod
    def from_dict(cls, data: object, *, source: str, path: str) -> StationAnswer:
        """Decode :meth:`to_dict`'s form; raises :class:`~roles.ConfigFileError`."""
        if not isinstance(data, Mapping):
            raise ConfigFileError.at(source, path, "expected an object (a station answer)")
        digest = data.get("digest")
        applied = data.get("applied")
        when = data.get("time")
        error_type = data.get("error_type")
        error_message = data.get("error_message")
        station_digest = data.get("station_digest")
        chain = data.get("chain")
        if not isinstance(digest, str):
            raise ConfigFileError.at(source, f"{path}.digest", "expected a string")
        if not isinstance(applied, bool):
            raise ConfigFileError.at(source, f"{path}.applied", "expected true or false")
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise ConfigFileError.at(source, f"{path}.time", "expected a number")
        for name, value in (
            ("error_type", error_type),
            ("error_message", error_message),
            ("station_digest", station_digest),
            ("chain", chain),
        ):
            if value is not None and not isinstance(value, str):
                raise ConfigFileError.at(source, f"{path}.{name}", "expected a string or null")
        return cls(
            digest=digest,
            applied=applied,
            time=float(when),
            error_type=error_type,
            error_message=error_message,
            station_digest=station_digest,
            chain=chain,
        )


def _sorted_pairs(pairs: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(pairs, key=lambda p: p[0]))


def _relayed(chain: tuple[Order, ...]) -> tuple[Order, ...]:
    """The orders of *chain* a station is sent: all of them, without a leading ``forget``
    (a chain that is only a ``forget`` relays nothing: the station is not managed)."""
    return chain[1:] if chain and chain[0].mode == "forget" else chain


@attrs.frozen
class DesiredState:
    """Per station path its chain of config orders, and its last answer (frozen)."""

    stations: tuple[tuple[str, tuple[Order, ...]], ...] = attrs.field(
        default=(), converter=_sorted_pairs
    )
    answers: tuple[tuple[str, StationAnswer], ...] = attrs.field(
        default=(), converter=_sorted_pairs
    )
    _digests: dict[str, str] = attrs.field(
        factory=dict, init=False, eq=False, repr=False, hash=False
    )

    # --- reading -----------------------------------------------------------------------------

    def station_paths(self) -> tuple[str, ...]:
        """Return every managed station path: with orders (not forgotten) or an answer."""
        forgotten = {p for p, chain in self.stations if not _relayed(chain)}
        paths = {p for p, _ in self.stations} | {p for p, _ in self.answers}
        return tuple(sorted(paths - forgotten))

    def chain_for(self, path: str) -> tuple[Order, ...]:
        """Return the chain of *path* as kept (oldest first, a ``forget`` tombstone included):
        what replicas merge."""
        return dict(self.stations).get(path, ())

    def orders_for(self, path: str) -> tuple[Order, ...]:
        """Return the orders to relay to *path* (oldest first; empty when forgotten)."""
        return _relayed(self.chain_for(path))

    def wanted(self) -> tuple[tuple[str, tuple[Order, ...]], ...]:
        """Return (path, orders to relay) of every station the manager manages."""
        return tuple((p, orders) for p, chain in self.stations if (orders := _relayed(chain)))

    def forgotten(self, path: str) -> bool:
        """Return whether an operator's ``forget`` order ends the chain of *path*."""
        chain = self.chain_for(path)
        return bool(chain) and not _relayed(chain)

    def config_for(self, path: str) -> RoleConfig:
        """Return the configuration the orders of *path* describe (empty if none)."""
        return chain_config(self.orders_for(path))

    def digest_for(self, path: str) -> str:
        """Return the digest of :meth:`config_for` (computed once per value)."""
        digest = self._digests.get(path)
        if digest is None:
            digest = self._digests[path] = self.config_for(path).digest()
        return digest

    def issued_for(self, path: str) -> int:
        """Return when the newest order of *path* was issued (0 if none)."""
        return chain_issued(self.chain_for(path))

    def answer_for(self, path: str) -> StationAnswer | None:
        """Return *path*'s last answer, or ``None``."""
        return dict(self.answers).get(path)

    def in_sync(self, path: str) -> bool:
        """Return whether *path* last applied exactly its current desired configuration."""
        answer = self.answer_for(path)
        return answer is not None and answer.applied and answer.digest == self.digest_for(path)

    def out_of_sync(self) -> tuple[str, ...]:
        """Return the stations whose desired configuration is not known to be applied."""
        return tuple(p for p, _ in self.wanted() if not self.in_sync(p))

    # --- changing (each returns a new value) ------------------------------------------------

    def with_order(self, order: Order) -> DesiredState:
        """Return a copy with config *order* added to its station's chain (an older order
        that a newer full push made obsolete changes nothing). A ``forget`` order also drops
        the station's answer.

        Raises ``ValueError`` for a control order or a chain over :data:`MAX_CHAIN` orders.
        """
        if order.kind != "config":
            raise ValueError("only config orders go into the desired state")
        chain = merge_chains(self.chain_for(order.station), (order,))
        if len(chain) > MAX_CHAIN:
            raise ValueError(
                f"{order.station} has {len(chain) - 1} merge pushes since its last full push; "
                f"push its whole configuration (without --merge) to start over (at most "
                f"{MAX_CHAIN})"
            )
        result = self._with_chain(order.station, chain)
        if not _relayed(chain) and result.answer_for(order.station) is not None:
            answers = tuple((p, a) for p, a in result.answers if p != order.station)
            result = attrs.evolve(result, answers=answers)
        return result

    def _with_chain(self, path: str, chain: tuple[Order, ...]) -> DesiredState:
        check_station_path(path)
        others = tuple((p, c) for p, c in self.stations if p != path)
        return attrs.evolve(self, stations=(*others, (path, chain)))

    def record_answer(self, path: str, answer: StationAnswer) -> DesiredState:
        """Return a copy with *answer* recorded for *path* (unless a newer one is there)."""
        check_station_path(path)
        current = self.answer_for(path)
        if current is not None and (
            current.time > answer.time
            or (current.time == answer.time and current.sort_key() >= answer.sort_key())
        ):
            return self
        others = tuple((p, a) for p, a in self.answers if p != path)
        return attrs.evolve(self, answers=(*others, (path, answer)))

    def merge(self, other: DesiredState) -> DesiredState:
        """Return the merge of two views (commutative, associative, idempotent); this very
        value when *other* adds nothing."""
        result = self
        for path, chain in other.stations:
            mine = result.chain_for(path)
            merged = merge_chains(mine, chain)
            if [o.digest() for o in merged] != [o.digest() for o in mine]:
                result = result._with_chain(path, merged)
        for path, answer in other.answers:
            result = result.record_answer(path, answer)
        return result

    def filtered(
        self, accept: Callable[[Order], bool], *, answers: bool = True
    ) -> tuple[DesiredState, int]:
        """Return this view keeping only the orders *accept* takes (a signature check) and,
        unless *answers* is false, the answers; and how many orders were dropped."""
        dropped = 0
        stations = []
        for path, chain in self.stations:
            kept = tuple(order for order in chain if accept(order))
            dropped += len(chain) - len(kept)
            if kept:
                stations.append((path, merge_chains(kept)))
        return DesiredState(stations, self.answers if answers else ()), dropped

    # --- transport ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"stations": {path: [order text, ...]}, "answers": {path: answer}}``."""
        return {
            "stations": {path: [o.to_text() for o in chain] for path, chain in self.stations},
            "answers": {path: answer.to_dict() for path, answer in self.answers},
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str = "desired state") -> DesiredState:
        """Decode :meth:`to_dict`'s form; raises :class:`~roles.ConfigFileError` naming the
        source, the path and the problem. Signatures are not checked here (:meth:`filtered`)."""
        if not isinstance(data, Mapping):
            raise ConfigFileError.at(source, "$", "expected an object with 'stations'")
        stations_raw = data.get("stations", {})
        answers_raw = data.get("answers", {})
        if not isinstance(stations_raw, Mapping) or not isinstance(answers_raw, Mapping):
            raise ConfigFileError.at(source, "$", "'stations' and 'answers' must be objects")
        stations: list[tuple[str, tuple[Order, ...]]] = []
        for path, chain in stations_raw.items():
            where = f'$.stations["{path}"]'
            try:
                check_station_path(path)
            except (ValueError, InvalidName) as exc:
                raise ConfigFileError.at(source, where, str(exc)) from None
            if not isinstance(chain, list) or len(chain) > MAX_CHAIN:
                raise ConfigFileError.at(
                    source, where, f"expected an array of at most {MAX_CHAIN} orders"
                )
            orders = tuple(
                Order.from_text(o, source=f"{source} {where}[{i}]") for i, o in enumerate(chain)
            )
            if any(o.kind != "config" or o.station != path for o in orders):
                raise ConfigFileError.at(source, where, f"holds an order that is not for {path}")
            stations.append((path, merge_chains(orders)))
        answers: list[tuple[str, StationAnswer]] = []
        for path, answer in answers_raw.items():
            where = f'$.answers["{path}"]'
            try:
                check_station_path(path)
            except (ValueError, InvalidName) as exc:
                raise ConfigFileError.at(source, where, str(exc)) from None
            answers.append((path, StationAnswer.from_dict(answer, source=source, path=where)))
        return cls(stations=stations, answers=answers)
