"""Simulator scenarios and the figures they report (``stagemesh sim`` and ``bench/``).

Each scenario starts a converged group of N nodes on the LAN profile, lets it settle, injects
one kind of event and measures:

- ``join``: a new node joins through one seed; ``join_all_s`` is the time until every node
  knows it and it knows every node.
- ``crash``: one node crashes; ``dead_all_p50_s`` / ``dead_all_p99_s`` are the p50 and p99 over
  the other nodes of the time until each declares it dead.
- ``leave``: one node leaves gracefully; the same fields hold the time until each sees it left.
- ``partition``: the group splits in two halves for ``partition_s`` seconds and heals;
  ``join_all_s`` is the time from the heal until every node sees every other one alive.
- ``churn``: random crashes, restarts, joins and leaves for ``churn_s`` seconds; ``join_all_s``
  is the time from the end of the churn until every running node sees exactly the running nodes.
- ``soak``: nothing is injected but loss and (optionally) 1 s process stalls, for ``duration_s``;
  the figure is ``false_deaths``.

``false_deaths`` counts the running nodes whose current incarnation was declared dead by
anyone (across a partition, deaths are expected and not counted). Messages and bytes per node per
second are measured over the whole run after the settling time, counting IP and UDP headers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs

from mesh._membership import MemberEvent, Membership
from mesh._profiles import Profile, get_profile
from mesh._sim import LinkModel, SimNode, Simulator

__all__ = ["SCENARIOS", "ScenarioResult", "percentile", "run_scenario"]

SCENARIOS = ("join", "crash", "leave", "partition", "churn", "soak")
SETTLE_S = 3.0


@attrs.frozen
class ScenarioResult:
    """The figures of one run; :meth:`as_dict` gives exactly the keys ``--json`` prints."""

    scenario: str
    nodes: int
    seed: int
    loss: float
    join_all_s: float | None
    dead_all_p50_s: float | None
    dead_all_p99_s: float | None
    false_deaths: int
    msgs_per_node_s: float
    bytes_per_node_s: float
    trace_hash: str
    wall_s: float
    sim_s: float
    converged: bool

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of ``stagemesh sim --json`` (without the ``converged`` flag)."""
        doc = attrs.asdict(self)
        del doc["converged"]
        return doc


