"""Roles inside a node: the station (``--roles FILE``) and the manager (the conductor).

:class:`RolesExtension` is a :class:`mesh.Extension`; the composition root (``mesh.__main__``)
builds it with :func:`roles_extension_factory` from the ``stagemesh node`` flags:

* with ``--roles FILE`` the node is a **station**: it opens a :class:`~roles.Station` in
  ``<state-dir>/<federation>/<orchestra>/<name>/roles/`` (so it keeps running its last applied
  configuration when no conductor is reachable), answers the station's request kinds
  (``roles.apply``, ``roles.show``, ``roles.status``, ``roles.start``, ``roles.stop``,
  ``roles.restart``, ``roles.logs``, and ``roles.check``, a dry run of ``roles.apply``), and
  announces in its member record its roles summary (``r``), identity (``i``) and the digest of
  its configuration (``d``), at most every ``meta_interval`` seconds and only when they change;
* every node with the extension (every ``--conductor`` candidate, every station) carries the
  **manager**, which acts only while the node conducts. The conductor accepts ``roles.push``
  (others raise :class:`NotConductor`), keeps the desired configuration of every station in a
  :class:`~roles.DesiredState`, replicates it to every conductor candidate, pushes it to the
  station with ``node.request`` and records the answer. Every ``manager_interval`` seconds it
  pushes again to each live station whose announced digest differs from its desired one (a new
  conductor, a restarted station). Standby candidates exchange their view with the conductor
  every ``sync_interval`` seconds (anti-entropy), and the view is saved in the state directory
  (``desired.json``), so a new or restarted conductor has it.

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

from mesh._extensions import Extension
from mesh._node import NoSuchMember, PeerUnreachable, RemoteError, RequestError, RequestTimeout
from mesh._state import default_state_dir, write_json_atomic
from mesh._wire import Value
from roles._config import RoleConfig, RoleEntry, StationFile, load_station_file
from roles._desired import DesiredState, StationAnswer, check_station_path
from roles._errors import (
    ConfigFileError,
    InvalidConfiguration,
    InvalidRequest,
    RolesError,
    error_from_wire,
)
from roles._factories import FactoryRegistry, default_factories, validate_update
from roles._station import REQUEST_KINDS, Station, open_station
from roles._supervisor import BackoffPolicy

if TYPE_CHECKING:
    from mesh._node import Node

__all__ = [
    "DESIRED_FILE_NAME",
    "MANAGER_KINDS",
    "META_BUDGET",
    "NotConductor",
    "RolesExtension",
    "push_config",
    "remote_error",
    "roles_extension_factory",
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


class NotConductor(RolesError):
    """Raised by ``roles.push`` on a node that is not the conductor; the message names the
    conductor's path (``conductor``, ``None`` when the federation has none)."""

    wire_name = "NotConductor"

    def __init__(self, message: str, *, conductor: str | None = None) -> None:
        super().__init__(message)
        self.conductor = conductor


def remote_error(error_type: str, message: str) -> RolesError:
    """Rebuild a typed roles error from a :class:`mesh.RemoteError`'s type name and message
    (:func:`~roles.error_from_wire`, plus :class:`NotConductor`)."""
    if error_type == NotConductor.wire_name:
        return NotConductor(message)
    return error_from_wire(error_type, message)


def _now_ms() -> int:
    return int(time.time() * 1000)


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


def _replacement(current: RoleConfig, pushed: RoleConfig, now_ms: int) -> RoleConfig:
    """The desired configuration after "push this file" (not ``--merge``): live entries are
    exactly *pushed*'s. Entries that differ from *current* are stamped newer than it (at least
    *now_ms*) so they win every merge; live entries *pushed* lacks get tombstones; entries
    that did not change keep their timestamp (pushing the same file twice changes nothing)."""
    changed: list[tuple[str, str, RoleEntry]] = []
    for role, uuid, entry in pushed:
        mine = current.get(role, uuid)
        if mine is not None and mine.same_options(entry):
            continue
        stamp = max(entry.timestamp, now_ms, mine.timestamp + 1 if mine is not None else 0)
        changed.append(
            (role, uuid, RoleEntry(timestamp=stamp, options=entry.options, deleted=entry.deleted))
        )
    for role, uuid, entry in current:
        if not entry.deleted and (role, uuid) not in pushed:
            changed.append((role, uuid, RoleEntry.tombstone(max(now_ms, entry.timestamp + 1))))
    return current.merge(RoleConfig(tuple(changed)))


