"""The election's randomized harness: election cores alone on the project's simulator, with
membership modelled.

Many nodes in 2-4 orchestras, each an :class:`~mesh._election.ElectionCore` (through
:class:`mesh._simpeers.ElectionPeer`) on a slightly skewed local clock, run by
:class:`mesh._sim.Simulator`: its link model loses, delays, duplicates and reorders the gossip
(the weather changes during the faults), its crashes, restarts, stalls and partitions are the
faults. Membership is modelled only as each node's (delayed, sometimes wrong) view of who is
alive, fed to its core; the whole-node runs (:mod:`mesh._chaos`) drive the real membership core.
After the faults, a connected, loss-free tail in which every node must come to see the same
single conductor and supernodes. A seed reproduces a run exactly.
``tests/test_election_core.py`` runs 500 seeds; ``bench/election.py`` 10,000.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import attrs

from mesh._clock import SkewedClock
from mesh._election import (
    CONDUCTOR,
    Candidate,
    ElectionCore,
    ElectionEvent,
    SteppedDown,
    supernode_post,
)
from mesh._membership import SendDatagram
from mesh._profiles import get_profile
from mesh._sim import LinkModel, NodeCall, SimNode, Simulator
from mesh._simpeers import ElectionPeer
from mesh._wire import Gossip, Lease, MemberRecord

__all__ = [
    "AGREEMENT_BOUND",
    "SCENARIOS",
    "TAIL",
    "ElectionRun",
    "ElectionSim",
    "run_seeds",
    "simulate_election",
]


@attrs.frozen
class ElectionRun:
    """One run of :func:`simulate_election`.

    ``agreement_after`` is the time from the end of the faults (network whole, loss-free) until
    every live node saw the same single conductor and supernodes for good (None: never);
    ``views_settled_after`` is when the last membership view changed (the election's own share
    is the difference).
    """

    seed: int
    scenario: str
    nodes: int
    orchestras: int
    conductor_candidates_alive: int
    faults_end: float
    agreement_after: float | None
    views_settled_after: float
    claims: int
    step_downs: int
    messages: int
    failure: str

    @property
    def ok(self) -> bool:
        """Whether the run ended in agreement."""
        return not self.failure


TAIL = 30.0
"""Seconds the loss-free, connected tail runs after the faults end."""

AGREEMENT_BOUND = 8.0
"""Bound on :attr:`ElectionRun.agreement_after`: membership views settle within 3 s of the end
of the faults (detection, rediscovery and false suspicions all end by then), the best
candidate claims 0.3 s later (plus one settle second for a node that just restarted), and a
record lost during the faults is repaired by the next push-pull (every 1-2 s)."""

FANOUT = 3
"""Peers each gossip message goes to (memberlist's default gossip fanout)."""
GOSSIP_ROUNDS = 3
GOSSIP_INTERVAL = 0.2
"""Each update is gossiped in this many rounds this far apart (memberlist retransmits an
update 4 * log10(N + 1) times, three per round, every 200 ms)."""

LINK = LinkModel(delay=0.001, jitter=0.049)
"""Every datagram: 1-50 ms one way, uniform (the fair weather)."""
SLOW_S = 1.5
"""A slow datagram (an outlier, during the faults) is late by up to this much more."""

MAX_STEPS = 200_000
"""Steps after which a run counts as not quiescing (a few thousand is normal)."""


class ElectionSim:
    """One run: the simulator, the nodes' membership views and the faults (see the module
    docstring). *seed* draws everything; *n* nodes in *orchestras* orchestras."""

    def __init__(self, seed: int, n: int, orchestras: int) -> None:
        self.rng = rng = random.Random(seed)
        self.sim = Simulator(rng.getrandbits(64), get_profile("lan"), LINK, on_event=self._event)
        self.faults_end = 0.0
        self.ids = sorted(f"{rng.getrandbits(128):032x}" for _ in range(n))
        rng.shuffle(self.ids)
        names = [f"o{k}" for k in range(orchestras)]
        self.orch = {
            i: names[k] if k < orchestras else rng.choice(names) for k, i in enumerate(self.ids)
        }
        self.sflag = {i: rng.random() < 0.3 for i in self.ids}
        self.cflag = {i: rng.random() < 0.3 for i in self.ids}
        if rng.random() < 0.9 and not any(self.cflag.values()):
            for i in rng.sample(self.ids, 2):
                self.cflag[i] = True
        self.clocks = {i: SkewedClock(rng.uniform(-0.01, 0.01)) for i in self.ids}
        self.records: dict[str, MemberRecord] = {}
        self.nodes: dict[str, SimNode] = {}
        """Each node's current run in the simulator (crashed ones stay, down)."""
        self.joined: dict[str, float] = {}
        self.side: dict[str, int] = dict.fromkeys(self.ids, 0)
        self.views: dict[str, dict[str, bool]] = {i: {} for i in self.ids}
        self.cores: dict[str, ElectionCore] = {}
        self.step_downs = 0
        self.messages = 0
        self.last_view_change = 0.0
        self.changed = False  # some node's view of a holder changed, or a node came or went
        self._steps = 0
        self._watch_from = float("inf")
        self._instant = float("-inf")
        self._why: str | None = None
        self._agreed_since: float | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run *action* at virtual time *when*."""
        self.sim.schedule(when - self.sim.now, action)

    def up(self, i: str) -> bool:
        node = self.nodes.get(i)
        return node is not None and node.up

    def reachable(self, i: str, j: str) -> bool:
        return self.up(i) and self.up(j) and self.side[i] == self.side[j]

    def candidate(self, j: str, alive: bool) -> Candidate:
        return Candidate(j, self.orch[j], self.sflag[j], self.cflag[j], self.joined[j], alive)

    def _event(self, node: SimNode, event: ElectionEvent, now: float) -> None:
        if isinstance(event, SteppedDown):
            self.step_downs += 1
        self.changed = True

    def broadcast(
        self, src: str, records: list[Lease], rounds: int = GOSSIP_ROUNDS
    ) -> list[SendDatagram]:
        """Gossip: to FANOUT peers *src* believes alive, now and in the next rounds (receivers
        pass news on in turn). The datagrams to send now (the network loses, delays and
        partitions them)."""
        if rounds > 1:
            self.sim.call_node(
                self.nodes[src], GOSSIP_INTERVAL, self._regossip(src, records, rounds - 1)
            )
        peers = [j for j, alive in self.views[src].items() if alive and j != src]
        chosen = self.rng.sample(peers, min(FANOUT, len(peers)))
        self.messages += len(chosen)
        body = Gossip(tuple(records))
        return [SendDatagram(self.records[j].address, body, j) for j in chosen]

    def gossip(self, src: str, records: list[Lease], rounds: int = GOSSIP_ROUNDS) -> None:
        """:meth:`broadcast`, sent from outside the core's outputs."""
        for out in self.broadcast(src, records, rounds):
            self.sim.send(self.nodes[src], out)

    def _regossip(self, src: str, records: list[Lease], rounds: int) -> NodeCall:
        return lambda now: self.gossip(src, records, rounds)

    def set_view(self, i: str, j: str, alive: bool, now: float) -> None:
        """Node *i* (at its local time *now*) sees *j* alive or not."""
        if not self.up(i) or self.views[i].get(j) == alive:
            return
        self.views[i][j] = alive
        self.last_view_change = self.sim.now
        self.cores[i].update_member(now, self.candidate(j, alive))

    def observe(self, i: str, j: str, lo: float, hi: float) -> None:
        """Observer *i* brings its view of *j* up to date after a delay in [lo, hi] (late if
        it is stalled then)."""
        self.sim.call_node(self.nodes[i], self.rng.uniform(lo, hi), self._view(i, j))

    def _view(self, i: str, j: str) -> NodeCall:
        return lambda now: self.set_view(i, j, self.reachable(i, j), now)

    def pushpull(self, i: str, j: str) -> None:
        """*i* and *j* exchange every lease record they keep (once neither is stalled)."""
        now = self.sim.now
        until = max(self.nodes[i].stalled_until, self.nodes[j].stalled_until)
        if until > now:
            self.at(until, lambda: self.pushpull(i, j))
            return
        if self.reachable(i, j):
            self.messages += 2
            self.sim.send(self.nodes[i], SendDatagram(self.records[j].address, self._all(i), j))
            self.sim.send(self.nodes[j], SendDatagram(self.records[i].address, self._all(j), i))

    def _all(self, i: str) -> Gossip:
        return Gossip(tuple(self.cores[i].leases()))

    def _antientropy(self, i: str) -> NodeCall:
        def action(now: float) -> None:
            peers = [j for j, alive in self.views[i].items() if alive and j != i]
            if peers:
                self.pushpull(i, self.rng.choice(peers))
            self.sim.call_node(self.nodes[i], self.rng.uniform(1.0, 2.0), action)

        return action

    # -- faults -----------------------------------------------------------------------------

    def start(self, i: str) -> None:
        """Start *i* (again, with a fresh core): it learns everyone, everyone learns it."""
        now = self.clocks[i](self.sim.now)
        self.joined[i] = now
        self.views[i] = {i: True}
        core = self.cores[i] = ElectionCore(i, now)
        record = self.records.get(i)
        if record is None:
            record = attrs.evolve(self.sim.new_record("n", self.orch[i]), node_id=i)
        else:
            record = attrs.evolve(record, incarnation=record.incarnation + 1)
        self.records[i] = record
        peer = ElectionPeer(core, lambda leases: self.broadcast(i, leases))
        peer.incarnation = record.incarnation
        node = self.nodes[i] = self.sim.add_node(record, core=peer, clock=self.clocks[i])
        self.sim.call_node(
            node, 0.0, lambda now: core.update_members(now, [self.candidate(i, True)])
        )
        others = [j for j in self.ids if j != i and self.up(j)]
        for j in others:
            self.observe(i, j, 0.02, 0.3)  # the join push-pull tells i of everyone
            self.observe(j, i, 0.02, 0.5)  # gossip tells everyone of i
        if others:
            delay, peer_id = self.rng.uniform(0.005, 0.05), self.rng.choice(others)
            self.at(self.sim.now + delay, lambda: self.pushpull(i, peer_id))
        self.sim.call_node(node, self.rng.uniform(1.0, 2.0), self._antientropy(i))
        self.changed = True

    def stop(self, i: str, graceful: bool) -> None:
        """*i* crashes, or leaves gracefully: then it hands its posts off, and its leave
        announcement (seen by all within 5-200 ms) carries the handoff records."""
        node = self.nodes[i]
        handoff = self.cores[i].handoff(node.local(self.sim.now)) if graceful else []
        if handoff:
            self.gossip(i, handoff)
        self.sim.crash(node)
        self.views[i] = {}
        self.changed = True
        for j in self.ids:
            if j != i and self.up(j):
                if graceful:
                    delay = self.rng.uniform(0.005, 0.2)
                    self.sim.call_node(self.nodes[j], delay, self._leave_seen(j, i, handoff))
                else:
                    self.observe(j, i, 1.0, 3.0)

    def _leave_seen(self, i: str, j: str, records: list[Lease]) -> NodeCall:
        def action(now: float) -> None:
            if self.rng.random() < 0.5:  # either order within the datagram
                self.set_view(i, j, self.reachable(i, j), now)
            if self.side[i] == self.side[j]:
                for lease in records:
                    self.cores[i].handle_lease(now, lease)
            self.set_view(i, j, self.reachable(i, j), now)

        return action

    def _suspect(self, i: str, j: str) -> NodeCall:
        def action(now: float) -> None:
            if self.up(j):
                self.set_view(i, j, False, now)
                self.observe(i, j, 0.3, 2.0)  # refuted: alive again

        return action

    def holder_of(self, post: str) -> str | None:
        votes = [core.holder(post) for i, core in self.cores.items() if self.up(i)]
        held = [v for v in votes if v is not None]
        return max(set(held), key=held.count) if held else None

    def pick_victim(self) -> str | None:
        up = [i for i in self.ids if self.up(i)]
        if len(up) <= 2:
            return None
        if self.rng.random() < 0.5:  # hit a holder: that is what the election must survive
            holder = self.holder_of(
                CONDUCTOR if self.rng.random() < 0.6 else supernode_post(self.orch[up[0]])
            )
            if holder is not None and self.up(holder):
                return holder
        return self.rng.choice(up)

    def crash(self) -> None:
        victim = self.pick_victim()
        if victim is not None:
            self.stop(victim, graceful=False)

    def leave(self) -> None:
        victim = self.pick_victim()
        if victim is not None:
            self.stop(victim, graceful=True)

    def restart(self) -> None:
        down = [i for i in self.ids if not self.up(i) and i in self.joined]
        if down:
            self.start(self.rng.choice(down))

    def partition(self) -> None:
        groups = self.rng.randint(2, 3)
        old = dict(self.side)
        for i in self.ids:
            self.side[i] = self.rng.randrange(groups)
        self.sim.partition(
            *(
                [self.nodes[i] for i in self.ids if i in self.nodes and self.side[i] == g]
                for g in range(groups)
            )
        )
        self.resides(old, (1.0, 3.0), (0.1, 2.0))

    def heal(self) -> None:
        old = dict(self.side)
        self.side = dict.fromkeys(self.ids, 0)
        self.sim.heal()
        self.resides(old, (1.0, 3.0), (0.1, 2.0))

    def suspicions(self) -> None:
        up = [i for i in self.ids if self.up(i)]
        for _ in range(self.rng.randint(1, 4)):
            i, j = self.rng.sample(up, 2) if len(up) >= 2 else (up[0], up[0])
            if i != j:
                self.sim.call_node(self.nodes[i], 0.0, self._suspect(i, j))

    def weather(self, loss: float, slow: float, duplicate: float) -> None:
        """Up to *loss* of datagrams lost, *slow* of them late by up to :data:`SLOW_S` more
        (reordering), *duplicate* of them twice."""
        self.sim.link = attrs.evolve(
            LINK, loss=loss, outlier=slow, outlier_jitter=SLOW_S, duplicate=duplicate
        )

    def stall(self) -> None:
        up = [i for i in self.ids if self.up(i)]
        if not up:
            return
        i = self.rng.choice(up)
        now = self.sim.now
        until = min(now + self.rng.uniform(0.5, 3.0), self.faults_end)
        self.sim.stall(self.nodes[i], until - now)
        if until - now > 1.0:  # long enough for some peers to suspect it
            for j in self.rng.sample(up, k=len(up) // 2):
                if j != i:
                    when = self.rng.uniform(now + 1.0, until)
                    self.sim.call_node(self.nodes[j], when - now, self._suspect(j, i))

    def failover(self, graceful: bool) -> None:
        """The conductor (or, without candidates, a supernode) crashes or leaves."""
        victim = self.holder_of(CONDUCTOR) or self.holder_of(supernode_post(self.orch[self.ids[0]]))
        assert victim is not None
        if graceful:
            self.stop(victim, graceful=True)
            return
        self.sim.crash(self.nodes[victim])
        self.views[victim] = {}
        self.changed = True
        detect = self.rng.uniform(1.5, 2.5)  # membership's decision spreads from one place
        for j in self.ids:
            if j != victim and self.up(j):
                delay = detect + self.rng.uniform(0.0, 0.3)
                self.sim.call_node(self.nodes[j], delay, self._view(j, victim))

    def resides(
        self, old: dict[str, int], lose: tuple[float, float], regain: tuple[float, float]
    ) -> None:
        """After a partition change, views follow: lost peers after failure detection,
        regained ones after rediscovery."""
        for i in self.ids:
            for j in self.ids:
                if (
                    i != j
                    and self.up(i)
                    and self.up(j)
                    and (old[i] == old[j]) != (self.side[i] == self.side[j])
                ):
                    self.observe(i, j, *(regain if self.side[i] == self.side[j] else lose))
        self.changed = True

    # -- agreement --------------------------------------------------------------------------

    def agreement(self) -> str:
        """ "" if every live node sees the same single conductor and supernodes, else why not."""
        up = [i for i in self.ids if self.up(i)]
        cores = [self.cores[i] for i in up]
        conductors = {c.conductor() for c in cores}
        candidates = [i for i in up if self.cflag[i]]
        if len(conductors) != 1:
            return f"conductors seen: {sorted(map(str, conductors))}"
        (conductor,) = conductors
        if candidates and (conductor is None or conductor not in candidates):
            return f"conductor {conductor} is not a live candidate"
        if not candidates and conductor is not None:
            return "a conductor without candidates"
        holding = [i for i in up if self.cores[i].holds(CONDUCTOR)]
        if holding != ([conductor] if conductor else []):
            return f"nodes that believe they conduct: {holding}"
        for orchestra in sorted({self.orch[i] for i in up}):
            post = supernode_post(orchestra)
            supers = {c.holder(post) for c in cores}
            if len(supers) != 1:
                return f"{post} seen as {sorted(map(str, supers))}"
            (sn,) = supers
            if sn is None or not self.up(sn) or self.orch[sn] != orchestra:
                return f"{post} held by {sn}"
            if [i for i in up if self.cores[i].holds(post)] != [sn]:
                return f"more than one node believes it holds {post}"
        return ""

    def run(self, until: float, watch_from: float) -> tuple[float | None, str]:
        """Run to *until*; from *watch_from* on, track when agreement last began (judged at
        the end of every instant, all its effects applied)."""
        self._watch_from = watch_from
        if self.sim.run_until(until, stop=self._after_step):
            return None, "the simulation did not quiesce"
        self._end_of_instant()
        self._instant = until
        self._why = None
        self._end_of_instant()
        why = self.agreement()
        return (self._agreed_since, "") if not why else (None, why)

    def _after_step(self) -> bool:
        self._steps += 1
        now = self.sim.now
        if now >= self._watch_from:
            if now > self._instant:
                self._end_of_instant()  # the instant before ended with the step before
                self._instant = now
            if self.changed or self._why is None:
                self.changed = False
                self._why = self.agreement()
        return self._steps > MAX_STEPS

    def _end_of_instant(self) -> None:
        if self._instant < self._watch_from:
            return
        if self._why is None:
            self._why = self.agreement()
        if self._why:
            self._agreed_since = None
        elif self._agreed_since is None:
            self._agreed_since = self._instant


SCENARIOS = ("chaos", "chaos-large", "crash", "leave")

_FAULTS = ("crash", "crash", "leave", "restart", "restart", "partition", "suspicions", "stall")


def simulate_election(seed: int, scenario: str = "chaos") -> ElectionRun:
    """Run one seeded simulation and return what happened (never raises on disagreement).

    ``"chaos"``: 5-14 nodes in 2-4 orchestras start over 2 s, then for 5-25 s the network loses
    up to 30% of messages, duplicates up to 10% and delays up to 20% by up to 1.5 s, while nodes
    crash, restart, leave, stall for up to 3 s, views wrongly suspect live nodes, and partitions
    split and heal; then the network is whole and loss-free. ``"chaos-large"``: the same with
    30-60 nodes.
    ``"crash"`` / ``"leave"``: a quiet, loss-free cluster whose conductor crashes (failure
    detected after 1.5-2.5 s, each observer 0-0.3 s apart) or leaves with a handoff at t=10;
    ``agreement_after`` is then the failover time.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    rng = random.Random(seed)
    orchestras = rng.randint(2, 4)
    if scenario == "chaos-large":
        n = rng.randint(30, 60)
    else:
        n = rng.randint(max(5, orchestras + 1), 14)
    es = ElectionSim(rng.getrandbits(64), n, orchestras)
    for i in es.ids:
        es.at(es.rng.uniform(0.0, 2.0), _starter(es, i))
    if scenario.startswith("chaos"):
        faults_end = es.faults_end = es.rng.uniform(5.0, 25.0)
        r = es.rng
        weather = (r.uniform(0.0, 0.3), r.uniform(0.0, 0.2), r.uniform(0.0, 0.1))
        es.at(2.0, lambda: es.weather(*weather))
        for _ in range(r.randint(2, 10)):
            kind = r.choice(_FAULTS)
            es.at(r.uniform(2.0, faults_end), getattr(es, kind))
        if r.random() < 0.5:
            es.at(r.uniform(2.0, faults_end), es.partition)
        es.at(faults_end, es.heal)
        es.at(faults_end, lambda: es.weather(0.0, 0.0, 0.0))
    else:
        faults_end = 10.0
        es.at(faults_end, lambda: es.failover(scenario == "leave"))
    watch_from = faults_end

    agreed_at, failure = es.run(faults_end + TAIL, watch_from)
    return ElectionRun(
        seed=seed,
        scenario=scenario,
        nodes=n,
        orchestras=orchestras,
        conductor_candidates_alive=sum(1 for i in es.ids if es.up(i) and es.cflag[i]),
        faults_end=faults_end,
        agreement_after=None if agreed_at is None else agreed_at - faults_end,
        views_settled_after=max(0.0, es.last_view_change - faults_end),
        claims=sum(c.statistics().claims for c in es.cores.values()),
        step_downs=es.step_downs,
        messages=es.messages,
        failure=failure,
    )


def _starter(es: ElectionSim, i: str) -> Callable[[], None]:
    return lambda: es.start(i)


def run_seeds(
    seeds: Iterable[int],
    scenario: str = "chaos",
    progress: Callable[[ElectionRun], None] | None = None,
) -> list[ElectionRun]:
    """:func:`simulate_election` over *seeds* (for the test and ``bench/election.py``)."""
    results = []
    for seed in seeds:
        result = simulate_election(seed, scenario)
        if progress is not None:
            progress(result)
        results.append(result)
    return results
