"""The station manager as a state machine with no network, clock or event loop (sans-IO).

EventStreamr's manager pushed each station's configuration and recorded its answers. Here the
manager is whichever node conducts, it relays operators' signed orders, and its view must
survive the conductor. :class:`ManagerCore` decides everything the manager does; a driver
(the trio adapter in :mod:`roles._extension`, or the simulation in :mod:`roles._manager_sim`)
carries its requests and brings back the outcomes, each time with ``now`` (federation time,
seconds):

* **inputs**: :meth:`~ManagerCore.update_view` (this node's path, the conductor and its lease
  term, and the live members with the configuration digest each station announces and
  whether it is a conductor candidate); :meth:`~ManagerCore.push` (an operator's config
  order, ``roles.push``), after :meth:`~ManagerCore.check_push`; the outcomes of the requests
  it asked for (:meth:`~ManagerCore.check_done`, :meth:`~ManagerCore.apply_done`); replicas of
  the desired state from other nodes (:meth:`~ManagerCore.merge_in`,
  :meth:`~ManagerCore.replica`); and :meth:`~ManagerCore.handle_timer` at
  :meth:`~ManagerCore.next_deadline`;
* **outputs** (:meth:`~ManagerCore.take_outputs`): :class:`CheckConfig` (``roles.check``
  to a station), :class:`ApplyOrders` (``roles.apply``: the station's chain of orders and
  the lease term), :class:`Replicate` (``roles.desired.sync`` to the other candidates),
  :class:`Exchange` (``roles.desired`` with the conductor, anti-entropy), :class:`Persist`
  (save the desired state) and :class:`PushAnswered` (the answer to an operator's push).

What it does, per station (one request at a time per station; pushes wait their turn):

* an operator's push: the station checks the resulting configuration first; a refusal
  changes nothing (neither the desired state nor the station) and is the answer; otherwise
  the order joins the desired state, which is replicated, and the chain is relayed to the
  station (``pending`` when the station is not reachable: it is pushed when it is live);
  a ``forget`` order drops the station from the desired state (nothing is sent to it);
* every ``manager_interval`` while conducting, each live station whose announced digest is
  not its desired configuration's is pushed again (a new conductor, a restarted station),
  unless it just applied it (its announcement is on the way) or refused that configuration
  less than ``refused_retry`` ago (a :class:`~roles.NotConductor` refusal, a station whose
  view lags, is retried at the next round);
* every ``sync_interval`` a standby candidate exchanges its view with the conductor.

Orders merged from other nodes are kept only if the node's
:class:`~roles.RemoteAuthority` accepts their signatures, so a member cannot inject a desired
state. A station's answers are recorded in the desired state (:class:`~roles.StationAnswer`).
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from roles._authority import ChangeRefused, RemoteAuthority
from roles._config import RoleConfig
from roles._desired import DesiredState, StationAnswer
from roles._errors import (
    InvalidRequest,
    NotConductor,
    RolesError,
    StaleOrder,
    Unauthorized,
    error_family,
)
from roles._operator import Order, chain_config, chain_digest

__all__ = [
    "ApplyOrders",
    "CheckConfig",
    "Done",
    "Exchange",
    "Failed",
    "ManagerCore",
    "Member",
    "MeshView",
    "Outcome",
    "Output",
    "Persist",
    "PushAnswered",
    "Refused",
    "Replicate",
    "Unreachable",
    "answer_fields",
    "state_digest",
]


# --- what the manager is told ---------------------------------------------------------------


@attrs.frozen
class Member:
    """A live member as its member record shows it: the configuration ``digest`` a station
    announces (``d``; ``None`` for a node that runs no station roles) and whether it is a
    conductor ``candidate`` (``c``)."""

    digest: str | None = None
    candidate: bool = False


@attrs.frozen
class MeshView:
    """This node's view of the mesh: its own ``path``, the ``conductor`` (a path or
    ``None``) and its lease ``term``, and the live ``members`` by path."""

    path: str
    conductor: str | None = None
    term: int | None = None
    members: Mapping[str, Member] = attrs.field(factory=dict)

    @property
    def conducting(self) -> bool:
        """Whether this node is the conductor in its own view."""
        return self.conductor == self.path


@attrs.frozen
class Done:
    """The station answered the request: ``result`` is its answer (for ``roles.apply``, the
    ``ApplyResult`` form: ``digest``, ``started``, ``stopped``, ...)."""

    result: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Refused:
    """The station refused with a typed error (its ``error_type`` and ``message``)."""

    error_type: str
    message: str


@attrs.frozen
class Unreachable:
    """The station could not be asked: not a live member, no connection, or no answer in
    time (``error_type`` ``NoSuchMember``, ``PeerUnreachable``, ``RequestTimeout``)."""

    error_type: str
    message: str


@attrs.frozen
class Failed:
    """The request could not even be sent (it is malformed or too large)."""

    error_type: str
    message: str


Outcome = Done | Refused | Unreachable | Failed


# --- what the manager asks for --------------------------------------------------------------


@attrs.frozen
class CheckConfig:
    """Ask ``station`` to check ``config`` (``roles.check``); answer with
    :meth:`ManagerCore.check_done` and the same ``op``."""

    op: int
    station: str
    config: RoleConfig


@attrs.frozen
class ApplyOrders:
    """Relay ``orders`` (the station's chain, whose configuration has ``digest``) to
    ``station`` with ``roles.apply`` at lease ``term``; answer with
    :meth:`ManagerCore.apply_done` and the same ``op``. ``reason`` is ``push`` (an operator's
    push) or ``reconcile`` (the station does not run its desired configuration)."""

    op: int
    station: str
    orders: tuple[Order, ...]
    term: int | None
    digest: str
    reason: Literal["push", "reconcile"]


@attrs.frozen
class Replicate:
    """Send ``state`` to each of ``targets`` (the other live conductor candidates) with
    ``roles.desired.sync``; best effort, no answer needed."""

    targets: tuple[str, ...]
    state: DesiredState


@attrs.frozen
class Exchange:
    """Send ``state`` to ``target`` (the conductor) with ``roles.desired``; hand its reply to
    :meth:`ManagerCore.merge_in` with ``answers=True``."""

    target: str
    state: DesiredState


@attrs.frozen
class Persist:
    """Save ``state`` (the desired state changed)."""

    state: DesiredState


@attrs.frozen
class PushAnswered:
    """The operator's push number ``push`` is answered: ``answer`` (``station``, ``applied``,
    ``digest``, error fields, ``pending``, ``kept``: whether the order is in the desired state
    now, so the manager pushes it until the station runs it, ...), or ``error`` to raise to
    the sender."""

    push: int
    answer: Mapping[str, Any] | None
    error: RolesError | None = None


Output = CheckConfig | ApplyOrders | Replicate | Exchange | Persist | PushAnswered


def answer_fields(error_type: str | None, message: str | None) -> dict[str, Any]:
    """``error_type``, ``error_family`` (the seed's name) and ``error`` of an answer."""
    return {
        "error_type": error_type,
        "error_family": error_family(error_type) if error_type else None,
        "error": message,
    }


def _holds(chain: tuple[Order, ...], order: Order) -> bool:
    """Whether *chain* holds *order* (compared by digest: cheap, and exact)."""
    digest = order.digest()
    return any(o.digest() == digest for o in chain)


def state_digest(state: DesiredState) -> str:
    """A short digest of a desired state's configurations (to compare replicas)."""
    text = json.dumps({p: state.digest_for(p) for p, _ in state.wanted()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.define
class _Op:
    """One request in flight for a station (at most one per station)."""

    station: str
    stage: Literal["check", "apply"]
    digest: str = ""
    chain: str = ""
    push: int | None = None
    order: Order | None = None
    answer: dict[str, Any] = attrs.field(factory=dict)


class ManagerCore:
    """The manager of one node (see the module docstring). *authority* checks operators'
    signatures; *desired* is the saved view to start from; a *candidate* (a ``--conductor``
    node) exchanges its view with the conductor while it stands by."""

    def __init__(
        self,
        authority: RemoteAuthority,
        *,
        path: str,
        now: float,
        desired: DesiredState | None = None,
        candidate: bool = False,
        manager_interval: float = 2.0,
        sync_interval: float = 5.0,
        refused_retry: float = 30.0,
    ) -> None:
        self.authority = authority
        self.desired = desired if desired is not None else DesiredState()
        self.candidate = candidate
        self.manager_interval = manager_interval
        self.sync_interval = sync_interval
        self.refused_retry = refused_retry
        self.view = MeshView(path)
        self._ops: dict[int, _Op] = {}
        self._busy: dict[str, int] = {}
        self._queue: dict[str, collections.deque[tuple[int, Order]]] = {}
        self._refused: dict[str, tuple[str, float]] = {}
        self._outputs: list[Output] = []
        self._dirty = False
        self._ids = 0
        self._next_reconcile = now + manager_interval
        self._next_sync = now + sync_interval

    # --- inputs ----------------------------------------------------------------------------

    def update_view(self, view: MeshView) -> None:
        """This node's view of the mesh changed (or may have: call it before every input)."""
        self.view = view

    def check_push(self) -> None:
        """Raise :class:`~roles.NotConductor` if this node does not conduct, and
        :class:`~roles._authority.ChangeRefused` if it takes no remote change at all: what a
        ``roles.push`` meets before its payload is read."""
        view = self.view
        if not view.conducting:
            where = (
                f"the conductor is {view.conductor}"
                if view.conductor
                else "there is no conductor now"
            )
            raise NotConductor(
                f"{view.path} is not the conductor; {where} (send roles.push there)",
                conductor=view.conductor,
            )
        if self.authority.mode == "refused":
            raise ChangeRefused("refused", Unauthorized(self.authority.reason()))

    def push(self, now: float, order: Order) -> int:
        """Take an operator's config *order* (``roles.push``); return the number its
        :class:`PushAnswered` will carry. Raises as :meth:`check_push` does,
        :class:`~roles.InvalidRequest` for an order that is not a config order and
        :class:`~roles._authority.ChangeRefused` (``signature``) for a bad signature."""
        self.check_push()
        if order.kind != "config":
            raise InvalidRequest("roles.push: the order must be a config order")
        try:
            self.authority.check(order)
        except Unauthorized as exc:
            raise ChangeRefused("signature", exc) from None
        push = self._new_id()
        self._queue.setdefault(order.station, collections.deque()).append((push, order))
        self._advance(now, order.station)
        return push

    def check_done(self, now: float, op: int, outcome: Outcome) -> None:
        """The outcome of :class:`CheckConfig` number *op*."""
        state = self._ops.pop(op, None)
        if state is None or state.stage != "check" or state.order is None:
            return
        station, order, answer = state.station, state.order, state.answer
        if isinstance(outcome, Refused):
            answer["kept"] = _holds(self.desired.chain_for(station), order)  # pushed before
            if outcome.error_type == "UnknownRequest":
                message = f"{station} runs no station roles (start it with --roles FILE)"
                answer.update(answer_fields("NoStation", message))
            else:
                answer.update(answer_fields(outcome.error_type, outcome.message))
            self._finish(now, station, state.push, answer)
            self._advance(now, station)
            return
        if isinstance(outcome, Failed):
            error = InvalidRequest(
                f"roles.push: cannot ask {station} to check the configuration: "
                f"{outcome.error_type}: {outcome.message}"
            )
            self._finish(now, station, state.push, None, error)
            self._advance(now, station)
            return
        # The station accepts it, or cannot be asked: the order joins the desired state (as
        # it is now: a replica may have been merged in meanwhile).
        try:
            desired = self.desired.with_order(order)
        except ValueError as exc:
            self._finish(now, station, state.push, None, InvalidRequest(f"roles.push: {exc}"))
            self._advance(now, station)
            return
        if not _holds(desired.chain_for(station), order):
            answer.update(self._stale(desired, order))
            self._finish(now, station, state.push, answer)
            self._advance(now, station)
            return
        self._set(desired)
        digest = desired.digest_for(station)
        answer.update(digest=digest, kept=True)
        if isinstance(outcome, Unreachable):
            answer.update(
                answer_fields(
                    outcome.error_type,
                    f"{outcome.message}; the desired configuration is kept and pushed when "
                    f"{station} is live",
                ),
                pending=True,
            )
            self._finish(now, station, state.push, answer)
            self._advance(now, station)
            return
        orders = desired.orders_for(station)
        state.stage, state.digest, state.chain = "apply", digest, chain_digest(orders)
        self._ops[op] = state
        self._outputs.append(ApplyOrders(op, station, orders, self.view.term, digest, "push"))

    def apply_done(self, now: float, op: int, outcome: Outcome) -> None:
        """The outcome of :class:`ApplyOrders` number *op*: a station's answer is recorded in
        the desired state (a refusal other than :class:`~roles.NotConductor` is not retried
        for ``refused_retry`` seconds)."""
        state = self._ops.pop(op, None)
        if state is None or state.stage != "apply":
            return
        station, digest = state.station, state.digest
        out: dict[str, Any]
        if isinstance(outcome, Done):
            self._refused.pop(station, None)
            ran = outcome.result.get("digest")
            answer = StationAnswer.ok(
                digest, now, ran if isinstance(ran, str) else None, state.chain
            )
            self._set(self.desired.record_answer(station, answer))
            out = {"applied": True, **answer_fields(None, None)}
            for key in ("started", "stopped", "restarted", "unchanged"):
                out[key] = list(outcome.result.get(key) or [])
        elif isinstance(outcome, Refused):
            refusal = StationAnswer(
                digest=digest,
                applied=False,
                time=now,
                error_type=outcome.error_type,
                error_message=outcome.message,
            )
            if outcome.error_type != NotConductor.wire_name:  # a lagging view: retry soon
                self._refused[station] = (state.chain, now)
            self._set(self.desired.record_answer(station, refusal))
            out = {"applied": False, **answer_fields(outcome.error_type, outcome.message)}
        else:
            out = {"applied": False, **answer_fields(outcome.error_type, outcome.message)}
        if state.push is not None:
            state.answer.update(out)
        self._finish(now, station, state.push, state.answer if state.push is not None else None)
        self._advance(now, station)

    def merge_in(self, now: float, other: DesiredState, *, answers: bool) -> int:
        """Merge another node's view of the desired state, keeping only the orders whose
        signatures this node accepts (and its answers only if *answers*); return how many
        orders were dropped."""
        verified, dropped = other.filtered(self.authority.accepts, answers=answers)
        self._set(self.desired.merge(verified))
        return dropped

    def replica(self, now: float, other: DesiredState, sender: str | None) -> int:
        """A replica pushed by *sender* (``roles.desired.sync``): merged as :meth:`merge_in`
        does, its answers taken only from the conductor."""
        from_conductor = sender is not None and sender == self.view.conductor
        return self.merge_in(now, other, answers=from_conductor)

    def handle_timer(self, now: float) -> None:
        """Call at :meth:`next_deadline`: push to stations out of sync (while conducting) or
        exchange the view with the conductor (a standby candidate)."""
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.manager_interval
            if self.view.conducting:
                self._reconcile(now)
        if self.candidate and now >= self._next_sync:
            self._next_sync = now + self.sync_interval
            conductor = self.view.conductor
            if conductor is not None and not self.view.conducting:
                self._outputs.append(Exchange(conductor, self.desired))

    # --- outputs ---------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` has something to do next."""
        if self.candidate:
            return min(self._next_reconcile, self._next_sync)
        return self._next_reconcile

    def take_outputs(self) -> list[Output]:
        """Return (and forget) what the driver should do, oldest first; a changed desired
        state adds one :class:`Persist` and, while conducting, one :class:`Replicate`."""
        if self._dirty:
            self._dirty = False
            self._outputs.append(Persist(self.desired))
            view = self.view
            if view.conducting:
                targets = tuple(
                    sorted(p for p, m in view.members.items() if m.candidate and p != view.path)
                )
                if targets:
                    self._outputs.append(Replicate(targets, self.desired))
        outputs, self._outputs = self._outputs, []
        return outputs

    # --- views -----------------------------------------------------------------------------

    def busy(self, station: str) -> bool:
        """Whether a request for *station* is in flight or a push waits for one."""
        return station in self._busy or bool(self._queue.get(station))

    def in_sync(self, station: str) -> bool:
        """Whether *station* is live and announces what it runs after applying its desired
        configuration."""
        member = self.view.members.get(station)
        if member is None or member.digest is None:
            return False
        digest = self.desired.digest_for(station)
        answer = self.desired.answer_for(station)
        if member.digest == digest:
            return True
        chain = chain_digest(self.desired.orders_for(station))
        return answer is not None and answer.runs(digest, chain, member.digest)

    def stations(self) -> dict[str, dict[str, Any]]:
        """Per managed station, what the status API shows: the desired ``config`` and its
        ``digest``, the ``orders`` it comes from, whether it is ``live``, the
        ``station_digest`` it announces, ``in_sync`` and its last ``answer``."""
        out: dict[str, dict[str, Any]] = {}
        for path in self.desired.station_paths():
            orders = self.desired.orders_for(path)
            member = self.view.members.get(path)
            answer = self.desired.answer_for(path)
            out[path] = {
                "digest": self.desired.digest_for(path),
                "config": chain_config(orders).to_dict(),
                "orders": [
                    {"issued": o.issued, "mode": o.mode, "key_id": o.key_id} for o in orders
                ],
                "live": member is not None,
                "station_digest": member.digest if member is not None else None,
                "in_sync": self.in_sync(path),
                "answer": answer.to_dict() if answer is not None else None,
            }
        return out

    # --- inside ----------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    def _set(self, desired: DesiredState) -> None:
        if desired is not self.desired:
            self.desired = desired
            self._dirty = True

    def _stale(self, desired: DesiredState, order: Order) -> dict[str, Any]:
        error = StaleOrder(
            f"{order.describe()} is older than the last full push to {order.station} "
            f"(issued at {desired.issued_for(order.station)}); push again"
        )
        return answer_fields(error.wire_name, error.message)

    def _advance(self, now: float, station: str) -> None:
        """Start the next waiting push for *station*, if it is free."""
        queue = self._queue.get(station)
        while queue and station not in self._busy:
            push, order = queue.popleft()
            answer: dict[str, Any] = {
                "station": station,
                "applied": False,
                "digest": None,
                **answer_fields(None, None),
                "pending": False,
                "kept": False,
            }
            try:
                desired = self.desired.with_order(order)
            except ValueError as exc:
                self._finish(now, station, push, None, InvalidRequest(f"roles.push: {exc}"))
                continue
            if not _holds(desired.chain_for(station), order):
                answer.update(self._stale(desired, order))
                self._finish(now, station, push, answer)
                continue
            if order.mode == "forget":
                was_desired = bool(self.desired.orders_for(station))
                self._refused.pop(station, None)
                self._set(desired)
                answer.update(forgotten=True, kept=True, was_desired=was_desired)
                self._finish(now, station, push, answer)
                continue
            answer["digest"] = desired.digest_for(station)
            op = self._new_id()
            self._busy[station] = op
            self._ops[op] = _Op(station, "check", push=push, order=order, answer=answer)
            self._outputs.append(CheckConfig(op, station, desired.config_for(station)))
        if not queue:
            self._queue.pop(station, None)

    def _finish(
        self,
        now: float,
        station: str,
        push: int | None,
        answer: dict[str, Any] | None,
        error: RolesError | None = None,
    ) -> None:
        """A request for *station* is over (or a push needed none): answer the push and free
        the station."""
        if push is not None:
            self._outputs.append(PushAnswered(push, answer, error))
        op = self._busy.get(station)
        if op is not None and op not in self._ops:
            del self._busy[station]

    def _reconcile(self, now: float) -> None:
        """Push again to each live station that does not run its desired configuration."""
        for path, orders in self.desired.wanted():
            if self.busy(path):
                continue
            member = self.view.members.get(path)
            if member is None or member.digest is None:
                continue  # not live, or not (yet) running station roles
            digest = self.desired.digest_for(path)
            answer = self.desired.answer_for(path)
            if self.in_sync(path):
                if not self.desired.in_sync(path):
                    observed = StationAnswer.ok(digest, now)
                    self._set(self.desired.record_answer(path, observed))
                continue
            if (
                answer is not None
                and answer.applied
                and answer.digest == digest
                and now - answer.time < 2 * self.manager_interval
            ):
                continue  # just applied; its announcement is on the way
            chain = chain_digest(orders)
            refused_chain, refused_at = self._refused.get(path, ("", 0.0))
            if refused_chain == chain and now - refused_at < self.refused_retry:
                continue
            op = self._new_id()
            self._busy[path] = op
            self._ops[op] = _Op(path, "apply", digest=digest, chain=chain)
            self._outputs.append(
                ApplyOrders(op, path, orders, self.view.term, digest, "reconcile")
            )
