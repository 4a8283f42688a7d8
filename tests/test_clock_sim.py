"""Clock properties in a small deterministic simulation: the clock's harness
(:mod:`mesh._clocksim`: clock cores alone on the project's simulator, nodes with skewed,
drifting local clocks, a network that delays (jittered, asymmetric, with outliers) and drops
datagrams). A seed reproduces a run exactly. ``bench/clock_sim.py`` runs the same harness over
more seeds and prints the agreement table.

Properties, checked at every input a node handles and on a fine grid of instants:

- federation time never decreases on any node;
- once a node says it is synced, its federation time is within its ``error_bound`` of the
  reference's (at the same true instant);
- after warm-up, the agreement is far inside the DESIGN.md targets.
"""

from __future__ import annotations

import pytest

from mesh._clock import ClockConfig
from mesh._clocksim import (
    LAN,
    LOOPBACK,
    LOOPBACK_UNIFORM,
    SOAK,
    ClockSim,
    partition_run,
    percentile,
    random_run,
)

# ---------------------------------------------------------------------------------------------
# The properties


@pytest.mark.slow
def test_bound_holds_and_time_never_decreases_over_200_seeds() -> None:
    diffs: list[float] = []
    for seed in range(200):
        sim, r = random_run(seed, LAN, 30.0)
        assert r.violations == [], (seed, r.violations[:3])
        assert r.decreases == 0, seed
        assert r.checks > 0
        followers = {node.node_id for node in sim.nodes[1:]}
        assert set(r.synced_at) == followers, seed  # everyone synced ...
        assert max(r.synced_at.values()) <= 2.0, (seed, r.synced_at)  # ... within 2 s
        diffs += r.diffs
    # DESIGN.md: p99 <= 1 ms required, even on this jittery, lossy LAN.
    assert percentile(diffs, 0.99) <= 1e-3


def test_reference_changes_keep_bound_and_monotonic_time() -> None:
    for seed in range(100):
        sim, r = random_run(seed, LAN, 40.0, reference_change=True)
        assert sim.reference != 0
        assert r.violations == [], (seed, r.violations[:3])
        assert r.decreases == 0, seed
        for i, node in enumerate(sim.nodes):
            snap = r.snapshots[node.node_id]
            assert snap.reference == f"n{sim.reference}"
            assert snap.synced and snap.is_reference == (i == sim.reference)


def test_agreement_at_loopback_delays_meets_the_aim() -> None:
    diffs: list[float] = []
    harsh: list[float] = []
    for seed in range(40):
        _, r = random_run(seed, LOOPBACK, 30.0)
        assert r.violations == [] and r.decreases == 0
        diffs += r.diffs
        _, r = random_run(seed, LOOPBACK_UNIFORM, 30.0)
        assert r.violations == [] and r.decreases == 0
        harsh += r.diffs
    assert percentile(diffs, 0.99) <= 50e-6  # the aim (Ableton Link: 25 us p99 without skew)
    assert percentile(harsh, 0.99) <= 200e-6


def test_a_seed_reproduces_a_run_exactly() -> None:
    a = random_run(11, LAN, 10.0)[1]
    b = random_run(11, LAN, 10.0)[1]
    assert a.diffs == b.diffs and a.snapshots == b.snapshots
    assert random_run(12, LAN, 10.0)[1].snapshots != a.snapshots


def test_bound_holds_along_a_chain_of_references() -> None:
    # n1 follows the root n0, n2 follows n1, n3 follows n2 (a supernode following the registry,
    # its orchestra following it): each bound includes its reference's, so it holds to the root.
    loopback: list[float] = []
    for seed in range(60):
        sim = ClockSim(seed, nodes=4, link=(LAN, LOOPBACK_UNIFORM)[seed % 2])
        for i in (2, 3):
            sim.follow(i, i - 1)
        r = sim.run(30.0, check_every=0.1, warmup=15.0)
        assert r.violations == [] and r.decreases == 0, (seed, r.violations[:3])
        assert all(s.synced for s in r.snapshots.values()), seed
        if seed % 2:
            loopback += r.diffs
    # Errors add up along the chain (on the jittery LAN, three hops reach a few ms: see
    # docs/clock.md); on loopback it stays well inside the 1 ms requirement.
    assert percentile(loopback, 0.99) <= 300e-6