Handler = Callable[[str | None, Value], Awaitable[Value]]


class RolesExtension(Extension):
    """The roles of a node: a station (when given a :class:`~roles.StationFile`) and the
    manager (always; it acts only while the node conducts). See the module docstring."""

    name = "roles"

    def __init__(
        self,
        station_file: StationFile | None = None,
        *,
        factories: FactoryRegistry | None = None,
        backoff: BackoffPolicy | None = None,
        state_dir: str | os.PathLike[str] | None = None,
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
        self.meta_interval = meta_interval
        self.manager_interval = manager_interval
        self.sync_interval = sync_interval
        self.refused_retry = refused_retry
        self.push_timeout = push_timeout
        self.station: Station | None = None
        self.desired = DesiredState()
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
        return doc

    def handlers(self) -> Mapping[str, Handler]:
        table: dict[str, Handler] = {
            "roles.push": self._handle_push,
            "roles.desired": self._handle_desired,
            "roles.desired.sync": self._handle_desired_sync,
        }
        if self.station_file is not None:
            for kind in REQUEST_KINDS:
                table[kind] = self._station_handler(kind)
            table["roles.check"] = self._handle_check
        return table

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._node = node
        config = node.config
        base = self.state_dir or (
            (config.state_dir or default_state_dir())
            / config.federation
            / config.orchestra
            / config.name
            / "roles"
        )
        self._desired_path = base / DESIRED_FILE_NAME
        self.desired = await trio.to_thread.run_sync(self._load_desired, self._desired_path)
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

    async def _handle_check(self, sender: str | None, payload: Value) -> Value:
        """``roles.check {"config"}``: would ``roles.apply`` accept it? Changes nothing."""
        station = await self._ready_station()
        if not isinstance(payload, Mapping) or "config" not in payload:
            raise InvalidRequest(
                "roles.check: the payload needs 'config' (role -> uuid -> options)"
            )
        config = RoleConfig.from_dict(payload["config"], source="roles.check payload")
        station.validate(config)
        return {"valid": True, "digest": config.digest()}

    # --- the manager: requests ------------------------------------------------------------

    def _require_node(self) -> Node:
        if self._node is None:
            raise InvalidRequest("the roles extension is still starting; try again in a moment")
        return self._node

    def _lock_for(self, station: str) -> trio.Lock:
        return self._station_locks.setdefault(station, trio.Lock())

    async def _handle_push(self, sender: str | None, payload: Value) -> Value:
        """``roles.push {station, config, merge?}`` (conductor only); see :meth:`push`."""
        node = self._require_node()
        if node.conductor != node.path:
            conductor = node.conductor
            where = f"the conductor is {conductor}" if conductor else "there is no conductor now"
            raise NotConductor(
                f"{node.path} is not the conductor; {where} (send roles.push there)",
                conductor=conductor,
            )
        if not isinstance(payload, Mapping):
            raise InvalidRequest("roles.push: the payload must be an object (a map)")
        station = payload.get("station")
        try:
            check_station_path(station)
        except ValueError as exc:
            raise InvalidRequest(f"roles.push: 'station': {exc}") from None
        assert isinstance(station, str)
        if "config" not in payload:
            raise InvalidRequest("roles.push: the payload needs 'config' (role -> uuid -> options)")
        merge = payload.get("merge", False)
        if not isinstance(merge, bool):
            raise InvalidRequest("roles.push: 'merge' must be true or false")
        config = RoleConfig.from_dict(
            payload["config"], source="roles.push payload", default_timestamp=_now_ms()
        )
        return await self.push(station, config, merge=merge)

    async def push(self, station: str, config: RoleConfig, *, merge: bool = False) -> Value:
        """Make *config* (merged in, with *merge*) the desired configuration of *station* and
        push it there; return ``{"station", "applied", "digest", "error_type", "error"}``.

        The station checks the new configuration first (``roles.check``); a refusal leaves the
        desired state and the station as they were, and its typed error is in the answer. An
        unreachable station keeps the new desired configuration (``pending``), pushed when it
        is live again.
        """
        node = self._require_node()
        async with self._lock_for(station):
            current = self.desired.config_for(station)
            new = current.merge(config) if merge else _replacement(current, config, _now_ms())
            digest = new.digest()
            answer: dict[str, Any] = {
                "station": station,
                "applied": False,
                "digest": digest,
                "error_type": None,
                "error": None,
                "pending": False,
            }
            unreachable: RequestError | None = None
            try:
                await node.request(
                    station,
                    "roles.check",
                    {"config": _plain(new.to_dict())},
                    timeout=self.push_timeout,
                )
            except RemoteError as exc:
                if exc.error_type == "UnknownRequest":
                    message = f"{station} runs no station roles (start it with --roles FILE)"
                    answer.update(error_type="NoStation", error=message)
                else:
                    answer.update(error_type=exc.error_type, error=exc.message)
                self._record_push(station, answer)
                return answer
            except (NoSuchMember, PeerUnreachable, RequestTimeout) as exc:
                unreachable = exc
            self.desired = self.desired.merge_config(station, new)
            self._changed()
            if unreachable is not None:
                answer.update(
                    error_type=type(unreachable).__name__,
                    error=f"{unreachable}; the desired configuration is kept and pushed when "
                    f"{station} is live",
                    pending=True,
                )
                self._record_push(station, answer)
                return answer
            answer.update(await self._apply_on(node, station, new))
            self._record_push(station, answer)
            return answer

    def _record_push(self, station: str, answer: Mapping[str, Any]) -> None:
        self._last_push[station] = {"time": time.time(), **answer}

    async def _apply_on(self, node: Node, station: str, config: RoleConfig) -> dict[str, Any]:
        """Send ``roles.apply`` with *config* to *station* and record its answer."""
        digest = config.digest()
        try:
            result = await node.request(
                station,
                "roles.apply",
                {"config": _plain(config.to_dict())},
                timeout=self.push_timeout,
            )
        except RemoteError as exc:
            answer = StationAnswer(
                digest=digest,
                applied=False,
                time=node.now(),
                error_type=exc.error_type,
                error_message=exc.message,
            )
            self._refused[station] = (digest, trio.current_time())
            self.desired = self.desired.record_answer(station, answer)
            self._changed()
            return {"applied": False, "error_type": exc.error_type, "error": exc.message}
        except RequestError as exc:
            return {"applied": False, "error_type": type(exc).__name__, "error": str(exc)}
        self._refused.pop(station, None)
        self.desired = self.desired.record_answer(station, StationAnswer.ok(digest, node.now()))
        self._changed()
        out: dict[str, Any] = {"applied": True, "error_type": None, "error": None}
        if isinstance(result, Mapping):
            for key in ("started", "stopped", "restarted", "unchanged"):
                out[key] = result.get(key, [])
        return out

    async def _handle_desired(self, sender: str | None, payload: Value) -> Value:
        """``roles.desired {"state"?}``: merge the caller's view (if any), return ours."""
        if isinstance(payload, Mapping) and payload.get("state") is not None:
            self._merge_in(payload["state"], sender)
        return _plain(self.desired.to_dict())

    async def _handle_desired_sync(self, sender: str | None, payload: Value) -> Value:
        """``roles.desired.sync {"state"}``: merge a replica pushed by the conductor."""
        if not isinstance(payload, Mapping) or "state" not in payload:
            raise InvalidRequest("roles.desired.sync: the payload needs 'state'")
        self._merge_in(payload["state"], sender)
        return {"digest": _state_digest(self.desired)}

    def _merge_in(self, data: object, sender: str | None) -> None:
        other = DesiredState.from_dict(data, source=f"desired state from {sender or 'a peer'}")
        merged = self.desired.merge(other)
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
        except RequestError as exc:
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
        for path, config in self.desired.stations:
            member = node.member(path)
            if member is None or path in self._busy:
                continue
            announced = member.meta.get("d")
            if not isinstance(announced, str):
                continue  # not (yet) running station roles
            digest = config.digest()
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
            self._nursery.start_soon(self._repush, node, path, config)

    async def _repush(self, node: Node, path: str, config: RoleConfig) -> None:
        try:
            async with self._lock_for(path):
                if self.desired.config_for(path) != config:
                    return  # changed meanwhile: the next round pushes the new one
                logger.info(
                    "pushing the desired role configuration %s to %s", config.digest(), path
                )
                answer = await self._apply_on(node, path, config)
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
                self._merge_in(theirs, conductor)
            except (RequestError, RolesError) as exc:
                logger.debug("anti-entropy with %s failed: %s", conductor, exc)

    async def _save_loop(self) -> None:
        while True:
            await self._save_needed.wait()
            self._save_needed = trio.Event()
            path = self._desired_path
            if path is None:
                continue
            doc = {"format": 1, "saved_at": time.time(), "desired": self.desired.to_dict()}
            try:
                await trio.to_thread.run_sync(write_json_atomic, path, doc)
            except OSError as exc:
                logger.error("cannot save the desired role configurations to %s: %s", path, exc)

    @staticmethod
    def _load_desired(path: Path) -> DesiredState:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return DesiredState.from_dict(doc.get("desired", {}), source=str(path))
        except FileNotFoundError:
            return DesiredState()
        except (OSError, ValueError, AttributeError, RolesError) as exc:
            logger.error("ignoring the saved desired role configurations in %s: %s", path, exc)
            return DesiredState()

    # --- views ----------------------------------------------------------------------------

    def manager_view(self) -> dict[str, Any]:
        """The manager's view for the status API: per station its desired configuration and
        digest, whether it is live and announces that digest (``in_sync``), its last answer,
        and the last push made through this node."""
        node = self._node
        stations: dict[str, Any] = {}
        for path in self.desired.station_paths():
            config = self.desired.config_for(path)
            member = node.member(path) if node is not None else None
            announced = member.meta.get("d") if member is not None else None
            answer = self.desired.answer_for(path)
            digest = config.digest()
            stations[path] = {
                "digest": digest,
                "config": config.to_dict(),
                "live": member is not None,
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


def _state_digest(state: DesiredState) -> str:
    """A short digest of a desired state's configurations (to compare replicas)."""
    text = json.dumps({p: c.digest() for p, c in state.stations}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def push_config(
    node: Node,
    station: str,
    config: RoleConfig,
    *,
    merge: bool = False,
    timeout: float = 30.0,  # noqa: ASYNC109 (passed on to node.request)
) -> dict[str, Any]:
    """Push *config* to *station* through the conductor (from any node) and return the answer.

    Raises the station's typed error (:class:`~roles.BlockedRole`, ...) when it refused the
    configuration, :class:`NotConductor` when there is no conductor, and the
    :class:`mesh.RequestError` of an unreachable conductor. A station that is not live is not
    an error here: the answer has ``"pending": True``.
    """
    conductor = node.conductor
    if conductor is None:
        raise NotConductor("there is no conductor now; roles.push needs one")
    try:
        answer = await node.request(
            conductor,
            "roles.push",
            {"station": station, "config": _plain(config.to_dict()), "merge": merge},
            timeout=timeout,
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

    The station file is loaded and checked whole here, so a bad file stops the node before it
    starts with a :class:`mesh._cli.UsageError` naming the file, the place and the problem.
    """
    from mesh._cli import UsageError

    path = getattr(args, "roles", None)
    if path is None:
        return RolesExtension() if getattr(args, "conductor", False) else None
    try:
        station_file = load_station_file(path)
    except ConfigFileError as exc:
        raise UsageError(f"--roles: {exc}") from None
    try:
        validate_update(
            station_file.roles,
            default_factories(),
            blocked_roles=station_file.blocked_roles,
            variables={"hostname": socket.gethostname(), **station_file.variables},
        )
    except InvalidConfiguration as exc:
        raise UsageError(f"--roles {os.fspath(path)}: {type(exc).__name__}: {exc}") from None
    return RolesExtension(station_file)
