"""A deterministic simulation of the station manager: conductor candidates running the real
:class:`~roles._manager.ManagerCore`, stations deciding with the real relay checks
(:func:`~roles._authority.check_relay`, :func:`~roles._authority.check_relayed_orders`), the
real :class:`~roles.StationState` and the real validator (:class:`~roles.StationPolicy`),
operators signing real Ed25519 orders, and a member that forges them.

One seed drives everything (a virtual clock, a network that delays and loses, the faults,
the operators' actions, the keys), so a seed replays a run exactly (``trace_hash``). A run
has two phases:

* **faults** (``ManagerSimConfig.fault_time`` seconds): operators push full and merge
  configurations (some with a role a station blocks), push to a mistyped station and forget
  stations; stations crash and restart (sometimes with another policy, so they reject what
  they ran), apply slowly (beyond the manager's timeout), see the conductor late, and their
  own operators change them locally; candidates crash, stall and hand the conductor post
  over; the forger sends unsigned, foreign-key, altered and re-addressed orders to the
  conductor, to the stations (as itself and in the conductor's name) and as replicas of the
  desired state, and sometimes holds the conductor post itself;
* **quiet**: every node is up, no message is lost, nobody acts. The run checks, every half
  second, whether it has **converged**: one legitimate conductor seen by every node, every
  candidate holding the conductor's desired state, and every managed live station either
  running its desired configuration (and the conductor saying so), or the conductor
  reporting a typed refusal for that configuration that the station would give again now.

Safety is checked all along: a station only ever runs entries an operator signed, its own
file held, or its own operator set (and every order it runs from verifies); a refused apply
changes nothing on the station; a push the station refused to check never enters the desired
state; a forged order never enters any candidate's desired state.

Used by ``tests/test_roles_manager_sim.py`` (hundreds of seeds) and ``bench/roles_manager.py``
(ten thousand).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh._scenarios import percentile
from roles._authority import ChangeRefused, RemoteAuthority, check_relay, check_relayed_orders
from roles._config import RoleConfig, canonical_json
from roles._desired import DesiredState
from roles._errors import InvalidConfiguration, NotConductor, RolesError, is_roles_error
from roles._factories import default_factories
from roles._history import StationState
from roles._identity import StationIdentity
from roles._manager import (
    ApplyOrders,
    CheckConfig,
    Done,
    Exchange,
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
from roles._operator import OperatorKey, OperatorKeyring, Order, merge_chains
from roles._station import StationPolicy

__all__ = ["ManagerSimConfig", "SeedResult", "run_manager_seed", "summarize"]

FEDERATION = "sim"
#: Milliseconds since the epoch at virtual time 0 (orders and entries carry such times).
EPOCH_MS = 1_750_000_000_000
_UUIDS = ("cam", "mic", "slides", "upload", "hall")
_FORGER = "/evil/x"
_TYPO = "/room-z/typo"
#: Refusals that mean "ask the conductor again" (the post moved, or the forger holds it).
_ELSEWHERE = (NotConductor.wire_name, "UnknownRequest")


@attrs.frozen
class ManagerSimConfig:
    """The shape of one simulated run (times in virtual seconds)."""

    candidates: int = 3
    stations: int = 4
    fault_time: float = 60.0
    settle_limit: float = 120.0
    manager_interval: float = 2.0
    sync_interval: float = 5.0
    refused_retry: float = 30.0
    push_timeout: float = 5.0
    loss: float = 0.02
    operator_every: float = 4.0
    station_crash_every: float = 40.0
    candidate_crash_every: float = 60.0
    handoff_every: float = 60.0
    stall_every: float = 60.0
    local_change_every: float = 90.0
    forgery_every: float = 6.0
    slow_apply: float = 0.1
    lagging_view: float = 0.05
    forger_reign: float = 0.5


@attrs.frozen
class SeedResult:
    """One run: whether every property held (``failures`` says which did not), the virtual
    seconds from the end of the faults to convergence (``None`` if it never came),
    ``trace_hash`` (the same for the same seed), and counters (``stats``)."""

    seed: int
    failures: tuple[str, ...]
    converged_after: float | None
    trace_hash: str
    stats: Mapping[str, int]

    @property
    def ok(self) -> bool:
        """Whether every property held."""
        return not self.failures


def _policy(blocked: Iterable[str]) -> StationPolicy:
    return StationPolicy.build(
        state_dir="/nonexistent/stagemesh-sim",
        factories=default_factories(),
        blocked_roles=blocked,
        variables={},
        identity=StationIdentity(hostname="sim", mac=None, addresses=()),
    )


_OPEN = _policy(())
_STRICT = _policy(("stream",))


def _entry(role: str, timestamp: int, rng: random.Random) -> dict[str, Any]:
    options: dict[str, Any] = {"timestamp": timestamp, "command": ["sleep", str(rng.randint(1, 9))]}
    if role == "stream":
        options.update(source="cam", url="rtmp://relay/room")
    return options


def _blessings(config: RoleConfig) -> set[tuple[str, str, str]]:
    return {(role, uuid, canonical_json(entry.to_dict())) for role, uuid, entry in config}


class _Node:
    """What every simulated process has: a path, whether it is up, its incarnation, when a
    stall ends, and its view of the conductor lease and (candidates) of the members."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.up = True
        self.gen = 0
        self.stalled_until = 0.0
        self.lease: tuple[int, str | None, int | None] = (0, None, None)
        self.members: dict[str, tuple[int, Member | None]] = {}
        self.mesh: MeshView = MeshView(path)

    def refresh(self) -> None:
        """Rebuild the :class:`MeshView` the manager core is given."""
        _, conductor, term = self.lease
        live = {p: m for p, (_, m) in sorted(self.members.items()) if m is not None}
        self.mesh = MeshView(self.path, conductor, term, live)


