"""A station: the role configuration it runs, its factories and policy, and its supervisor.

:func:`open_station` loads the last applied configuration from the state directory (so a
station keeps running it when no conductor is reachable), starts its processes, and yields a
:class:`Station`. Every change is validated whole first by the one validator
(:meth:`Station.validate`, also the dry run ``roles.check``), raising the typed
:class:`~roles.InvalidConfiguration` and changing nothing; then it is persisted (temp file,
fsync, ``os.replace``) and the processes reconciled: new instances start, removed ones stop,
changed ones restart.

A station's configuration is always "as of" a time (milliseconds since the epoch) and comes
from one source:

* ``file``: the station file (``--roles FILE``), as of its newest entry's timestamp;
* ``local``: the station's own operator (:meth:`Station.apply`, through the node's local API),
  as of the moment it was applied;
* ``conductor``: a chain of operator orders relayed by the conductor
  (:meth:`Station.apply_orders`), as of the newest order's ``issued`` time.

The newest wins: orders older than the configuration the station runs are refused
(:class:`~roles.StaleOrder`, which is also what makes a replayed order useless), and at start
the station file's entries count only if they are newer than the saved configuration (so a
role removed by a push does not come back from an older file). A saved configuration that can
no longer be applied is set aside (renamed ``roles.json.refused-<time>``): the station starts
with no roles running and says why in its log and status.

Hooks for the node (the node imports nothing of this module's internals):

* :meth:`Station.roles_summary`: a small dict for gossip metadata;
* :meth:`Station.status`: a JSON-able dict for the status API;
* :meth:`Station.handle_request`: ``(kind, payload) -> dict`` for the station's own operator
  (the node's local API): ``roles.apply``, ``roles.check``, ``roles.show``, ``roles.status``,
  ``roles.start``, ``roles.stop``, ``roles.restart``, ``roles.logs``. Errors are
  :class:`~roles.RolesError` subclasses; send ``error.to_wire()`` back and rebuild with
  :func:`~roles.error_from_dict`. Requests from other nodes go through the roles extension,
  which checks who sent them before calling :meth:`Station.apply_orders` or
  :meth:`Station.control`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from mesh._state import write_atomic
from roles._config import RoleConfig, read_json_file
from roles._errors import (
    ConfigFileError,
    InvalidConfiguration,
    InvalidRequest,
    RolesError,
    StaleOrder,
)
from roles._factories import FactoryRegistry, ProcessSpec, default_factories, validate_update
from roles._history import Source, StationState
from roles._identity import StationIdentity, read_identity
from roles._operator import ORDER_FRESHNESS, Order, now_ms
from roles._supervisor import (
    BackoffPolicy,
    ProcessStatus,
    Supervisor,
    SupervisorEvent,
    SupervisorSnapshot,
    open_supervisor,
)

__all__ = [
    "DATA_DIR_NAME",
    "REQUEST_KINDS",
    "STATE_FILE_NAME",
    "ApplyResult",
    "Station",
    "StationPolicy",
    "open_station",
]

logger = logging.getLogger(__name__)

#: The file in the state directory that holds the last applied configuration.
STATE_FILE_NAME = "roles.json"
#: The folder in the state directory where relative path options go (``$data_dir``).
DATA_DIR_NAME = "data"
_STATE_FORMAT = 2
#: Request kinds :meth:`Station.handle_request` answers.
REQUEST_KINDS = (
    "roles.apply",
    "roles.check",
    "roles.show",
    "roles.status",
    "roles.start",
    "roles.stop",
    "roles.restart",
    "roles.logs",
)
InstanceKey = tuple[str, str]


@attrs.frozen
class ApplyResult:
    """What :meth:`Station.apply` did: the applied configuration's ``digest`` and the
    instances ``started``, ``stopped`` (removed), ``restarted`` (changed) and ``unchanged``."""

    digest: str
    started: tuple[InstanceKey, ...]
    stopped: tuple[InstanceKey, ...]
    restarted: tuple[InstanceKey, ...]
    unchanged: tuple[InstanceKey, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able answer of ``roles.apply``."""

        def names(keys: tuple[InstanceKey, ...]) -> list[str]:
            return [f"{role}/{uuid}" for role, uuid in keys]

        return {
            "applied": True,
            "digest": self.digest,
            "started": names(self.started),
            "stopped": names(self.stopped),
            "restarted": names(self.restarted),
            "unchanged": names(self.unchanged),
        }


