"""Roles inside a node: the station (``--roles FILE``) and the manager (the conductor).

:class:`RolesExtension` is a :class:`mesh.Extension`; the composition root (``mesh.__main__``)
builds it with :func:`roles_extension_factory` from the ``stagemesh node`` flags:

* with ``--roles FILE`` the node is a **station**: it opens a :class:`~roles.Station` in
  ``<state-dir>/<federation>/<orchestra>/<name>/roles/`` (so it keeps running its last applied
  configuration when no conductor is reachable), and announces in its member record its roles
  summary (``r``), identity (``i``) and the digest of its configuration (``d``), at most every
  ``meta_interval`` seconds and only when they change. Its own operator changes it through the
  node's local API (:meth:`RolesExtension.local_handlers`: every station request kind, no
  signature). Other nodes may read it (``roles.show``, ``roles.status``, ``roles.logs``,
  ``roles.check``), but change it only as :class:`~roles.RemoteAuthority` allows: a
  ``roles.apply`` is a chain of operator orders relayed by the current conductor (checked
  against the conductor's lease term), verified here, end to end; ``roles.start``, ``stop``
  and ``restart`` carry a signed control order;
* every node with the extension (every ``--conductor`` candidate, every station) carries the
  **manager**, which acts only while the node conducts. The conductor accepts ``roles.push``
  of an operator's order (others raise :class:`~roles.NotConductor`; an order without a valid
  signature raises :class:`~roles.Unauthorized`), keeps the orders of every station in a
  :class:`~roles.DesiredState`, replicates it to every conductor candidate, relays the orders to
  the station with ``node.request`` and records the answer. Every ``manager_interval`` seconds
  it pushes again to each live station whose announced digest differs from its desired one (a
  new conductor, a restarted station). Standby candidates exchange their view with the
  conductor every ``sync_interval`` seconds (anti-entropy), and the view is saved in the state
  directory (``desired.json``), so a new or restarted conductor has it. Orders merged from
  another node are kept only if their signatures verify here, so a member cannot inject a
  desired state.

A candidate without ``--roles`` runs the manager only (no station, no ``r``/``i``/``d`` meta).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from mesh._election import CONDUCTOR
from mesh._extensions import Extension
from mesh._node import (
    NoSuchMember,
    PeerUnreachable,
    RemoteError,
    RequestError,
    RequestTimeout,
    default_name,
    default_orchestra,
)
from mesh._state import default_state_dir, write_json_atomic
from mesh._wire import Value
from roles._authority import RemoteAuthority
from roles._config import RoleConfig, StationFile, load_station_file
from roles._desired import DesiredState, StationAnswer
from roles._errors import (
    ConfigFileError,
    InvalidConfiguration,
    InvalidRequest,
    NotConductor,
    RolesError,
    StaleOrder,
    Unauthorized,
    error_family,
    error_from_wire,
    is_roles_error,
)
from roles._factories import FactoryRegistry, default_factories
from roles._identity import StationIdentity
from roles._operator import (
    MAX_CHAIN,
    OperatorKey,
    OperatorKeyError,
    OperatorKeyring,
    Order,
    chain_config,
)
from roles._station import REQUEST_KINDS, Station, StationPolicy, open_station
from roles._supervisor import BackoffPolicy

if TYPE_CHECKING:
    from mesh._node import Node

__all__ = [
    "DESIRED_FILE_NAME",
    "MANAGER_KINDS",
    "META_BUDGET",
    "RolesExtension",
    "push_config",
    "remote_error",
    "roles_extension_factory",
    "station_dir",
    "station_meta",
]

logger = logging.getLogger(__name__)

#: The file (in the node's ``roles/`` state directory) that holds the manager's desired state.
DESIRED_FILE_NAME = "desired.json"
#: Upper bound, in msgpack bytes, of what a station adds to its member metadata.
META_BUDGET = 300
#: Request kinds every node with the extension answers (the manager's).
MANAGER_KINDS = ("roles.push", "roles.desired", "roles.desired.sync")
_NOT_A_STATION = ("UnknownRequest", "NoStation")


def remote_error(error_type: str, message: str) -> RolesError:
    """Rebuild a typed roles error from a :class:`mesh.RemoteError`'s type name and message
    (:func:`~roles.error_from_wire`)."""
    return error_from_wire(error_type, message)


def station_dir(state_dir: Path, federation: str, orchestra: str, name: str) -> Path:
    """Where a node keeps its roles state: ``<state>/<federation>/<orchestra>/<name>/roles``."""
    return state_dir / federation / orchestra / name / "roles"


def _plain(value: Any) -> Value:
    """*value* as plain msgpack data (tuples become lists, keys strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    return str(value)


def _packed_size(value: object) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


def station_meta(
    summary: Mapping[str, Mapping[str, int]], identity: Mapping[str, Any], digest: str
) -> dict[str, Value]:
    """The member metadata of a station: ``r`` (roles summary), ``i`` (identity), ``d``
    (configuration digest), kept under :data:`META_BUDGET` msgpack bytes.

    When the full form does not fit, the summary becomes ``role -> [configured, running,
    failed]``, then addresses are dropped from the identity, then roles from the end.
    """
    ident: dict[str, Any] = dict(identity)
    roles: dict[str, Any] = {role: dict(counts) for role, counts in summary.items()}
    meta: dict[str, Any] = {"r": roles, "i": ident, "d": digest}
    if _packed_size(meta) <= META_BUDGET:
        return meta
    meta["r"] = {
        role: [c.get("configured", 0), c.get("running", 0), c.get("failed", 0)]
        for role, c in summary.items()
    }
    addresses = list(ident.get("a") or [])
    while _packed_size(meta) > META_BUDGET and addresses:
        addresses.pop()
        meta["i"] = {**ident, "a": list(addresses)}
    while _packed_size(meta) > META_BUDGET and meta["r"]:
        meta["r"].pop(sorted(meta["r"])[-1])
    return meta


Handler = Callable[[str | None, Value], Awaitable[Value]]


class RolesExtension(Extension):
    """The roles of a node: a station (when given a :class:`~roles.StationFile`) and the
    manager (always; it acts only while the node conducts). See the module docstring.

    *operator_keys* are the operator public keys this node trusts; *insecure_remote_roles*
    allows remote role changes on an open federation (see :class:`~roles.RemoteAuthority`).
    """

    name = "roles"

    def __init__(
        self,
        station_file: StationFile | None = None,
        *,
        factories: FactoryRegistry | None = None,
        backoff: BackoffPolicy | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        operator_keys: OperatorKeyring | None = None,
        insecure_remote_roles: bool = False,
        meta_interval: float = 0.5,
        manager_interval: float = 2.0,
        sync_interval: float = 5.0,
        refused_retry: float = 30.0,
        push_timeout: float = 30.0,
    ) -> None:
        self.station_file = station_file
        self.factories = factories
        self.backoff = backoff
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.operator_keys = operator_keys if operator_keys is not None else OperatorKeyring()
        self.insecure_remote_roles = insecure_remote_roles
        self.meta_interval = meta_interval
        self.manager_interval = manager_interval
        self.sync_interval = sync_interval
        self.refused_retry = refused_retry
        self.push_timeout = push_timeout
        self.station: Station | None = None
        self.desired = DesiredState()
        self.authority: RemoteAuthority | None = None
        self.refusals: dict[str, int] = {}
        self._node: Node | None = None
        self._nursery: trio.Nursery | None = None
        self._station_ready = trio.Event()
        self._poke = trio.Event()
        self._save_needed = trio.Event()
        self._station_locks: dict[str, trio.Lock] = {}
        self._busy: set[str] = set()
        self._refused: dict[str, tuple[str, float]] = {}
        self._last_push: dict[str, dict[str, Any]] = {}
        self._desired_path: Path | None = None

    # --- the extension interface -------------------------------------------------------------

    def meta(self) -> Mapping[str, Value]:
        station = self.station
        if station is None:
            return {}
        return station_meta(
            station.roles_summary(), station.identity.to_meta(), station.config.digest()
        )

    def status(self) -> Mapping[str, Any]:
        station = self.station
        doc: dict[str, Any] = {"station": station.status() if station is not None else None}
        doc["manager"] = self.manager_view()
        doc["remote_changes"] = self.authority.to_dict() if self.authority is not None else None
        doc["refused_changes"] = dict(self.refusals)
        doc["identities"] = self.identities()
        return doc

    def handlers(self) -> Mapping[str, Handler]:
        table: dict[str, Handler] = {
            "roles.push": self._handle_push,
            "roles.desired": self._handle_desired,
            "roles.desired.sync": self._handle_desired_sync,
        }
        if self.station_file is not None:
            for kind in ("roles.show", "roles.status", "roles.logs", "roles.check"):
                table[kind] = self._station_handler(kind)
            table["roles.apply"] = self._remote_apply
            for kind in ("roles.start", "roles.stop", "roles.restart"):
                table[kind] = self._remote_control(kind)
        return table

    def local_handlers(self) -> Mapping[str, Callable[[Value], Awaitable[Value]]]:
        """Every station request kind, for the station's own operator (the node's local API,
        which checks the node's secret): no operator signature, no conductor."""
        if self.station_file is None:
            return {}

        def bind(kind: str) -> Callable[[Value], Awaitable[Value]]:
            handler = self._station_handler(kind)

            async def local(payload: Value) -> Value:
                return await handler(None, payload)

            return local

        return {kind: bind(kind) for kind in REQUEST_KINDS}

    def error_family(self, error_type: str) -> str | None:
        """The seed's family name of a roles error type (``None`` for other types)."""
        return error_family(error_type) if is_roles_error(error_type) else None

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._node = node
        config = node.config
        self.authority = RemoteAuthority(
            federation=config.federation,
            keyed=config.keyring is not None,
            keyring=self.operator_keys,
            insecure=self.insecure_remote_roles,
        )
        mode = self.authority.mode
        logger.log(
            logging.INFO if mode == "signed" else logging.WARNING,
            "%s: %s",
            "station" if self.station_file is not None else "roles manager",
            self.authority.reason(),
        )
        base = self.state_dir or station_dir(
            config.state_dir or default_state_dir(),
            config.federation,
            config.orchestra,
            config.name,
        )
        self._desired_path = base / DESIRED_FILE_NAME
        loaded = await trio.to_thread.run_sync(self._load_desired, self._desired_path)
        self.desired, dropped = loaded.filtered(self.authority.accepts)
        if dropped:
            logger.warning(
                "dropped %d saved order(s) this node cannot verify (a retired or unknown "
                "operator key)",
                dropped,
            )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.station_file is not None:
                await nursery.start(self._run_station, node, base)
            nursery.start_soon(self._save_loop)
            nursery.start_soon(self._manager_loop, node)
            if config.conductor:
                nursery.start_soon(self._anti_entropy_loop, node)
            task_status.started()

    # --- the station ----------------------------------------------------------------------

    async def _run_station(
        self, node: Node, state_dir: Path, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        station_file = self.station_file
        assert station_file is not None
        async with open_station(
            state_dir,
            initial=station_file.roles,
            factories=self.factories,
            blocked_roles=station_file.blocked_roles,
            variables=station_file.variables,
            backoff=self.backoff,
            allowed_roots=station_file.allowed_roots,
            env_allow=station_file.env_allow,
        ) as station:
            self.station = station
            self._station_ready.set()
            node.update_meta()
            announced = dict(self.meta())
            events = station.subscribe()
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_events, events)
                while True:
                    with trio.move_on_after(max(self.manager_interval, 1.0)):
                        await self._poke.wait()
                    self._poke = trio.Event()
                    meta = dict(self.meta())
                    if meta != announced:
                        node.update_meta()
                        announced = meta
                    await trio.sleep(self.meta_interval)  # at most one announcement per interval

    async def _forward_events(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async for _ in events:
            self._poke.set()

    async def _ready_station(self) -> Station:
        if self.station is None:
            with trio.move_on_after(10.0):
                await self._station_ready.wait()
        if self.station is None:
            raise InvalidRequest("this station is still starting; try again in a moment")
        return self.station

    def _station_handler(self, kind: str) -> Handler:
        async def handler(sender: str | None, payload: Value) -> Value:
            station = await self._ready_station()
            if not isinstance(payload, Mapping):
                raise InvalidRequest(f"{kind}: the payload must be an object (a map)")
            try:
                return _plain(await station.handle_request(kind, payload))
            finally:
                self._poke.set()

        return handler

    def _refuse(self, reason: str, error: RolesError) -> RolesError:
        """Count a refused remote change by reason, log it, and return the error to raise."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        logger.warning("refused a remote role change (%s): %s", reason, error)
        return error

    def _require_authority(self) -> RemoteAuthority:
        authority = self.authority
        if authority is None:
            raise InvalidRequest("the roles extension is still starting; try again in a moment")
        if authority.mode == "refused":
            raise self._refuse("refused", Unauthorized(authority.reason()))
        return authority

    def _check_from_conductor(self, node: Node, sender: str | None, term: object) -> None:
        """A configuration comes only from the current conductor, at the term we know."""
        conductor = node.conductor
        lease = node.core.election.lease(CONDUCTOR)
        known = lease.term if lease is not None else None
        if sender is None or sender != conductor or term != known:
            raise self._refuse(
                "not-conductor",
                NotConductor(
                    f"roles.apply comes only from the conductor: {sender or 'an unknown sender'}"
                    f" (term {term!r}) is not the conductor in the view of {node.path} "
                    f"({conductor or 'none'}{f' at term {known}' if known is not None else ''})",
                    conductor=conductor,
                ),
            )

    def _orders(self, raw: object, what: str, limit: int = MAX_CHAIN) -> list[Order]:
        if not isinstance(raw, list) or not 1 <= len(raw) <= limit:
            raise InvalidRequest(f"{what}: expected an array of 1 to {limit} orders")
        return [Order.from_text(o, source=f"{what} order {i}") for i, o in enumerate(raw)]

    async def _remote_apply(self, sender: str | None, payload: Value) -> Value:
        """``roles.apply {"orders": [...], "term"}`` from the conductor: the operator orders
        whose configuration this station should run, verified here."""
        station = await self._ready_station()
        node = self._require_node()
        authority = self._require_authority()
        if not isinstance(payload, Mapping) or "orders" not in payload:
            raise InvalidRequest(
                "roles.apply from another node carries 'orders' (signed by an operator, "
                "relayed by the conductor) and 'term'; a station's own operator applies a "
                "configuration through the node's local API"
            )
        self._check_from_conductor(node, sender, payload.get("term"))
        orders = self._orders(payload["orders"], "roles.apply")
        for order in orders:
            try:
                authority.check(order, station=node.path)
            except Unauthorized as exc:
                raise self._refuse("signature", exc) from None
            if order.kind != "config":
                raise InvalidRequest("roles.apply: every order must be a config order")
        try:
            result = await station.apply_orders(orders)
        except StaleOrder as exc:
            raise self._refuse("stale", exc) from None
        finally:
            self._poke.set()
        return _plain(result.to_dict())

    def _remote_control(self, kind: str) -> Handler:
        action = kind.removeprefix("roles.")

        async def handler(sender: str | None, payload: Value) -> Value:
            """``roles.start|stop|restart {"order"}``: a signed control order."""
            station = await self._ready_station()
            node = self._require_node()
            authority = self._require_authority()
            if not isinstance(payload, Mapping) or "order" not in payload:
                raise InvalidRequest(
                    f"{kind} from another node carries 'order', signed by an operator "
                    f"(stagemesh roles {action} --operator-key FILE); the station's own "
                    "operator uses the node's local API"
                )
            (order,) = self._orders([payload["order"]], kind, 1)
            try:
                authority.check(order, station=node.path)
            except Unauthorized as exc:
                raise self._refuse("signature", exc) from None
            if order.kind != "control" or order.action != action:
                raise InvalidRequest(f"{kind}: the order is not a {action!r} control order")
            try:
                statuses = await station.control(order)
            except StaleOrder as exc:
                raise self._refuse("stale", exc) from None
            finally:
                self._poke.set()
            return _plain({"instances": [s.to_dict() for s in statuses]})

        return handler

    # --- the manager: requests ------------------------------------------------------------

    def _require_node(self) -> Node:
        if self._node is None:
            raise InvalidRequest("the roles extension is still starting; try again in a moment")
        return self._node

    def _lock_for(self, station: str) -> trio.Lock:
        return self._station_locks.setdefault(station, trio.Lock())

    async def _handle_push(self, sender: str | None, payload: Value) -> Value:
        """``roles.push {"order"}`` (conductor only): an operator's config order."""
        node = self._require_node()
        if node.conductor != node.path:
            conductor = node.conductor
            where = f"the conductor is {conductor}" if conductor else "there is no conductor now"
            raise NotConductor(
                f"{node.path} is not the conductor; {where} (send roles.push there)",
                conductor=conductor,
            )
        authority = self._require_authority()
        if not isinstance(payload, Mapping) or "order" not in payload:
            raise InvalidRequest(
                "roles.push: the payload needs 'order' (a config order for one station, signed "
                "by an operator: stagemesh roles push --operator-key FILE)"
            )
        (order,) = self._orders([payload["order"]], "roles.push", 1)
        if order.kind != "config":
            raise InvalidRequest("roles.push: the order must be a config order")
        try:
            authority.check(order)
        except Unauthorized as exc:
            raise self._refuse("signature", exc) from None
        return await self.push(order)

    async def push(self, order: Order) -> Value:
        """Add an operator's (verified) config *order* to the desired state of its station and
        relay the station's orders there; return ``{"station", "applied", "digest",
        "error_type", "error_family", "error", "pending", ...}``.

        The station checks the new configuration first (``roles.check``); a refusal leaves the
        desired state and the station as they were, and its typed error is in the answer. An
        unreachable station keeps the new desired configuration (``pending``), pushed when it
        is live again.
        """
        node = self._require_node()
        station = order.station
        async with self._lock_for(station):
            try:
                desired = self.desired.with_order(order)
            except ValueError as exc:
                raise InvalidRequest(f"roles.push: {exc}") from None
            chain = desired.chain_for(station)
            config = chain_config(chain)
            answer: dict[str, Any] = {
                "station": station,
                "applied": False,
                "digest": config.digest(),
                "error_type": None,
                "error_family": None,
                "error": None,
                "pending": False,
            }
            if order not in chain:
                error = StaleOrder(
                    f"{order.describe()} is older than the last full push to {station} "
                    f"(issued at {desired.issued_for(station)}); push again"
                )
                answer.update(_error_fields(error.wire_name, error.message))
                self._record_push(station, answer)
                return answer
            unreachable: RequestError | None = None
            try:
                await node.request(
                    station,
                    "roles.check",
                    {"config": _plain(config.to_dict())},
                    timeout=self.push_timeout,
                )
            except RemoteError as exc:
                if exc.error_type == "UnknownRequest":
                    message = f"{station} runs no station roles (start it with --roles FILE)"
                    answer.update(_error_fields("NoStation", message))
                else:
                    answer.update(_error_fields(exc.error_type, exc.message))
                self._record_push(station, answer)
                return answer
            except (NoSuchMember, PeerUnreachable, RequestTimeout) as exc:
                unreachable = exc
            self.desired = desired
            self._changed()
            if unreachable is not None:
                answer.update(
                    _error_fields(
                        type(unreachable).__name__,
                        f"{unreachable}; the desired configuration is kept and pushed when "
                        f"{station} is live",
                    ),
                    pending=True,
                )
                self._record_push(station, answer)
                return answer
            answer.update(await self._apply_on(node, station, chain))
            self._record_push(station, answer)
            return answer

    def _record_push(self, station: str, answer: Mapping[str, Any]) -> None:
        self._last_push[station] = {"time": time.time(), **answer}

    async def _apply_on(
        self, node: Node, station: str, chain: tuple[Order, ...]
    ) -> dict[str, Any]:
        """Relay the orders of *station* there with ``roles.apply`` and record its answer."""
        digest = chain_config(chain).digest()
        lease = node.core.election.lease(CONDUCTOR)
        payload: Value = {
            "orders": [order.to_text() for order in chain],
            "term": lease.term if lease is not None else None,
        }
        try:
            result = await node.request(station, "roles.apply", payload, timeout=self.push_timeout)
        except RemoteError as exc:
            answer = StationAnswer(
                digest=digest,
                applied=False,
                time=node.now(),
                error_type=exc.error_type,
                error_message=exc.message,
            )
            if exc.error_type != NotConductor.wire_name:  # the station's view lags: retry soon
                self._refused[station] = (digest, trio.current_time())
            self.desired = self.desired.record_answer(station, answer)
            self._changed()
            return {"applied": False, **_error_fields(exc.error_type, exc.message)}
        except (RequestError, ValueError) as exc:
            return {"applied": False, **_error_fields(type(exc).__name__, str(exc))}
        self._refused.pop(station, None)
        self.desired = self.desired.record_answer(station, StationAnswer.ok(digest, node.now()))
        self._changed()
        out: dict[str, Any] = {"applied": True, **_error_fields(None, None)}
        if isinstance(result, Mapping):
            for key in ("started", "stopped", "restarted", "unchanged"):
                out[key] = result.get(key, [])
        return out

    async def _handle_desired(self, sender: str | None, payload: Value) -> Value:
        """``roles.desired {"state"?}``: merge the caller's orders (if any, each verified
        here; its answers are not taken), return our view."""
        if isinstance(payload, Mapping) and payload.get("state") is not None:
            self._merge_in(payload["state"], sender, answers=False)
        return _plain(self.desired.to_dict())

    async def _handle_desired_sync(self, sender: str | None, payload: Value) -> Value:
        """``roles.desired.sync {"state"}``: merge a replica pushed by the conductor (its
        orders verified here; its answers only from the conductor)."""
        if not isinstance(payload, Mapping) or "state" not in payload:
            raise InvalidRequest("roles.desired.sync: the payload needs 'state'")
        node = self._node
        from_conductor = node is not None and sender is not None and sender == node.conductor
        self._merge_in(payload["state"], sender, answers=from_conductor)
        return {"digest": _state_digest(self.desired)}

    def _merge_in(self, data: object, sender: str | None, *, answers: bool) -> None:
        authority = self.authority
        if authority is None:
            return
        other = DesiredState.from_dict(data, source=f"desired state from {sender or 'a peer'}")
        verified, dropped = other.filtered(authority.accepts, answers=answers)
        if dropped:
            self.refusals["desired-unsigned"] = self.refusals.get("desired-unsigned", 0) + dropped
            logger.warning(
                "dropped %d order(s) from %s that this node cannot verify (%s)",
                dropped,
                sender or "a peer",
                authority.reason() if authority.mode == "refused" else "bad or no signature",
            )
        merged = self.desired.merge(verified)
        if merged != self.desired:
            self.desired = merged
            self._changed()

    # --- the manager: background -----------------------------------------------------------

    def _changed(self) -> None:
        """The desired state changed: save it, and replicate it while conducting."""
        self._save_needed.set()
        node = self._node
        if self._nursery is not None and node is not None and node.conductor == node.path:
            self._nursery.start_soon(self._replicate, node)

    async def _replicate(self, node: Node) -> None:
        """Send the desired state to every other live conductor candidate (best effort)."""
        state = _plain(self.desired.to_dict())
        async with trio.open_nursery() as nursery:
            for member in node.members():
                if member.is_live and member.meta.get("c") is True and member.path != node.path:
                    nursery.start_soon(self._send_replica, node, member.path, state)

    async def _send_replica(self, node: Node, path: str, state: Value) -> None:
        try:
            await node.request(path, "roles.desired.sync", {"state": state}, timeout=5.0)
        except (RequestError, ValueError) as exc:
            logger.debug("could not replicate the desired state to %s: %s", path, exc)

    async def _manager_loop(self, node: Node) -> None:
        while True:
            await trio.sleep(self.manager_interval)
            if node.conductor == node.path:
                self._reconcile(node)

    def _reconcile(self, node: Node) -> None:
        """Push again to each live station whose configuration is not the desired one."""
        assert self._nursery is not None
        now = trio.current_time()
        for path, chain in self.desired.stations:
            member = node.member(path)
            if member is None or path in self._busy:
                continue
            announced = member.meta.get("d")
            if not isinstance(announced, str):
                continue  # not (yet) running station roles
            digest = chain_config(chain).digest()
            if announced == digest:
                if not self.desired.in_sync(path):
                    observed = StationAnswer.ok(digest, node.now())
                    self.desired = self.desired.record_answer(path, observed)
                    self._changed()
                continue
            answer = self.desired.answer_for(path)
            if (
                answer is not None
                and answer.applied
                and answer.digest == digest
                and node.now() - answer.time < 2 * self.manager_interval
            ):
                continue  # just applied; its announcement is on the way
            refused = self._refused.get(path)
            if (
                refused is not None
                and refused[0] == digest
                and now - refused[1] < self.refused_retry
            ):
                continue
            self._busy.add(path)
            self._nursery.start_soon(self._repush, node, path, chain)

    async def _repush(self, node: Node, path: str, chain: tuple[Order, ...]) -> None:
        try:
            async with self._lock_for(path):
                if self.desired.chain_for(path) != chain:
                    return  # changed meanwhile: the next round pushes the new one
                digest = chain_config(chain).digest()
                logger.info("pushing the desired role configuration %s to %s", digest, path)
                answer = await self._apply_on(node, path, chain)
                if not answer["applied"]:
                    logger.warning(
                        "%s refused its desired role configuration: %s: %s",
                        path,
                        answer["error_type"],
                        answer["error"],
                    )
        finally:
            self._busy.discard(path)

    async def _anti_entropy_loop(self, node: Node) -> None:
        """A standby candidate exchanges its view with the conductor now and then."""
        while True:
            await trio.sleep(self.sync_interval)
            conductor = node.conductor
            if conductor is None or conductor == node.path:
                continue
            try:
                theirs = await node.request(
                    conductor,
                    "roles.desired",
                    {"state": _plain(self.desired.to_dict())},
                    timeout=5.0,
                )
                self._merge_in(theirs, conductor, answers=True)
            except (RequestError, RolesError, ValueError) as exc:
                logger.debug("anti-entropy with %s failed: %s", conductor, exc)

    async def _save_loop(self) -> None:
        while True:
            await self._save_needed.wait()
            self._save_needed = trio.Event()
            path = self._desired_path
            if path is None:
                continue
            doc = {"format": 2, "saved_at": time.time(), "desired": self.desired.to_dict()}
            try:
                await trio.to_thread.run_sync(write_json_atomic, path, doc)
            except OSError as exc:
                logger.error("cannot save the desired role configurations to %s: %s", path, exc)

    @staticmethod
    def _load_desired(path: Path) -> DesiredState:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != 2:
                raise ValueError("not a format 2 desired state (made before operator orders)")
            return DesiredState.from_dict(doc.get("desired", {}), source=str(path))
        except FileNotFoundError:
            return DesiredState()
        except (OSError, ValueError, AttributeError, RecursionError, RolesError) as exc:
            logger.error("ignoring the saved desired role configurations in %s: %s", path, exc)
            return DesiredState()

    # --- views ----------------------------------------------------------------------------

    def identities(self) -> dict[str, dict[str, Any]]:
        """Path -> identity (hostname, MAC, addresses) of every live station this node knows,
        from their member records."""
        node = self._node
        out: dict[str, dict[str, Any]] = {}
        if node is None:
            return out
        for member in node.members():
            ident = member.meta.get("i")
            if member.is_live and isinstance(ident, Mapping):
                out[member.path] = StationIdentity.from_meta(ident).to_dict()
        return out

    def manager_view(self) -> dict[str, Any]:
        """The manager's view for the status API: per station its desired configuration and
        digest, the orders it comes from, whether it is live and announces that digest
        (``in_sync``), its identity, its last answer, and the last push made through this
        node."""
        node = self._node
        stations: dict[str, Any] = {}
        identities = self.identities()
        for path in self.desired.station_paths():
            chain = self.desired.chain_for(path)
            config = chain_config(chain)
            member = node.member(path) if node is not None else None
            announced = member.meta.get("d") if member is not None else None
            answer = self.desired.answer_for(path)
            digest = config.digest()
            stations[path] = {
                "digest": digest,
                "config": config.to_dict(),
                "orders": [
                    {"issued": o.issued, "mode": o.mode, "key_id": o.key_id} for o in chain
                ],
                "live": member is not None,
                "identity": identities.get(path),
                "station_digest": announced if isinstance(announced, str) else None,
                "in_sync": announced == digest,
                "answer": answer.to_dict() if answer is not None else None,
                "last_push": self._last_push.get(path),
            }
        return {
            "active": node is not None and node.conductor == node.path,
            "conductor": node.conductor if node is not None else None,
            "digest": _state_digest(self.desired),
            "stations": stations,
        }


def _error_fields(error_type: str | None, message: str | None) -> dict[str, Any]:
    """``error_type``, ``error_family`` (the seed's name) and ``error`` of an answer."""
    return {
        "error_type": error_type,
        "error_family": error_family(error_type) if error_type else None,
        "error": message,
    }


def _state_digest(state: DesiredState) -> str:
    """A short digest of a desired state's configurations (to compare replicas)."""
    text = json.dumps({p: chain_config(c).digest() for p, c in state.stations}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def push_config(
    node: Node,
    station: str,
    config: RoleConfig,
    *,
    merge: bool = False,
    operator_key: OperatorKey | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 (passed on to node.request)
) -> dict[str, Any]:
    """Push *config* to *station* through the conductor (from any node) and return the answer.

    The order is signed with *operator_key* (needed unless the federation runs unsigned, see
    :class:`~roles.RemoteAuthority`). Raises the station's typed error
    (:class:`~roles.BlockedRole`, ...) when it refused the configuration,
    :class:`~roles.Unauthorized` when the order is not accepted, :class:`~roles.NotConductor`
    when there is no conductor, and the :class:`mesh.RequestError` of an unreachable conductor.
    A station that is not live is not an error here: the answer has ``"pending": True``.
    """
    conductor = node.conductor
    if conductor is None:
        raise NotConductor("there is no conductor now; roles.push needs one")
    order = Order.for_config(node.config.federation, station, config, merge=merge)
    if operator_key is not None:
        order = operator_key.sign(order)
    try:
        answer = await node.request(
            conductor, "roles.push", {"order": order.to_text()}, timeout=timeout
        )
    except RemoteError as exc:
        raise remote_error(exc.error_type, exc.message) from None
    if not isinstance(answer, Mapping):
        raise InvalidRequest(f"{conductor} answered roles.push with {answer!r}")
    if not answer.get("applied") and not answer.get("pending"):
        raise remote_error(str(answer.get("error_type")), str(answer.get("error")))
    return dict(answer)


def roles_extension_factory(args: argparse.Namespace) -> RolesExtension | None:
    """Build the roles extension from ``stagemesh node`` flags: for ``--roles FILE`` (a
    station, with the manager) or ``--conductor`` (the manager only); ``None`` otherwise.
    ``--operator-keys FILE`` (repeatable) and ``--insecure-remote-roles`` set who may change
    the station from other nodes.

    The station file is loaded and checked whole here (with the station's real folders), so a
    bad file stops the node before it starts with a :class:`mesh._cli.UsageError` naming the
    file, the place and the problem.
    """
    from mesh._cli import UsageError

    try:
        keyring = OperatorKeyring.load(getattr(args, "operator_keys", None) or ())
    except OperatorKeyError as exc:
        raise UsageError(f"--operator-keys: {exc}") from None
    insecure = bool(getattr(args, "insecure_remote_roles", False))
    path = getattr(args, "roles", None)
    if path is None:
        if not getattr(args, "conductor", False):
            return None
        return RolesExtension(operator_keys=keyring, insecure_remote_roles=insecure)
    try:
        station_file = load_station_file(path)
    except ConfigFileError as exc:
        raise UsageError(f"--roles: {exc}") from None
    state = station_dir(
        getattr(args, "state_dir", None) or default_state_dir(),
        getattr(args, "federation", None) or "default",
        getattr(args, "orchestra", None) or default_orchestra(),
        getattr(args, "name", None) or default_name(),
    )
    policy = StationPolicy.build(
        state_dir=state,
        factories=default_factories(),
        blocked_roles=station_file.blocked_roles,
        variables=station_file.variables,
        identity=StationIdentity(hostname=socket.gethostname(), mac=None, addresses=()),
        allowed_roots=station_file.allowed_roots,
        env_allow=station_file.env_allow,
    )
    try:
        policy.validate(station_file.roles)
    except InvalidConfiguration as exc:
        raise UsageError(f"--roles {os.fspath(path)}: {type(exc).__name__}: {exc}") from None
    return RolesExtension(station_file, operator_keys=keyring, insecure_remote_roles=insecure)