class _Candidate(_Node):
    """A conductor candidate: its manager core (``None`` while down), the desired state it
    saved, its next timer, and the operators waiting for its answers."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.core: ManagerCore | None = None
        self.saved = DesiredState()
        self.timer_at = float("inf")
        self.replies: dict[int, Callable[[Outcome], None]] = {}


class _Station(_Node):
    """A station: its file, its policy (strict: ``stream`` blocked), its state (saved: it
    survives a crash) and until when it is busy applying."""

    def __init__(self, path: str, file: RoleConfig, strict: bool) -> None:
        super().__init__(path)
        self.file = file
        self.strict = strict
        self.state = StationState.from_file(file)
        self.busy_until = 0.0

    @property
    def policy(self) -> StationPolicy:
        """The validator this station applies now."""
        return _STRICT if self.strict else _OPEN


class _Sim:
    """One run (see the module docstring)."""

    def __init__(self, seed: int, config: ManagerSimConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.loss = config.loss
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._hash = hashlib.blake2b(digest_size=16)
        self.failures: list[str] = []
        self.stats: dict[str, int] = {}
        keys = [Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32)) for _ in range(3)]
        self.operators = [OperatorKey(k) for k in keys[:2]]
        self.forger_key = OperatorKey(keys[2])
        self.authority = RemoteAuthority(
            federation=FEDERATION,
            keyed=True,
            keyring=OperatorKeyring([k.public() for k in self.operators]),
        )
        self.candidates = [_Candidate(f"/ctl/c{i}") for i in range(config.candidates)]
        self.stations: list[_Station] = []
        self.blessed: dict[str, set[tuple[str, str, str]]] = {}
        for i in range(config.stations):
            file = self._file_config(i)
            station = _Station(f"/room-{i}/s{i}", file, strict=self.rng.random() < 0.5)
            self.blessed[station.path] = _blessings(file)
            self.stations.append(station)
        self.forger = _Node(_FORGER)
        self.nodes: dict[str, _Node] = {n.path: n for n in (*self.candidates, *self.stations)}
        self.nodes[_FORGER] = self.forger
        self.truth: dict[str, tuple[int, Member | None]] = {}
        self.lease: tuple[int, str | None, int | None] = (0, None, 0)
        self.genuine: list[Order] = []
        self.acknowledged: list[Order] = []
        self.forged: list[Order] = []
        self.converged_at: float | None = None

    # --- plumbing ----------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def fail(self, what: str) -> None:
        self.failures.append(f"t={self.now:.3f}: {what}")

    def trace(self, *parts: object) -> None:
        self._hash.update(repr((round(self.now, 6), *parts)).encode())

    def at(self, delay: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + max(delay, 0.0), self._seq, action))

    def on(self, node: _Node, action: Callable[[], None], delay: float = 0.0) -> None:
        """Run *action* on *node* after *delay*, if the same incarnation is still up then
        (later, if it is stalled)."""
        gen = node.gen

        def run() -> None:
            if not node.up or node.gen != gen:
                return
            if node.stalled_until > self.now:
                self.at(node.stalled_until - self.now, run)
                return
            action()

        self.at(delay, run)

    def latency(self) -> float:
        return 0.0005 + self.rng.expovariate(1 / 0.004)

    def view_lag(self) -> float:
        lag = 0.05 + self.rng.expovariate(1 / 0.3)
        if self.rng.random() < self.config.lagging_view and self.now < self.config.fault_time:
            lag += self.rng.uniform(2.0, 8.0)
        return lag

    def ms(self) -> int:
        return EPOCH_MS + int(self.now * 1000)

    def every(self, mean: float, action: Callable[[], None]) -> None:
        """Run *action* at random times (mean interval *mean*) during the faults."""

        def tick() -> None:
            if self.now < self.config.fault_time:
                action()
                self.at(self.rng.expovariate(1 / mean), tick)

        self.at(self.rng.expovariate(1 / mean), tick)

    # --- the mesh as members see it ------------------------------------------------------------

    def announce(self, path: str, alive: bool, delay: float = 0.0) -> None:
        """The truth about *path* changes (after *delay*: alive, with its member record as
        it is then, or dead); every candidate learns it late (stations need only the
        conductor lease)."""

        def change() -> None:
            node = self.nodes[path]
            back = node.up and node.stalled_until <= self.now
            if alive != back and not (alive and node.up):
                return  # overtaken: a restarted node's rejoin beats the older death, and so on
            member = self.member_of(node) if alive else None
            version = self.truth.get(path, (0, None))[0] + 1
            self.truth[path] = (version, member)
            for node in self.candidates:
                if node.path != path:
                    learn = functools.partial(self.learn_member, node, path, version, member)
                    self.on(node, learn, self.view_lag())

        self.at(delay, change)

    def learn_member(self, node: _Node, path: str, version: int, member: Member | None) -> None:
        if node.members.get(path, (0, None))[0] < version:
            node.members[path] = (version, member)
            node.refresh()
            self.touched(node)

    def set_lease(self, conductor: str | None) -> None:
        version, _, term = self.lease
        term = (term or 0) + 1
        self.lease = (version + 1, conductor, term)
        self.count("conductor changes")
        self.trace("lease", conductor, term)
        lease = self.lease
        for node in self.nodes.values():
            lag = 0.0 if node.path == conductor else self.view_lag()
            self.on(node, functools.partial(self.learn_lease, node, lease), lag)

    def learn_lease(self, node: _Node, lease: tuple[int, str | None, int | None]) -> None:
        if node.lease[0] < lease[0]:
            node.lease = lease
            node.refresh()
            self.touched(node)

    def full_view(self, node: _Node) -> None:
        """A (re)started node learns the whole mesh as it joins."""
        for path, (version, member) in sorted(self.truth.items()):
            if path != node.path:
                self.learn_member(node, path, version, member)  # the truth as of now
        self.learn_lease(node, self.lease)

    def touched(self, node: _Node) -> None:
        if isinstance(node, _Candidate) and node.core is not None:
            node.core.update_view(node.mesh)
            self.pump(node)

    def member_of(self, node: _Node) -> Member:
        """*node*'s member record: a station announces its configuration's digest."""
        if isinstance(node, _Station):
            return Member(digest=node.state.config.digest())
        return Member(candidate=isinstance(node, _Candidate))

    def elect(self) -> None:
        """The best live candidate claims the post (an alive incumbent keeps it)."""
        holder = self.lease[1]
        if holder is not None and self.nodes[holder].up and holder != _FORGER:
            return
        for candidate in self.candidates:
            if candidate.up:
                self.set_lease(candidate.path)
                return
        if holder is not None:
            self.set_lease(None)

    # --- requests ------------------------------------------------------------------------------

    def request(
        self,
        src: _Node,
        dst: str,
        kind: str,
        body: Any,
        timeout: float,
        answer: Callable[[Outcome], None] | None,
        *,
        sender: str | None = None,
    ) -> None:
        """Send *kind* from *src* to *dst* over the lossy network; *answer* gets the outcome
        (on *src*, if it is still the same incarnation)."""
        settled = False

        def settle(outcome: Outcome) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            if answer is not None:
                answer(outcome)

        def on_src(outcome: Outcome, delay: float) -> None:
            self.on(src, lambda: settle(outcome), delay)

        if src is not self.forger and dst not in src.mesh.members:
            on_src(Unreachable("NoSuchMember", f"no live member has path {dst}"), 0.0)
            return
        on_src(Unreachable("RequestTimeout", f"{dst} did not answer {kind!r}"), timeout)
        if self.rng.random() < self.loss:
            return
        target = self.nodes.get(dst)
        if target is None or not target.up:
            if self.rng.random() < 0.5:
                message = f"cannot reach {dst}: connection refused"
                on_src(Unreachable("PeerUnreachable", message), 2 * self.latency())
            return

        def reply(outcome: Outcome) -> None:
            if self.rng.random() >= self.loss:
                on_src(outcome, self.latency())

        who = sender or src.path
        self.on(target, lambda: self.serve(target, who, kind, body, reply), self.latency())

    def serve(
        self, node: _Node, sender: str, kind: str, body: Any, reply: Callable[[Outcome], None]
    ) -> None:
        self.trace("serve", node.path, sender, kind)
        if isinstance(node, _Station):
            if kind == "check":
                self.station_check(node, body, reply)
            elif kind == "apply":
                self.station_apply(node, sender, body, reply)
            else:
                reply(Refused("UnknownRequest", f"no handler for {kind!r}"))
        elif isinstance(node, _Candidate) and node.core is not None:
            self.candidate_serve(node, sender, kind, body, reply)
        else:
            reply(Refused("UnknownRequest", f"no handler for {kind!r}"))

    # --- stations ----------------------------------------------------------------------------

    def station_check(
        self, st: _Station, config: RoleConfig, reply: Callable[[Outcome], None]
    ) -> None:
        try:
            st.policy.validate(config)
        except InvalidConfiguration as exc:
            reply(Refused(exc.wire_name, exc.message))
        else:
            reply(Done({"valid": True, "digest": config.digest()}))

    def station_apply(
        self, st: _Station, sender: str, body: tuple[tuple[Order, ...], int | None],
        reply: Callable[[Outcome], None],
    ) -> None:  # fmt: skip
        orders, term = body
        _, conductor, known = st.lease
        try:  # on arrival, as the node's handler does
            check_relay(
                self.authority, station=st.path, sender=sender, term=term,
                conductor=conductor, known_term=known,
            )  # fmt: skip
            check_relayed_orders(self.authority, station=st.path, orders=orders)
        except ChangeRefused as refused:
            self.count(f"station refused {refused.reason}")
            reply(Refused(refused.error.wire_name, refused.error.message))
            return
        except RolesError as exc:
            reply(Refused(exc.wire_name, exc.message))
            return
        slow = self.rng.random() < self.config.slow_apply and self.now < self.config.fault_time
        took = self.rng.uniform(3.0, 8.0) if slow else self.rng.uniform(0.005, 0.2)
        start = max(self.now, st.busy_until)
        st.busy_until = start + took
        self.on(st, lambda: self.station_commit(st, orders, reply), st.busy_until - self.now)

    def station_commit(
        self, st: _Station, orders: tuple[Order, ...], reply: Callable[[Outcome], None]
    ) -> None:
        """Under the station's lock: the newest statement wins, then the one validator."""
        before = st.state
        try:
            new = before.with_orders(orders)
            st.policy.validate(new.config)
        except RolesError as exc:
            if st.state is not before:
                self.fail(f"{st.path}: a refused apply ({exc.wire_name}) changed the station")
            self.count(f"station refused {exc.wire_name}")
            reply(Refused(exc.wire_name, exc.message))
            return
        self.commit(st, new, "conductor")
        reply(Done({"applied": True, "digest": new.config.digest()}))

    def commit(self, st: _Station, new: StationState, how: str) -> None:
        """*st* runs *new* from now on: check that an operator (or the station itself) said
        every entry of it, and announce its digest."""
        unsigned = [
            f"{role}/{uuid}"
            for role, uuid, entry in new.config
            if (role, uuid, canonical_json(entry.to_dict())) not in self.blessed[st.path]
        ]
        if unsigned:
            self.fail(f"{st.path} runs {', '.join(unsigned)} that no operator signed ({how})")
        if new.source == "conductor" and not all(self.authority.accepts(o) for o in new.orders):
            self.fail(f"{st.path} runs orders that do not verify ({how})")
        changed = new.config.digest() != st.state.config.digest()
        st.state = new
        self.trace("commit", st.path, new.config.digest(), how)
        if changed:
            self.count("station changes")
            self.announce(st.path, True, self.rng.uniform(0.0, 0.5))

    def local_change(self, st: _Station) -> None:
        """The station's own operator changes it through the local API."""
        if not st.up:
            return
        uuid = self.rng.choice(_UUIDS[:3])
        config = RoleConfig.from_dict({"command": {uuid: _entry("command", self.ms(), self.rng)}})
        self.blessed[st.path] |= _blessings(config)
        new = st.state.with_local(config, self.ms(), merge=self.rng.random() < 0.6)
        try:
            st.policy.validate(new.config)
        except InvalidConfiguration:
            return
        self.count("local changes")
        self.commit(st, new, "local")

    def restart_station(self, st: _Station) -> None:
        """A station starts again: its saved state, its file's newer entries, maybe another
        policy; a saved configuration its policy now refuses is set aside (nothing runs)."""
        st.up, st.gen, st.busy_until = True, st.gen + 1, 0.0
        st.members, st.lease = {}, (0, None, None)
        st.refresh()
        if self.rng.random() < 0.3:
            st.strict = not st.strict
        started, _ = st.state.started_with(st.file)
        for candidate in dict.fromkeys((started, st.state)):
            try:
                st.policy.validate(candidate.config)
            except InvalidConfiguration:
                continue
            self.commit(st, candidate, "restart")
            break
        else:
            self.count("stations set aside")
            self.commit(st, StationState(as_of=st.state.as_of, base=st.state.base), "set aside")
        self.trace("restart", st.path)
        self.announce(st.path, True, self.rng.uniform(0.1, 0.5))
        self.on(st, lambda: self.full_view(st), self.rng.uniform(0.1, 1.0))

    # --- candidates ------------------------------------------------------------------------------

    def start_candidate(self, c: _Candidate, fresh: bool) -> None:
        c.up, c.gen, c.timer_at, c.replies = True, c.gen + 1, float("inf"), {}
        c.members, c.lease = {}, (0, None, None)
        c.refresh()
        desired, _ = c.saved.filtered(self.authority.accepts)
        c.core = ManagerCore(
            self.authority,
            path=c.path,
            now=self.now,
            desired=desired,
            candidate=True,
            manager_interval=self.config.manager_interval,
            sync_interval=self.config.sync_interval,
            refused_retry=self.config.refused_retry,
        )
        c.core.update_view(c.mesh)
        self.schedule_timer(c)
        if not fresh:
            self.trace("restart", c.path)
            self.announce(c.path, True, self.rng.uniform(0.1, 0.5))
            self.on(c, lambda: self.full_view(c), self.rng.uniform(0.1, 1.0))
            self.at(1.0, self.elect)

    def schedule_timer(self, c: _Candidate) -> None:
        assert c.core is not None
        deadline = c.core.next_deadline()
        if deadline >= c.timer_at:
            return
        c.timer_at = deadline

        def fire() -> None:
            if c.core is None or c.timer_at != deadline:
                return
            c.timer_at = float("inf")
            c.core.update_view(c.mesh)
            c.core.handle_timer(self.now)
            self.pump(c)

        self.on(c, fire, deadline - self.now)

    def pump(self, c: _Candidate) -> None:
        """Carry out what a candidate's manager asks for."""
        core = c.core
        assert core is not None
        timeout = self.config.push_timeout
        for out in core.take_outputs():
            if isinstance(out, CheckConfig):
                self.request(c, out.station, "check", out.config, timeout,
                             self.answer_to(c, core.check_done, out.op))  # fmt: skip
            elif isinstance(out, ApplyOrders):
                self.count(f"applies ({out.reason})")
                self.request(c, out.station, "apply", (out.orders, out.term), timeout,
                             self.answer_to(c, core.apply_done, out.op))  # fmt: skip
            elif isinstance(out, Replicate):
                for target in out.targets:
                    self.request(c, target, "sync", out.state, 5.0, None)
            elif isinstance(out, Exchange):
                self.request(c, out.target, "exchange", out.state, 5.0, self.exchanged(c, core))
            elif isinstance(out, Persist):
                save = functools.partial(self.persist, c, out.state, c.gen)
                self.at(self.rng.uniform(0.001, 0.02), save)
            elif isinstance(out, PushAnswered):
                respond = c.replies.pop(out.push, None)
                if respond is not None:
                    if out.error is not None:
                        respond(Refused(out.error.wire_name, out.error.message))
                    else:
                        respond(Done(dict(out.answer or {})))
        self.schedule_timer(c)

    def persist(self, c: _Candidate, state: DesiredState, gen: int) -> None:
        if c.up and c.gen == gen:
            c.saved = state

    def answer_to(
        self, c: _Candidate, done: Callable[[float, int, Outcome], None], op: int
    ) -> Callable[[Outcome], None]:
        core = c.core

        def answer(outcome: Outcome) -> None:
            if c.core is not core or core is None:
                return
            core.update_view(c.mesh)
            done(self.now, op, outcome)
            self.pump(c)

        return answer

    def exchanged(self, c: _Candidate, core: ManagerCore) -> Callable[[Outcome], None]:
        def answer(outcome: Outcome) -> None:
            if c.core is core and isinstance(outcome, Done):
                core.merge_in(self.now, outcome.result["state"], answers=True)
                self.pump(c)

        return answer

    def candidate_serve(
        self, c: _Candidate, sender: str, kind: str, body: Any, reply: Callable[[Outcome], None]
    ) -> None:
        core = c.core
        assert core is not None
        core.update_view(c.mesh)
        if kind == "push":
            try:
                push = core.push(self.now, body)
            except ChangeRefused as refused:
                reply(Refused(refused.error.wire_name, refused.error.message))
                return
            except RolesError as exc:
                reply(Refused(exc.wire_name, exc.message))
                return
            c.replies[push] = reply
        elif kind == "sync":
            dropped = core.replica(self.now, body, sender)
            self.count("forged orders dropped", dropped)
        elif kind == "exchange":
            dropped = core.merge_in(self.now, body, answers=False)
            self.count("forged orders dropped", dropped)
            reply(Done({"state": core.desired}))
        else:
            reply(Refused("UnknownRequest", f"no handler for {kind!r}"))
        self.pump(c)

    # --- operators -------------------------------------------------------------------------------

    def _file_config(self, i: int) -> RoleConfig:
        if self.rng.random() < 0.3:
            return RoleConfig()
        uuids = self.rng.sample(_UUIDS[:3], self.rng.randint(1, 2))
        return RoleConfig.from_dict(
            {"command": {u: _entry("command", EPOCH_MS - 60_000 - i, self.rng) for u in uuids}}
        )

    def random_config(self, stamp: int) -> RoleConfig:
        doc: dict[str, dict[str, Any]] = {}
        for uuid in self.rng.sample(_UUIDS[:4], self.rng.randint(0, 3)):
            doc.setdefault("command", {})[uuid] = _entry("command", stamp, self.rng)
        if self.rng.random() < 0.2:
            doc["stream"] = {"hall": _entry("stream", stamp, self.rng)}
        if self.rng.random() < 0.2 and doc.get("command"):
            uuid = self.rng.choice(sorted(doc["command"]))
            doc["command"][uuid] = {"timestamp": stamp, "_deleted": True}
        return RoleConfig.from_dict(doc)

    def operator_action(self) -> None:
        """An operator signs an order and pushes it through a node of the crew's laptop."""
        key = self.rng.choice(self.operators)
        issued = self.ms() + self.rng.randint(-200, 200)
        paths = [s.path for s in self.stations]
        target = _TYPO if self.rng.random() < 0.08 else self.rng.choice(paths)
        roll = self.rng.random()
        if roll < 0.06:
            order = Order.for_forget(FEDERATION, target, issued=issued)
        else:
            config = self.random_config(issued)
            order = Order.for_config(FEDERATION, target, config, merge=roll < 0.35, issued=issued)
            if target in self.blessed:
                self.blessed[target] |= _blessings(config)
        signed = key.sign(order)
        self.genuine.append(signed)
        self.count(f"pushes ({signed.mode})")
        self.send_push(signed, attempts=4)

    def send_push(self, order: Order, attempts: int) -> None:
        laptop = self.rng.choice([c for c in self.candidates if c.up] or self.candidates)
        conductor = laptop.mesh.conductor if laptop.up else None
        if conductor is None:
            self.retry_push(order, attempts)
            return

        def answered(outcome: Outcome) -> None:
            if isinstance(outcome, Done):
                self.operator_answer(order, conductor, outcome.result)
            elif isinstance(outcome, Refused) and outcome.error_type not in _ELSEWHERE:
                self.count(f"push refused {outcome.error_type}")
            else:
                self.retry_push(order, attempts)

        self.request(laptop, conductor, "push", order, 3 * self.config.push_timeout + 5, answered)

    def retry_push(self, order: Order, attempts: int) -> None:
        if attempts > 1:
            self.at(self.rng.uniform(1.0, 3.0), lambda: self.send_push(order, attempts - 1))
        else:
            self.count("pushes given up")

    def operator_answer(self, order: Order, by: str, answer: Mapping[str, Any]) -> None:
        """What the operator was told by conductor *by*: a push it did not keep (the
        station's check refused it, or it is older than the last full push) is not in its
        desired state; one it kept is (unless a newer full push replaced it meanwhile)."""
        if answer.get("applied") or answer.get("pending") or answer.get("forgotten"):
            self.acknowledged.append(order)
            self.count("pushes applied" if answer.get("applied") else "pushes kept")
        else:
            self.count(f"push answered {answer.get('error_type')}")
        node = self.nodes[by]
        if not isinstance(node, _Candidate) or node.core is None:
            return
        chain = node.core.desired.chain_for(order.station)
        if not answer.get("kept") and order in chain:
            self.fail(f"{by} answered {answer.get('error_type')} but kept the order")
        if answer.get("kept") and order not in chain and order in merge_chains(chain, (order,)):
            self.fail(f"{by} answered that it kept the order, but it is not there")

    # --- the forger --------------------------------------------------------------------------

    def forge(self) -> Order:
        """An order no operator signed for what it says."""
        path = self.rng.choice(self.stations).path
        config = RoleConfig.from_dict(
            {"command": {"evil": {"timestamp": self.ms() + 10_000, "command": ["sh", "-c", "x"]}}}
        )
        order = Order.for_config(FEDERATION, path, config, issued=self.ms() + 10_000)
        kind = self.rng.randrange(4)
        if kind == 1:
            order = self.forger_key.sign(order)
        elif kind >= 2 and self.genuine:
            real = self.rng.choice(self.genuine)
            if kind == 2:  # altered after signing
                order = attrs.evolve(real, config=config)
            else:  # moved to another station
                others = [s.path for s in self.stations if s.path != real.station]
                order = attrs.evolve(real, station=self.rng.choice(others))
        if self.authority.accepts(order):
            self.fail("the forger made an order the operators' keys accept")
        self.forged.append(order)
        self.count("forgeries")
        return order

    def forgery(self) -> None:
        order = self.forge()
        way = self.rng.randrange(4)
        forger = self.forger
        forger.lease = self.lease
        if way == 0:
            holder = self.lease[1]
            if holder is not None:
                self.request(forger, holder, "push", order, 5.0, self.forgery_refused("push"))
        elif way == 1:
            target = self.rng.choice(self.candidates).path
            state = DesiredState(stations=[(order.station, merge_chains([order]))])
            self.request(forger, target, "sync", state, 5.0, None)
        else:  # roles.apply straight to the station, as itself or in the conductor's name
            sender = self.lease[1] if way == 3 else _FORGER
            self.request(forger, order.station, "apply", ((order,), self.lease[2]), 5.0,
                         self.forgery_refused("apply"), sender=sender)  # fmt: skip

    def forgery_refused(self, what: str) -> Callable[[Outcome], None]:
        def answer(outcome: Outcome) -> None:
            if isinstance(outcome, Done):
                self.fail(f"a forged {what} was accepted: {dict(outcome.result)}")
            else:
                self.count(f"forged {what} refused")

        return answer

    def forger_reign(self) -> None:
        """The forger wins the conductor post for a few seconds, and relays forged chains."""
        self.count("forger reigns")
        self.set_lease(_FORGER)
        for _ in self.stations:
            self.at(self.rng.uniform(0.5, 2.0), self.forgery)
        self.at(self.rng.uniform(2.0, 8.0), self.forger_steps_down)

    def forger_steps_down(self) -> None:
        if self.lease[1] == _FORGER:
            self.set_lease(None)
            self.elect()

    # --- faults --------------------------------------------------------------------------------

    def crash(self, node: _Node, down: tuple[float, float], graceful: bool = False) -> None:
        """*node* dies (a ``kill -9``, or leaves if *graceful*) for a time drawn from *down*."""
        if not node.up:
            return
        down_for = self.rng.uniform(*down)
        node.up = False
        self.count(f"crashes ({'station' if isinstance(node, _Station) else 'candidate'})")
        self.trace("crash", node.path)
        if isinstance(node, _Candidate):
            node.core = None
        detect = 0.0 if graceful else self.rng.uniform(1.0, 3.0)
        self.announce(node.path, False, detect)
        if self.lease[1] == node.path:
            self.at(detect + 0.01, self.elect)
        self.at(down_for, lambda: self.restart(node))

    def restart(self, node: _Node) -> None:
        if node.up:
            return
        if isinstance(node, _Station):
            self.restart_station(node)
        elif isinstance(node, _Candidate):
            self.start_candidate(node, fresh=False)

    def stall(self, c: _Candidate, durations: tuple[float, float]) -> None:
        """*c* freezes for a while: what reaches it meanwhile waits."""
        if not c.up:
            return
        duration = self.rng.uniform(*durations)
        self.count("stalls")
        c.stalled_until = max(c.stalled_until, self.now + duration)
        if duration > 2.0:  # the others declare it dead, then see it come back
            self.announce(c.path, False, self.rng.uniform(1.0, 2.0))
            self.announce(c.path, True, duration)
            if self.lease[1] == c.path:
                self.at(2.1, self.elect_instead_of(c))

    def elect_instead_of(self, c: _Candidate) -> Callable[[], None]:
        def elect() -> None:
            if self.lease[1] == c.path and c.stalled_until > self.now:
                others = [o for o in self.candidates if o.up and o is not c]
                if others:
                    self.set_lease(others[0].path)

        return elect

    def handoff(self) -> None:
        holder = self.lease[1]
        node = self.nodes.get(holder) if holder is not None else None
        if isinstance(node, _Candidate):
            self.count("handoffs")
            self.crash(node, (1.0, 10.0), graceful=True)

    def quiet(self) -> None:
        """The faults end: every node comes back, no message is lost any more."""
        self.loss = 0.0
        self.forger_steps_down()
        for node in self.nodes.values():
            if not node.up:
                self.at(self.rng.uniform(0.0, 2.0), functools.partial(self.restart, node))
        self.at(2.5, self.elect)

    # --- the run -------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        for c in self.candidates:
            self.start_candidate(c, fresh=True)
        for path, node in self.nodes.items():
            self.truth[path] = (1, self.member_of(node))
        for node in self.nodes.values():
            self.full_view(node)
        self.set_lease(self.candidates[0].path)
        self.every(cfg.operator_every, self.operator_action)
        self.every(cfg.forgery_every, self.forgery)
        for st in self.stations:
            self.every(cfg.station_crash_every, functools.partial(self.crash, st, (1.0, 15.0)))
            self.every(cfg.local_change_every, functools.partial(self.local_change, st))
        for c in self.candidates:
            self.every(cfg.candidate_crash_every, functools.partial(self.crash, c, (2.0, 20.0)))
            self.every(cfg.stall_every, functools.partial(self.stall, c, (0.5, 6.0)))
        self.every(cfg.handoff_every, self.handoff)
        if self.rng.random() < cfg.forger_reign:
            self.at(self.rng.uniform(5.0, cfg.fault_time - 10.0), self.forger_reign)
        self.at(cfg.fault_time, self.quiet)

    def run(self) -> SeedResult:
        self.start()
        cfg = self.config
        end = cfg.fault_time + cfg.settle_limit
        next_check = cfg.fault_time
        while self._heap and self.converged_at is None:
            when, _, action = heapq.heappop(self._heap)
            if when > end:
                break
            while when >= next_check >= cfg.fault_time and self.converged_at is None:
                self.now = next_check
                if self.converged():
                    self.converged_at = next_check
                next_check += 0.5
            if self.converged_at is not None:
                break
            self.now = when
            action()
            if len(self.failures) > 20:
                break
        if self.converged_at is None and not self.failures:
            self.now = end
            self.fail(f"no convergence within {cfg.settle_limit} s: {'; '.join(self.why())}")
        self.final_checks()
        return SeedResult(
            seed=self.seed,
            failures=tuple(self.failures),
            converged_after=(
                None if self.converged_at is None else self.converged_at - cfg.fault_time
            ),
            trace_hash=self._hash.hexdigest(),
            stats=dict(sorted(self.stats.items())),
        )

    # --- the properties --------------------------------------------------------------------------

    def conductor(self) -> _Candidate | None:
        holder = self.lease[1]
        node = self.nodes.get(holder) if holder is not None else None
        return node if isinstance(node, _Candidate) and node.up and node.core else None

    def converged(self) -> bool:
        return not self.why()

    def why(self) -> list[str]:
        """What keeps the run from having converged (nothing: it has)."""
        c = self.conductor()
        if c is None or c.core is None:
            return [f"no legitimate conductor up (lease {self.lease[1:]})"]
        problems = [
            f"{node.path} does not see the conductor yet"
            for node in self.nodes.values()
            if node.up and node.lease[0] != self.lease[0] and node is not self.forger
        ]
        want = state_digest(c.core.desired)
        for other in self.candidates:
            if other.core is None:
                problems.append(f"{other.path} is down")
            elif state_digest(other.core.desired) != want:
                problems.append(f"{other.path} does not hold the conductor's desired state")
        for st in self.stations:
            problem = self.station_problem(c, st)
            if problem:
                problems.append(f"{st.path}: {problem}")
        return problems

    def station_problem(self, c: _Candidate, st: _Station) -> str | None:
        core = c.core
        assert core is not None
        orders = core.desired.orders_for(st.path)
        if not orders:
            return None  # not managed
        if not st.up:
            return "down"
        digest = core.desired.digest_for(st.path)
        try:
            again = st.state.with_orders(orders)
        except RolesError:
            again = None
        runs = st.state.config.digest()
        runs_it = runs == digest or (again is not None and again.config.digest() == runs)
        if runs_it:
            return None if core.in_sync(st.path) else "runs it, but the manager does not say so"
        answer = core.desired.answer_for(st.path)
        if answer is None or answer.applied or answer.digest != digest:
            return "neither runs its desired configuration nor has a refusal reported"
        if not is_roles_error(answer.error_type or ""):
            return f"the reported refusal {answer.error_type} is not a typed roles error"
        now_says = self.would_refuse(c, st, orders)
        if now_says != answer.error_type:
            return f"reported {answer.error_type}, the station would now say {now_says}"
        return None

    def would_refuse(self, c: _Candidate, st: _Station, orders: Sequence[Order]) -> str | None:
        _, conductor, known = st.lease
        try:
            check_relay(self.authority, station=st.path, sender=c.path, term=c.mesh.term,
                        conductor=conductor, known_term=known)  # fmt: skip
            check_relayed_orders(self.authority, station=st.path, orders=orders)
            st.policy.validate(st.state.with_orders(orders).config)
        except ChangeRefused as refused:
            return refused.error.wire_name
        except RolesError as exc:
            return exc.wire_name
        return None

    def final_checks(self) -> None:
        forged = {o.digest() for o in self.forged}
        for c in self.candidates:
            for state, what in ((c.core.desired if c.core else None, "holds"), (c.saved, "saved")):
                if state is None:
                    continue
                for path, chain in state.stations:
                    if any(o.digest() in forged or not self.authority.accepts(o) for o in chain):
                        self.fail(f"{c.path} {what} a forged order for {path}")
        conductor = self.conductor()
        if conductor is not None and conductor.core is not None:
            desired = conductor.core.desired
            for order in self.acknowledged:
                chain = desired.chain_for(order.station)
                if order not in chain and order in merge_chains(chain, (order,)):
                    self.count("acknowledged orders lost")


def run_manager_seed(seed: int, config: ManagerSimConfig | None = None) -> SeedResult:
    """Run one seed (see the module docstring)."""
    return _Sim(seed, config or ManagerSimConfig()).run()


def summarize(results: Sequence[SeedResult]) -> dict[str, Any]:
    """Seeds, failures, and the time to converge after the faults (p50, p99 nearest-rank,
    max; virtual seconds), with the counters summed over the seeds."""
    times = sorted(r.converged_after for r in results if r.converged_after is not None)

    def quantile(q: float) -> float | None:
        return percentile(times, q) if times else None

    totals: dict[str, int] = {}
    for r in results:
        for key, value in r.stats.items():
            totals[key] = totals.get(key, 0) + value
    return {
        "seeds": len(results),
        "failures": sum(not r.ok for r in results),
        "failed_seeds": [r.seed for r in results if not r.ok],
        "converge_p50": quantile(50),
        "converge_p99": quantile(99),
        "converge_max": times[-1] if times else None,
        "totals": dict(sorted(totals.items())),
    }