def percentile(values: list[float], q: float) -> float:
    """The *q*-th percentile (0-100) of *values*, nearest-rank."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class _Watch:
    """Collects the events the scenarios measure."""

    def __init__(self) -> None:
        self.sim: Simulator | None = None
        self.first: dict[tuple[str, str], dict[str, float]] = {}
        self.false_deaths: set[str] = set()
        self.expected_dead: set[str] = set()
        self.watching: set[tuple[str, str]] = set()

    def __call__(self, node: SimNode, event: Any, now: float) -> None:
        if type(event) is not MemberEvent:
            return
        member = event.member
        if event.kind == "dead" and member.node_id not in self.expected_dead:
            assert self.sim is not None
            victim = self.sim.nodes.get(member.address)
            if (
                victim is not None
                and victim.up
                and victim.node_id == member.node_id
                and victim.core.incarnation == member.incarnation
                and self.sim.reachable(node.address, victim.address)
            ):
                self.false_deaths.add(member.node_id)
        key = (event.kind, member.node_id)
        if key in self.watching:
            self.first.setdefault(key, {}).setdefault(node.node_id, now)


def _knows_exactly(node: SimNode, ids: set[str]) -> bool:
    core = node.core
    assert isinstance(core, Membership)
    live = {m.node_id for m in core.members() if m.status == "alive"}
    return live == ids


def _all_converged(sim: Simulator) -> bool:
    up = sim.up_nodes()
    ids = {n.node_id for n in up}
    return all(_knows_exactly(n, ids) for n in up)


def _poll_until(
    sim: Simulator, limit: float, check: Callable[[], bool], every: float = 0.05
) -> bool:
    while sim.now < limit:
        sim.run_until(min(limit, sim.now + every))
        if check():
            return True
    return False


def run_scenario(
    scenario: str,
    nodes: int,
    seed: int = 1,
    loss: float = 0.0,
    *,
    profile: Profile | None = None,
    link: LinkModel | None = None,
    stall_every: float = 0.0,
    stall_s: float = 1.0,
    duration_s: float = 3600.0,
    partition_s: float = 20.0,
    churn_s: float = 60.0,
    timeout_s: float = 120.0,
) -> ScenarioResult:
    """Run one scenario (see the module docstring) and return its figures.

    *loss* is the datagram loss of a plain link; *link* a whole link model instead (loss,
    jitter, duplicates...). The result reports the loss of the link that was used. Raises
    ``ValueError`` for an unknown scenario, fewer than 2 nodes, or a *loss* that *link*
    contradicts.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if nodes < 2:
        raise ValueError("a scenario needs at least 2 nodes")
    started = time.perf_counter()
    watch = _Watch()
    if link is None:
        link = LinkModel(loss=loss)
    elif loss and loss != link.loss:
        raise ValueError(f"loss={loss} and link.loss={link.loss} disagree; give one of them")
    sim = Simulator(seed, profile or get_profile("lan"), link, on_event=watch)
    watch.sim = sim
    group = sim.converged_group(nodes)
    rng = sim.rng
    if stall_every > 0:
        _schedule_stalls(sim, stall_every, stall_s)
    sim.run_until(SETTLE_S)
    base_msgs = sum(n.sent_messages for n in sim.nodes.values())
    base_bytes = sum(n.sent_bytes for n in sim.nodes.values())
    t0 = sim.now
    join_all: float | None = None
    detect: list[float] = []
    converged = True

    if scenario == "join":
        record = sim.new_record("joiner")
        watch.watching.add(("joined", record.node_id))
        seed_node = rng.choice(group)
        joiner = sim.add_node(record, seeds=[seed_node.address])

        def joined() -> bool:
            seen = watch.first.get(("joined", record.node_id), {})
            core = joiner.core
            assert isinstance(core, Membership)
            return len(seen) >= nodes and core.live_count() == nodes + 1

        converged = _poll_until(sim, t0 + timeout_s, joined, every=0.01)
        join_all = sim.now - t0 if converged else None

    elif scenario in ("crash", "leave"):
        victim = rng.choice(group)
        kind = "dead" if scenario == "crash" else "left"
        watch.watching.add((kind, victim.node_id))
        watch.expected_dead.add(victim.node_id)
        if scenario == "crash":
            sim.crash(victim)
        else:
            sim.leave(victim)

        def agreed() -> bool:
            return len(watch.first.get((kind, victim.node_id), {})) >= nodes - 1

        converged = _poll_until(sim, t0 + timeout_s, agreed, every=0.01)
        times = watch.first.get((kind, victim.node_id), {})
        detect = [t - t0 for t in times.values()]

    elif scenario == "partition":
        half = nodes // 2
        sim.partition(group[:half], group[half:])
        sim.run_until(t0 + partition_s)
        sim.heal()
        healed = sim.now
        converged = _poll_until(sim, healed + timeout_s, lambda: _all_converged(sim), every=0.1)
        join_all = sim.now - healed if converged else None

    elif scenario == "churn":
        _churn(sim, group, churn_s, watch)
        ended = sim.now
        converged = _poll_until(sim, ended + timeout_s, lambda: _all_converged(sim), every=0.1)
        join_all = sim.now - ended if converged else None

    elif scenario == "soak":
        sim.run_until(t0 + duration_s)

    elapsed = max(sim.now - t0, 1e-9)
    count = max(1, len(sim.nodes))
    msgs = sum(n.sent_messages for n in sim.nodes.values()) - base_msgs
    sent = sum(n.sent_bytes for n in sim.nodes.values()) - base_bytes
    return ScenarioResult(
        scenario=scenario,
        nodes=nodes,
        seed=seed,
        loss=link.loss,
        join_all_s=join_all,
        dead_all_p50_s=percentile(detect, 50) if detect else None,
        dead_all_p99_s=percentile(detect, 99) if detect else None,
        false_deaths=len(watch.false_deaths),
        msgs_per_node_s=msgs / count / elapsed,
        bytes_per_node_s=sent / count / elapsed,
        trace_hash=sim.trace_hash(),
        wall_s=time.perf_counter() - started,
        sim_s=sim.now,
        converged=converged,
    )


def _schedule_stalls(sim: Simulator, every: float, duration: float) -> None:
    """Each node stalls for *duration* at random times, on average once per *every* seconds."""
    rng = sim.rng

    def stall(node: SimNode) -> None:
        if node.up:
            sim.stall(node, duration)
        # The next stall starts after this one ends: stalls never merge into a longer one.
        sim.schedule(duration + rng.expovariate(1 / every), lambda: stall(node))

    for node in list(sim.nodes.values()):
        sim.schedule(rng.expovariate(1 / every), lambda node=node: stall(node))  # type: ignore[misc]


def _churn(sim: Simulator, group: list[SimNode], churn_s: float, watch: _Watch) -> None:
    """Random crashes, restarts, joins and leaves, one every ~2 s, keeping a majority up."""
    rng = sim.rng
    end = sim.now + churn_s
    crashed: list[SimNode] = []
    serial = 0
    while sim.now < end:
        sim.run_until(sim.now + rng.uniform(1.0, 3.0))
        up = sim.up_nodes()
        action = rng.choice(("crash", "restart", "join", "leave"))
        if action in ("crash", "leave") and len(up) > max(3, len(group) // 2):
            victim = rng.choice(up)
            watch.expected_dead.add(victim.node_id)
            if action == "crash":
                sim.crash(victim)
                crashed.append(victim)
            else:
                sim.leave(victim)
        elif action == "restart" and crashed:
            old = crashed.pop(rng.randrange(len(crashed)))
            fresh = sim.restart(old, [rng.choice(up).address])
            watch.expected_dead.discard(fresh.node_id)
        elif action == "join":
            serial += 1
            sim.add_node(sim.new_record(f"late{serial}"), seeds=[rng.choice(up).address])