def test_agreement_on_a_jittery_lossy_network_is_within_1_ms() -> None:
    # Eight nodes, 20 ms +- 10 ms each way and 5% loss, two minutes, judged after 30 s (the
    # 512 samples of a jittery network are held after 13 s). A sample's offset is off by up
    # to half its round trip's excess over the floor: the samples nearest the floor are
    # weighted most, over a long history, the rate comes from the best sample of each second
    # over 120 s, and the poll rate stays up while the estimate is imprecise (measured p99
    # 0.47 ms; 0.95 ms with the rate fitted over the 512 samples alone, 1.6 ms with the
    # best-3-of-16 estimate).
    diffs: list[float] = []
    for seed in range(2):  # (four seeds measure p99 0.53 ms: twice the time)
        sim = ClockSim(seed, nodes=8, link=SOAK)
        r = sim.run(120.0, check_every=0.1, warmup=30.0)
        assert r.violations == [] and r.decreases == 0, (seed, r.violations[:3])
        diffs += r.diffs
    assert percentile(diffs, 0.99) <= 1e-3, percentile(diffs, 0.99)


def test_agreement_across_partitions_and_heals_on_a_jittery_lossy_network_is_within_1_ms() -> None:
    # The live soak's clock (tests/soak.py), simulated: eight nodes on the same network, a
    # random half cut off every 40 s for 15 s; the half without the reference takes one of
    # its own (its followers hand over), and all follow the first again after the heal. Each
    # synced follower is judged against its own reference. bench/clock_sim.py --scenario
    # partition (seeds 0-2) measures p99 0.62 ms over the run and 0.60 ms in the 10 s after a
    # heal; without the rate history and the stash (ClockConfig.rate_history = 0), 1.19 and
    # 1.80 ms.
    runs = [partition_run(seed, 120.0) for seed in range(2)]
    for run in runs:
        result = run.sim.result
        assert result.violations == [] and result.decreases == 0, result.violations[:3]
    every = [d for run in runs for d in run.whole]
    healed = [d for run in runs for d in run.healed]
    assert percentile(every, 0.99) <= 1e-3, percentile(every, 0.99)
    assert percentile(healed, 0.99) <= 1e-3, percentile(healed, 0.99)


def _cut_off_the_reference(seed: int, config: ClockConfig | None) -> tuple[float, float, float]:
    """Three nodes on the soak's network. At 60 s node 0 (the reference) is cut off and node
    1 becomes the reference of nodes 1 and 2 (node 2 hands over); at 75 s the cut heals and
    both follow node 0 again. Returns how far node 1's time moved from node 0's while it was
    cut off, how far apart the two were at the heal, and the most in the 7 s after it."""
    sim = ClockSim(seed, nodes=3, link=SOAK, config=config)
    seen: dict[str, float] = {}
    after: list[float] = [0.0]

    def apart() -> float:
        first, second = sim.nodes[0], sim.nodes[1]
        now = sim.sim.now
        return second.core.federation_time(second.clock(now)) - first.core.federation_time(
            first.clock(now)
        )

    def cut() -> None:
        seen["cut"] = apart()
        sim.sim.partition([sim.nodes[0].sim_node], [sim.nodes[1].sim_node, sim.nodes[2].sim_node])
        sim.set_references([1, 2], 1, handover=True)

    def heal() -> None:
        seen["heal"] = apart()
        sim.sim.heal()
        sim.set_references([1, 2], 0, handover=True)

    def watch(s: ClockSim) -> None:
        if s.sim.now > 75.0:
            after.append(abs(apart()))

    sim.sim.schedule(60.0, cut)
    sim.sim.schedule(75.0, heal)
    sim.run(82.0, check_every=0.05, warmup=200.0, on_check=watch)
    return abs(seen["heal"] - seen["cut"]), abs(seen["heal"]), max(after)


def test_a_sides_own_reference_keeps_the_rate_it_learned_and_at_the_heal_what_it_knew() -> None:
    # Node 1 followed node 0 for 60 s on the soak's network, then keeps time for its side of a
    # 15 s partition: its time runs on its rate. Fitted over the 512 samples held (13 s) that
    # rate is off by tens of ppm; over the best sample of each second since it followed node
    # 0 (ClockConfig.rate_history), by a few. At the heal it follows node 0 again: with the
    # samples it held of node 0 when it left it (stashed), its estimate goes on from there and
    # its time stays near where it stood; a new estimate from the first few samples of this
    # network is off by milliseconds, and the clock slews towards it.
    seeds = range(4)
    kept = [_cut_off_the_reference(seed, None) for seed in seeds]
    short = [_cut_off_the_reference(seed, ClockConfig(rate_history=0)) for seed in seeds]
    drift, drift_short = [k[0] for k in kept], [k[0] for k in short]
    assert max(drift) <= 250e-6, drift  # (measured 55-166 us; 468-576 us without)
    assert max(drift_short) > 2 * max(drift), (drift_short, drift)
    # (measured at most 121-246 us beyond where it stood; without, up to 1,189 us)
    for _, at_heal, worst in kept:
        assert worst <= at_heal + 350e-6, (at_heal, worst)
    assert any(worst > at_heal + 350e-6 for _, at_heal, worst in short), short