@attrs.frozen
class _Saved:
    """What the state file holds (see :meth:`Station._persist`)."""

    state: StationState
    held: frozenset[InstanceKey]
    control_issued: int


def _read_state(path: str) -> _Saved | None:
    """Return what was saved, ``None`` if there is no file; raises :class:`ConfigFileError` if
    it is unreadable or malformed."""
    try:
        data = read_json_file(path, "the saved state")
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or data.get("format") not in (1, _STATE_FORMAT):
        raise ConfigFileError.at(path, "$.format", f"not a format {_STATE_FORMAT} state file")
    held_raw = data.get("held", [])
    held: set[InstanceKey] = set()
    if isinstance(held_raw, list):
        for item in held_raw:
            if (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(part, str) for part in item)
            ):
                held.add((item[0], item[1]))
    if data["format"] == 1:  # saved before operator orders: a local configuration
        config = RoleConfig.from_dict(data.get("config", {}), source=path)
        as_of = max((entry.timestamp for _, _, entry in config), default=0)
        return _Saved(StationState(config, as_of, "local", (), as_of), frozenset(held), 0)
    control = data.get("control_issued", 0)
    return _Saved(
        StationState.from_dict(data, source=path),
        frozenset(held),
        control if isinstance(control, int) and not isinstance(control, bool) else 0,
    )


def _set_aside(path: str) -> str | None:
    """Rename the state file out of the way (kept for a person to read); return the new name."""
    target = f"{path}.refused-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        os.replace(path, target)
    except OSError:
        return None
    return target


@attrs.frozen
class StationPolicy:
    """What a station lets its roles do, and the one validator that enforces it: its
    ``factories``, ``blocked_roles``, template ``variables`` (``hostname``, ``data_dir`` and
    the station file's), the folders path options must stay under (``roots``: the data folder
    first, then the station file's ``allowed_roots``) and the extra environment variables
    roles may set (``env_allow``)."""

    factories: FactoryRegistry = attrs.field(eq=False)
    blocked_roles: frozenset[str]
    variables: Mapping[str, str]
    roots: tuple[str, ...]
    env_allow: frozenset[str]

    @classmethod
    def build(
        cls,
        *,
        state_dir: str | os.PathLike[str],
        factories: FactoryRegistry,
        blocked_roles: Iterable[str],
        variables: Mapping[str, str],
        identity: StationIdentity,
        data_dir: str | os.PathLike[str] | None = None,
        allowed_roots: Sequence[str] = (),
        env_allow: Iterable[str] = (),
    ) -> StationPolicy:
        """The policy of a station in *state_dir* (see :func:`open_station`)."""
        data = os.path.abspath(
            os.fspath(data_dir) if data_dir is not None else os.path.join(state_dir, DATA_DIR_NAME)
        )
        return cls(
            factories=factories,
            blocked_roles=frozenset(blocked_roles),
            variables={"hostname": identity.hostname, "data_dir": data, **variables},
            roots=(data, *allowed_roots),
            env_allow=frozenset(env_allow),
        )

    @property
    def data_dir(self) -> str:
        """Where relative path options go (``$data_dir``)."""
        return self.roots[0]

    def validate(self, config: RoleConfig) -> dict[InstanceKey, ProcessSpec]:
        """Check *config* exactly as every apply does; return the process specs that would
        run. Raises the typed :class:`~roles.InvalidConfiguration`."""
        return validate_update(
            config,
            self.factories,
            blocked_roles=self.blocked_roles,
            variables=self.variables,
            roots=self.roots,
            env_allow=self.env_allow,
        )


