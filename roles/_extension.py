"""Roles inside a node: the station (``--roles FILE``) and the manager (the conductor).

:class:`RolesExtension` is a :class:`mesh.Extension`; :func:`roles_extension_factory` builds it
from a :class:`~roles._plugin.RolesConfig` (which ``stagemesh node`` makes of its flags, in
``roles/_plugin.py``) and the node's config:

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
  **manager**, which acts only while the node conducts. Its decisions are those of the sans-IO
  :class:`~roles._manager.ManagerCore` (accept an operator's push, check it on the station,
  keep it in the :class:`~roles.DesiredState`, relay it, record the answer, push again to
  stations out of sync, replicate, exchange with the conductor); this module only carries its
  requests with ``node.request``, feeds the outcomes back, runs its timer and saves the
  desired state in the state directory (``desired.json``), so a new or restarted conductor
  has it.

A candidate without ``--roles`` runs the manager only (no station, no ``r``/``i``/``d`` meta).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
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
)
from mesh._state import default_state_dir, write_json_atomic
from mesh._wire import Value
from roles._authority import (
    ChangeRefused,
    RemoteAuthority,
    check_relay,
    check_relayed_orders,
)
from roles._config import RoleConfig, StationFile, load_station_file, read_json_file
from roles._desired import DesiredState
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
from roles._manager import (
    ApplyOrders,
    CheckConfig,
    Done,
    Exchange,
    Failed,
    ManagerCore,
    Member,
    MeshView,
    Outcome,
    Persist,
    PushAnswered,
    Refused,
    Replicate,
    Unreachable,
    state_digest,
)
from roles._operator import (
    MAX_CHAIN,
    OperatorKey,
    OperatorKeyError,
    OperatorKeyring,
    Order,
)
from roles._station import REQUEST_KINDS, Station, StationPolicy, open_station
from roles._supervisor import BackoffPolicy

if TYPE_CHECKING:
    from mesh._node import Node, NodeConfig
    from roles._plugin import RolesConfig

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
        self.manager: ManagerCore | None = None
        self.authority: RemoteAuthority | None = None
        self.refusals: dict[str, int] = {}
        self._node: Node | None = None
        self._nursery: trio.Nursery | None = None
        self._station_ready = trio.Event()
        self._poke = trio.Event()
        self._save_needed = trio.Event()
        self._saves_wanted = 0  # Persist outputs taken so far
        self._saves_done = 0  # how many of those the last finished save covers
        self._save_finished = trio.Event()
        self._answered: dict[int, trio.Event] = {}
        self._answers: dict[int, PushAnswered] = {}
        self._last_push: dict[str, dict[str, Any]] = {}
        self._desired_path: Path | None = None

    @property
    def desired(self) -> DesiredState:
        """The manager's desired state (see :class:`~roles.DesiredState`)."""
        return self.manager.desired if self.manager is not None else DesiredState()

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
        desired, dropped = loaded.filtered(self.authority.accepts)
        self.manager = ManagerCore(
            self.authority,
            path=node.path,
            now=node.now(),
            desired=desired,
            candidate=config.conductor,
            manager_interval=self.manager_interval,
            sync_interval=self.sync_interval,
            refused_retry=self.refused_retry,
        )
        self.manager.update_view(self._view(node))
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
        try:
            check_relay(
                authority,
                station=node.path,
                sender=sender,
                term=payload.get("term"),
                conductor=node.conductor,
                known_term=_term(node),
            )
            orders = self._orders(payload["orders"], "roles.apply")
            check_relayed_orders(authority, station=node.path, orders=orders)
        except ChangeRefused as refused:
            raise self._refuse(refused.reason, refused.error) from None
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

    def _require_manager(self) -> tuple[Node, ManagerCore]:
        node = self._require_node()
        if self.manager is None:
            raise InvalidRequest("the roles extension is still starting; try again in a moment")
        self.manager.update_view(self._view(node))
        return node, self.manager

    async def _handle_push(self, sender: str | None, payload: Value) -> Value:
        """``roles.push {"order"}`` (conductor only): an operator's config order."""
        _, manager = self._require_manager()
        try:
            manager.check_push()
        except ChangeRefused as refused:
            raise self._refuse(refused.reason, refused.error) from None
        if not isinstance(payload, Mapping) or "order" not in payload:
            raise InvalidRequest(
                "roles.push: the payload needs 'order' (a config order for one station, signed "
                "by an operator: stagemesh roles push --operator-key FILE)"
            )
        (order,) = self._orders([payload["order"]], "roles.push", 1)
        return await self.push(order)

    async def push(self, order: Order) -> Value:
        """Hand an operator's config *order* to the manager (this node must conduct) and
        return its answer: ``{"station", "applied", "digest", "error_type", "error_family",
        "error", "pending", ...}`` (``forgotten`` for a ``forget`` order).

        The station checks the new configuration first (``roles.check``); a refusal leaves the
        desired state and the station as they were, and its typed error is in the answer. An
        unreachable station keeps the new desired configuration (``pending``), pushed when it
        is live again.
        """
        node, manager = self._require_manager()
        try:
            push = manager.push(node.now(), order)
        except ChangeRefused as refused:
            raise self._refuse(refused.reason, refused.error) from None
        answered = self._answered[push] = trio.Event()
        try:
            self._pump(node)
            await answered.wait()
            result = self._answers[push]
        finally:  # also when the caller gives up: the manager finishes the push anyway
            del self._answered[push]
            self._answers.pop(push, None)
        await self._saved(self._saves_wanted)  # acknowledged only once it survives a crash
        if result.error is not None:
            raise result.error
        return _plain(result.answer)

    async def _saved(self, wanted: int) -> None:
        """Return once a save that covers the first *wanted* changes of the desired state has
        finished (at once when this node keeps no state directory)."""
        while self._desired_path is not None and self._saves_done < wanted:
            await self._save_finished.wait()

    def _view(self, node: Node) -> MeshView:
        """The manager's view of the mesh, from the node's members and the conductor lease."""
        members = {}
        for member in node.members():
            if member.is_live:
                digest = member.meta.get("d")
                members[member.path] = Member(
                    digest=digest if isinstance(digest, str) else None,
                    candidate=member.meta.get("c") is True,
                )
        return MeshView(node.path, node.conductor, _term(node), members)

    def _pump(self, node: Node) -> None:
        """Carry out what the manager asks for."""
        manager, nursery = self.manager, self._nursery
        assert manager is not None and nursery is not None
        for output in manager.take_outputs():
            if isinstance(output, PushAnswered):
                if output.answer is not None:  # shown with its wall-clock time
                    station = str(output.answer.get("station"))
                    self._last_push[station] = {"time": time.time(), **output.answer}
                answered = self._answered.get(output.push)
                if answered is not None:
                    self._answers[output.push] = output
                    answered.set()
            elif isinstance(output, Persist):
                self._saves_wanted += 1
                self._save_needed.set()
            elif isinstance(output, CheckConfig):
                payload: Value = {"config": _plain(output.config.to_dict())}
                nursery.start_soon(self._carry, node, output.op, output.station, payload)
            elif isinstance(output, ApplyOrders):
                if output.reason == "reconcile":
                    logger.info(
                        "pushing the desired role configuration %s to %s",
                        output.digest,
                        output.station,
                    )
                payload = {"orders": [o.to_text() for o in output.orders], "term": output.term}
                nursery.start_soon(self._carry, node, output.op, output.station, payload)
            elif isinstance(output, Replicate):
                state = _plain(output.state.to_dict())
                for target in output.targets:
                    nursery.start_soon(self._send_replica, node, target, state)
            elif isinstance(output, Exchange):
                nursery.start_soon(self._exchange, node, output)

    async def _carry(self, node: Node, op: int, station: str, payload: Value) -> None:
        """Send one ``roles.check`` (a payload with ``config``) or ``roles.apply`` to
        *station* and hand the outcome back to the manager."""
        check = isinstance(payload, Mapping) and "config" in payload
        kind = "roles.check" if check else "roles.apply"
        outcome = await self._outcome(
            node.request(station, kind, payload, timeout=self.push_timeout)
        )
        manager = self.manager
        assert manager is not None
        manager.update_view(self._view(node))
        if check:
            manager.check_done(node.now(), op, outcome)
        else:
            if isinstance(outcome, Refused):
                logger.warning(
                    "%s refused its desired role configuration: %s: %s",
                    station,
                    outcome.error_type,
                    outcome.message,
                )
            manager.apply_done(node.now(), op, outcome)
        self._pump(node)

    @staticmethod
    async def _outcome(request: Coroutine[Any, Any, Value]) -> Outcome:
        """What became of a request to a station, as the manager takes it."""
        try:
            result = await request
        except RemoteError as exc:
            return Refused(exc.error_type, exc.message)
        except (NoSuchMember, PeerUnreachable, RequestTimeout) as exc:
            return Unreachable(type(exc).__name__, str(exc))
        except (RequestError, ValueError) as exc:
            return Failed(type(exc).__name__, str(exc))
        return Done(result if isinstance(result, Mapping) else {})

    async def _send_replica(self, node: Node, path: str, state: Value) -> None:
        try:
            await node.request(path, "roles.desired.sync", {"state": state}, timeout=5.0)
        except (RequestError, ValueError) as exc:
            logger.debug("could not replicate the desired state to %s: %s", path, exc)

    async def _exchange(self, node: Node, output: Exchange) -> None:
        """Anti-entropy: send our view to the conductor, merge its reply."""
        try:
            theirs = await node.request(
                output.target,
                "roles.desired",
                {"state": _plain(output.state.to_dict())},
                timeout=5.0,
            )
            self._merge_in(theirs, output.target, answers=True)
        except (RequestError, RolesError, ValueError) as exc:
            logger.debug("anti-entropy with %s failed: %s", output.target, exc)

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
        self._merge_in(payload["state"], sender, answers=None)
        return {"digest": state_digest(self.desired)}

    def _merge_in(self, data: object, sender: str | None, *, answers: bool | None) -> None:
        """Merge another node's view (``answers=None``: a replica, whose answers count only
        from the conductor)."""
        authority = self.authority
        if authority is None or self.manager is None or self._node is None:
            return
        node, manager = self._require_manager()
        other = DesiredState.from_dict(data, source=f"desired state from {sender or 'a peer'}")
        if answers is None:
            dropped = manager.replica(node.now(), other, sender)
        else:
            dropped = manager.merge_in(node.now(), other, answers=answers)
        if dropped:
            self.refusals["desired-unsigned"] = self.refusals.get("desired-unsigned", 0) + dropped
            logger.warning(
                "dropped %d order(s) from %s that this node cannot verify (%s)",
                dropped,
                sender or "a peer",
                authority.reason() if authority.mode == "refused" else "bad or no signature",
            )
        self._pump(node)

    # --- the manager: background -----------------------------------------------------------

    async def _manager_loop(self, node: Node) -> None:
        """Run the manager's timer (its deadlines are in federation time)."""
        manager = self.manager
        assert manager is not None
        while True:
            await trio.sleep(max(manager.next_deadline() - node.now(), 0.0))
            manager.update_view(self._view(node))
            manager.handle_timer(node.now())
            self._pump(node)

    async def _save_loop(self) -> None:
        while True:
            await self._save_needed.wait()
            self._save_needed = trio.Event()
            path = self._desired_path
            if path is None:
                continue
            covers = self._saves_wanted
            doc = {"format": 2, "saved_at": time.time(), "desired": self.desired.to_dict()}
            try:
                await trio.to_thread.run_sync(write_json_atomic, path, doc)
            except OSError as exc:
                logger.error("cannot save the desired role configurations to %s: %s", path, exc)
            self._saves_done = covers
            self._save_finished.set()
            self._save_finished = trio.Event()

    @staticmethod
    def _load_desired(path: Path) -> DesiredState:
        try:
            doc = read_json_file(path, "the saved desired state")
            if not isinstance(doc, dict) or doc.get("format") != 2:
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
        digest, the orders it comes from, whether it is live and runs that configuration
        (``in_sync``), its identity, its last answer, and the last push made through this
        node (see :meth:`ManagerCore.stations <roles._manager.ManagerCore.stations>`)."""
        node, manager = self._node, self.manager
        stations: dict[str, Any] = {}
        if node is not None and manager is not None:
            manager.update_view(self._view(node))
            identities = self.identities()
            for path, view in manager.stations().items():
                stations[path] = {
                    **view,
                    "identity": identities.get(path),
                    "last_push": self._last_push.get(path),
                }
        return {
            "active": node is not None and node.conductor == node.path,
            "conductor": node.conductor if node is not None else None,
            "digest": state_digest(self.desired),
            "stations": stations,
        }


def _term(node: Node) -> int | None:
    """The term of the conductor lease in *node*'s view (``None`` without a conductor)."""
    lease = node.core.election.lease(CONDUCTOR)
    return lease.term if lease is not None else None


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


def roles_extension_factory(config: RolesConfig, node: NodeConfig) -> RolesExtension | None:
    """The roles extension of a node: for a station file (a station, with the manager) or a
    conductor candidate (the manager only); ``None`` otherwise. The operator keys and
    ``insecure_remote_roles`` set who may change the station from other nodes; the station's
    folder is in the node's state folder, under its path.

    The operator keys and the station file are loaded and checked whole here (with the
    station's real folders), so a bad file stops the node before it starts with a
    :class:`mesh._cli.UsageError` naming the flag, the file, the place and the problem.
    """
    from mesh._cli import UsageError

    try:
        keyring = OperatorKeyring.load(config.operator_keys)
    except OperatorKeyError as exc:
        raise UsageError(f"--operator-keys: {exc}") from None
    insecure = config.insecure_remote_roles
    path = config.station_file
    if path is None:
        if not node.conductor:
            return None
        return RolesExtension(operator_keys=keyring, insecure_remote_roles=insecure)
    try:
        station_file = load_station_file(path)
    except ConfigFileError as exc:
        raise UsageError(f"--roles: {exc}") from None
    state = station_dir(
        node.state_dir or default_state_dir(), node.federation, node.orchestra, node.name
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