class Station:
    """A running station; made by :func:`open_station`. See the module docstring."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        state_dir: str | os.PathLike[str],
        policy: StationPolicy,
        identity: StationIdentity,
    ) -> None:
        self.supervisor = supervisor
        self.state_path = os.path.join(os.fspath(state_dir), STATE_FILE_NAME)
        self.policy = policy
        self.data_dir = policy.data_dir
        self.roots = policy.roots
        self.env_allow = policy.env_allow
        self.factories = policy.factories
        self.blocked_roles = policy.blocked_roles
        self.variables = policy.variables
        self.identity = identity
        self._state = StationState()
        self._control_issued = 0
        self._specs: dict[InstanceKey, ProcessSpec] = {}
        self._held: set[InstanceKey] = set()
        self._lock = trio.Lock()
        self.load_error: str | None = None
        self.persist_error: str | None = None
        self.last_apply: dict[str, Any] | None = None

    # --- configuration ----------------------------------------------------------------------

    @property
    def config(self) -> RoleConfig:
        """The configuration last applied (tombstones included)."""
        return self._state.config

    @property
    def state(self) -> StationState:
        """The running configuration with its time, source and orders."""
        return self._state

    @property
    def as_of(self) -> int:
        """When (ms since the epoch) the running configuration was set, by its source."""
        return self._state.as_of

    @property
    def source(self) -> Source:
        """Where the running configuration came from: ``none``, ``file``, ``local`` or
        ``conductor``."""
        return self._state.source

    @property
    def orders(self) -> tuple[Order, ...]:
        """The operator orders the running configuration was made from (``conductor`` only)."""
        return self._state.orders

    def validate(self, config: RoleConfig) -> dict[InstanceKey, ProcessSpec]:
        """Check *config* exactly as every apply does, changing nothing; return the process
        specs that would run (the one validator: ``roles.check`` is this).

        Raises :class:`~roles.BlockedRole`, :class:`~roles.MissingRoleFactory`,
        :class:`~roles.TooManyInstances` or :class:`~roles.InvalidOptions`.
        """
        return self.policy.validate(config)

    async def apply(self, config: RoleConfig, *, merge: bool = False) -> ApplyResult:
        """Make *config* this station's configuration (or merge it in, with *merge*): a change
        by the station's own operator, newer than every order issued before now.

        The whole update is validated first: on a problem the typed
        :class:`~roles.InvalidConfiguration` is raised and nothing changes (configuration,
        processes, state file). Then it is persisted and the processes reconciled.
        """
        async with self._lock:
            new = self._state.with_local(config, now_ms(), merge=merge)
            return await self._apply_valid(new, self.validate(new.config))

    async def apply_orders(self, orders: Sequence[Order]) -> ApplyResult:
        """Run what a chain of (already verified) config orders says (see
        :meth:`StationState.with_orders <roles._history.StationState.with_orders>`).

        Refuses with :class:`~roles.StaleOrder` a chain that says nothing newer than the
        running configuration (a replay, a stale replica, or a newer local change). Then
        validates and applies as :meth:`apply` does.
        """
        async with self._lock:
            new = self._state.with_orders(orders)
            return await self._apply_valid(new, self.validate(new.config))

    async def control(self, order: Order, *, now: int | None = None) -> list[ProcessStatus]:
        """Carry out a (verified) control order: start, stop or restart instances.

        Refuses with :class:`~roles.StaleOrder` an order not newer than the last one carried
        out, or issued more than :data:`~roles._operator.ORDER_FRESHNESS` ms away from this
        station's clock (a replay).
        """
        now = now_ms() if now is None else now
        if order.kind != "control" or order.action not in ("start", "stop", "restart"):
            raise InvalidRequest("expected a control order (start, stop or restart)")
        if abs(order.issued - now) > ORDER_FRESHNESS:
            raise StaleOrder(
                f"{order.describe()} is {abs(order.issued - now) / 1000:.0f} s away from this "
                f"station's clock (at most {ORDER_FRESHNESS // 1000} s): an old order replayed, "
                "or clocks far apart (keep the operator's and the stations' clocks in sync)"
            )
        if order.issued <= self._control_issued:
            raise StaleOrder(
                f"{order.describe()} is not newer than the last control order this station "
                f"carried out (issued at {self._control_issued}): a replay"
            )
        self._control_issued = order.issued
        method = {"start": self.start, "stop": self.stop, "restart": self.restart}[order.action]
        return await method(order.role, order.uuid)

    async def _apply_valid(
        self, state: StationState, specs: dict[InstanceKey, ProcessSpec]
    ) -> ApplyResult:
        new = state.config
        old = self._specs
        started = tuple(sorted(k for k in specs if k not in old))
        stopped = tuple(sorted(k for k in old if k not in specs))
        restarted = tuple(sorted(k for k in specs if k in old and old[k] != specs[k]))
        unchanged = tuple(sorted(k for k in specs if k in old and old[k] == specs[k]))
        self._held &= set(specs)
        self._state = state
        self._specs = specs
        await self._persist()
        began = time.time()
        for key in stopped:
            self.supervisor.remove(*key)
        for key in (*started, *restarted):
            self.supervisor.set(*key, specs[key], running=key not in self._held)
        # Answer once the processes have followed (bounded: a slow stop does not hang us).
        grace = max((s.stop_grace for s in (*old.values(), *specs.values())), default=0.0)
        with trio.move_on_after(grace + 5.0):
            for key in stopped:
                await self.supervisor.wait_for(*key, lambda status: status is None)
            for key in (*started, *restarted):
                await self.supervisor.wait_for(
                    *key, _settled("stop" if key in self._held else "start", began)
                )
        result = ApplyResult(
            digest=new.digest(),
            started=started,
            stopped=stopped,
            restarted=restarted,
            unchanged=unchanged,
        )
        self.last_apply = {"time": time.time(), **result.to_dict()}
        logger.info(
            "applied role configuration %s: %d started, %d stopped, %d restarted",
            result.digest,
            len(started),
            len(stopped),
            len(restarted),
        )
        return result

    async def _persist(self) -> None:
        state = {
            "format": _STATE_FORMAT,
            "saved_at": time.time(),
            **self._state.to_dict(),
            "held": sorted([role, uuid] for role, uuid in self._held),
            "control_issued": self._control_issued,
        }
        data = json.dumps(state, indent=2, sort_keys=True).encode() + b"\n"
        try:
            await trio.to_thread.run_sync(write_atomic, self.state_path, data)
        except OSError as exc:
            self.persist_error = f"cannot save {self.state_path}: {exc}"
            logger.error("%s", self.persist_error)
        else:
            self.persist_error = None

    async def _load(self, initial: RoleConfig | None) -> None:
        """Start with the saved configuration, plus the entries of *initial* (the station
        file's) that are newer than it; with nothing saved, with *initial*. A saved state that
        cannot be read or applied is set aside and nothing runs."""
        try:
            saved = await trio.to_thread.run_sync(_read_state, self.state_path)
        except RolesError as exc:
            self._refuse_saved(str(exc))
            return
        initial = initial if initial is not None else RoleConfig()
        if saved is None:
            fresh = StationState.from_file(initial)
            async with self._lock:
                await self._apply_valid(fresh, self.validate(fresh.config))  # checked already
            return
        self._held = set(saved.held)
        self._control_issued = saved.control_issued
        started, older = saved.state.started_with(initial)
        if older:
            logger.info(
                "station file entries %s are older than the saved role configuration (%s) and "
                "are not applied; give them a newer timestamp to make them win",
                ", ".join(older),
                saved.state.describe(),
            )
        problems: list[str] = []
        for candidate in dict.fromkeys((started, saved.state)):
            try:
                specs = self.validate(candidate.config)
            except InvalidConfiguration as exc:
                problems.append(str(exc))
                continue
            if problems:
                self.load_error = f"the station file's newer entries are refused: {problems[0]}"
                logger.error("%s", self.load_error)
            async with self._lock:
                await self._apply_valid(candidate, specs)
            return
        self._refuse_saved(problems[-1])
        self._state = StationState(as_of=saved.state.as_of, base=saved.state.base)
        async with self._lock:
            await self._persist()

    def _refuse_saved(self, reason: str) -> None:
        """The saved state cannot run: set the file aside, run nothing, say why."""
        moved = _set_aside(self.state_path)
        where = f"; it was set aside as {moved}" if moved else ""
        self.load_error = (
            f"the saved role configuration cannot be applied, so no roles run until a new one "
            f"is applied or pushed: {reason}{where}"
        )
        logger.error("%s", self.load_error)

    # --- control ----------------------------------------------------------------------------

    def _select(self, role: str | None, uuid: str | None) -> list[InstanceKey]:
        keys = sorted(self._specs)
        if role is None and uuid is None:
            return keys
        chosen = [
            k for k in keys if (role is None or k[0] == role) and (uuid is None or k[1] == uuid)
        ]
        if not chosen:
            what = "/".join(part for part in (role, uuid) if part is not None)
            known = ", ".join(f"{r}/{u}" for r, u in keys) or "none"
            raise InvalidRequest(
                f"this station has no role instance {what!r}; configured instances: {known}",
                role=role,
                uuid=uuid,
            )
        return chosen

    async def _control(
        self, action: str, role: str | None, uuid: str | None, patience: float
    ) -> list[ProcessStatus]:
        async with self._lock:
            keys = self._select(role, uuid)
            began = time.time()
            for key in keys:
                if action == "stop":
                    self._held.add(key)
                    self.supervisor.stop(*key)
                else:
                    self._held.discard(key)
                    if action == "start":
                        self.supervisor.start(*key)
                    else:
                        self.supervisor.restart(*key)
            await self._persist()
        with trio.move_on_after(patience):
            for key in keys:
                await self.supervisor.wait_for(*key, _settled(action, began))
        return [s for key in keys if (s := self.supervisor.status(*key)) is not None]

    async def start(self, role: str | None = None, uuid: str | None = None) -> list[ProcessStatus]:
        """Start instances stopped by hand (all, a role's, or one); wait briefly for them."""
        return await self._control("start", role, uuid, patience=5.0)

    async def stop(self, role: str | None = None, uuid: str | None = None) -> list[ProcessStatus]:
        """Stop instances and keep them stopped (also across restarts) until started."""
        grace = max((self._specs[k].stop_grace for k in self._select(role, uuid)), default=0.0)
        return await self._control("stop", role, uuid, patience=grace + 5.0)

    async def restart(
        self, role: str | None = None, uuid: str | None = None
    ) -> list[ProcessStatus]:
        """Restart instances at once (stopped by hand ones too)."""
        grace = max((self._specs[k].stop_grace for k in self._select(role, uuid)), default=0.0)
        return await self._control("restart", role, uuid, patience=grace + 5.0)

    def logs(self, role: str, uuid: str, lines: int = 100) -> tuple[str, ...]:
        """Return the last *lines* lines of one instance's output."""
        self._select(role, uuid)
        return self.supervisor.tail(role, uuid, lines)

    # --- views (extension hooks) -------------------------------------------------------------

    def snapshot(self) -> SupervisorSnapshot:
        """Return the supervisor's frozen view of every instance."""
        return self.supervisor.snapshot()

    def roles_summary(self) -> dict[str, dict[str, int]]:
        """Return role -> {configured, running, failed} counts: small, for gossip metadata.

        ``failed`` counts instances in ``failed`` or ``backoff`` (wanted but not running).
        """
        summary: dict[str, dict[str, int]] = {}
        for role, uuid in sorted(self._specs):
            counts = summary.setdefault(role, {"configured": 0, "running": 0, "failed": 0})
            counts["configured"] += 1
            status = self.supervisor.status(role, uuid)
            if status is None:
                continue
            if status.state == "running":
                counts["running"] += 1
            elif status.state in ("failed", "backoff"):
                counts["failed"] += 1
        return summary

    def status(self, *, tail_lines: int = 5) -> dict[str, Any]:
        """Return the JSON-able status for the status API and dashboards."""
        return {
            "identity": self.identity.to_dict(),
            "config_digest": self.config.digest(),
            "source": self.source,
            "as_of": self.as_of,
            "orders": [
                {"issued": o.issued, "mode": o.mode, "key_id": o.key_id} for o in self.orders
            ],
            "blocked_roles": sorted(self.blocked_roles),
            "data_dir": self.data_dir,
            "allowed_roots": list(self.roots),
            "roles": self.roles_summary(),
            "instances": [
                {
                    **status.to_dict(tail_lines=tail_lines),
                    "held": (status.role, status.uuid) in self._held,
                }
                for status in self.supervisor.snapshot().processes
            ],
            "load_error": self.load_error,
            "persist_error": self.persist_error,
            "last_apply": self.last_apply,
        }

    def check(self, config: RoleConfig) -> dict[str, Any]:
        """The dry run of an apply (``roles.check``): validate, change nothing."""
        self.validate(config)
        return {"valid": True, "digest": config.digest()}

    def show(self) -> dict[str, Any]:
        """Return the configuration, policy and factories (the answer of ``roles.show``)."""
        return {
            "config": self.config.to_dict(),
            "digest": self.config.digest(),
            "source": self.source,
            "as_of": self.as_of,
            "blocked_roles": sorted(self.blocked_roles),
            "env_allow": sorted(self.env_allow),
            "variables": dict(self.variables),
            "factories": {
                name: f.describe()
                for name in self.factories.names()
                if (f := self.factories.get(name))
            },
            "held": sorted(f"{r}/{u}" for r, u in self._held),
            "status": self.status(),
        }

    def subscribe(self, max_buffer: int = 256) -> trio.MemoryReceiveChannel[SupervisorEvent]:
        """Return a channel of every later process state change (see the supervisor)."""
        return self.supervisor.subscribe(max_buffer)

    # --- requests ---------------------------------------------------------------------------

    async def handle_request(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Answer a request from another node; see the module docstring for the kinds.

        Raises :class:`~roles.InvalidConfiguration` subclasses for a refused update and
        :class:`~roles.InvalidRequest` for an unknown kind or a malformed payload.
        """
        handler = self._handlers.get(kind)
        if handler is None:
            raise InvalidRequest(
                f"unknown request kind {kind!r}; a station answers {', '.join(REQUEST_KINDS)}"
            )
        if not isinstance(payload, Mapping):
            raise InvalidRequest(f"{kind}: the payload must be an object (a map)")
        return await handler(self, payload)

    def request_handlers(
        self,
    ) -> dict[str, Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]]:
        """Return kind -> ``async handler(payload) -> dict`` for every kind in
        :data:`REQUEST_KINDS` (each calls :meth:`handle_request`), for a node's handler table."""

        def bind(kind: str) -> Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]:
            async def handler(payload: Mapping[str, Any]) -> dict[str, Any]:
                return await self.handle_request(kind, payload)

            return handler

        return {kind: bind(kind) for kind in REQUEST_KINDS}

    async def _handle_apply(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        if "config" not in payload:
            raise InvalidRequest(
                "roles.apply: the payload needs 'config' (role -> uuid -> options)"
            )
        merge = payload.get("merge", False)
        if not isinstance(merge, bool):
            raise InvalidRequest("roles.apply: 'merge' must be true or false")
        config = RoleConfig.from_dict(
            payload["config"], source="roles.apply payload", default_timestamp=now_ms()
        )
        return (await self.apply(config, merge=merge)).to_dict()

    async def _handle_check(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        if "config" not in payload:
            raise InvalidRequest(
                "roles.check: the payload needs 'config' (role -> uuid -> options)"
            )
        return self.check(RoleConfig.from_dict(payload["config"], source="roles.check payload"))

    async def _handle_show(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self.show()

    async def _handle_status(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _handle_control(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        role, uuid = _target(kind, payload)
        action = kind.removeprefix("roles.")
        method = {"start": self.start, "stop": self.stop, "restart": self.restart}[action]
        statuses = await method(role, uuid)
        return {"instances": [s.to_dict() for s in statuses]}

    async def _handle_logs(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        role, uuid = _target("roles.logs", payload)
        lines = payload.get("lines", 100)
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise InvalidRequest("roles.logs: 'lines' must be a non-negative integer")
        if role is None or uuid is None:
            keys = self._select(role, uuid)
            if len(keys) != 1:
                raise InvalidRequest(
                    "roles.logs: name one instance with 'role' and 'uuid'; matching: "
                    + ", ".join(f"{r}/{u}" for r, u in keys),
                    role=role,
                    uuid=uuid,
                )
            role, uuid = keys[0]
        return {"role": role, "uuid": uuid, "lines": list(self.logs(role, uuid, lines))}

    _handlers: Mapping[str, Callable[[Station, Mapping[str, Any]], Awaitable[dict[str, Any]]]] = {
        "roles.apply": _handle_apply,
        "roles.check": _handle_check,
        "roles.show": _handle_show,
        "roles.status": _handle_status,
        "roles.start": lambda self, p: self._handle_control("roles.start", p),
        "roles.stop": lambda self, p: self._handle_control("roles.stop", p),
        "roles.restart": lambda self, p: self._handle_control("roles.restart", p),
        "roles.logs": _handle_logs,
    }


def _settled(action: str, began: float) -> Callable[[ProcessStatus | None], bool]:
    """Return a predicate: has an instance followed a start/stop/restart made at *began*?"""

    def check(status: ProcessStatus | None) -> bool:
        if status is None:
            return True
        if action == "stop":
            return status.state in ("stopped", "exited")
        if action == "start" and status.state in ("running", "waiting"):
            return True
        return status.since >= began and status.state in (
            "running",
            "backoff",
            "failed",
            "exited",
            "waiting",
        )

    return check


def _target(kind: str, payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    role = payload.get("role")
    uuid = payload.get("uuid")
    for name, value in (("role", role), ("uuid", uuid)):
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{kind}: {name!r} must be a string")
    if uuid is not None and role is None:
        raise InvalidRequest(f"{kind}: give 'role' with 'uuid'", uuid=uuid)
    return role, uuid


@asynccontextmanager
async def open_station(
    state_dir: str | os.PathLike[str],
    *,
    initial: RoleConfig | None = None,
    factories: FactoryRegistry | None = None,
    blocked_roles: Iterable[str] = (),
    variables: Mapping[str, str] | None = None,
    identity: StationIdentity | None = None,
    backoff: BackoffPolicy | None = None,
    tail_lines: int = 200,
    on_event: Callable[[SupervisorEvent], None] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    allowed_roots: Sequence[str] = (),
    env_allow: Iterable[str] = (),
) -> AsyncIterator[Station]:
    """Run a :class:`Station` for the duration of the block.

    Starts from the configuration saved in *state_dir*, plus the entries of *initial* (e.g.
    from ``--roles FILE``) newer than it (see the module docstring). Path options must stay
    under *data_dir* (default ``<state_dir>/data``, where relative paths go) or one of
    *allowed_roots*; roles may set the environment variables of
    :data:`~roles.DEFAULT_ENV_ALLOW` and *env_allow*. If *initial* alone is refused, its
    :class:`~roles.InvalidConfiguration` is raised; a saved configuration that is refused is
    set aside, logged and shown as ``load_error`` in the status, and nothing runs. On exit
    every process is stopped and its process group cleared.
    """
    factories = factories if factories is not None else default_factories()
    if identity is None:
        identity = await trio.to_thread.run_sync(read_identity)
    policy = StationPolicy.build(
        state_dir=state_dir,
        factories=factories,
        blocked_roles=blocked_roles,
        variables=dict(variables or {}),
        identity=identity,
        data_dir=data_dir,
        allowed_roots=allowed_roots,
        env_allow=env_allow,
    )
    if initial is not None:
        policy.validate(initial)
    async with open_supervisor(
        backoff=backoff, tail_lines=tail_lines, on_event=on_event, state_dir=state_dir
    ) as sup:
        station = Station(sup, state_dir=state_dir, policy=policy, identity=identity)
        await station._load(initial)
        yield station
