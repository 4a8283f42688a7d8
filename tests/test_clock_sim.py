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

from mesh._clocksim import LAN, LOOPBACK, LOOPBACK_UNIFORM, ClockSim, percentile, random_run
from mesh._sim import LinkModel

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


SOAK = LinkModel(loss=0.05, delay=10e-3, jitter=20e-3)
"""The soak's network (tests/soak.py): 20 ms +- 10 ms one way, uniform and symmetric (which
reorders), 5% loss."""


def test_agreement_on_a_jittery_lossy_network_is_within_1_ms() -> None:
    # Eight nodes, 20 ms +- 10 ms each way and 5% loss, two minutes, judged after 30 s (the
    # 512 samples of a jittery network are held after 13 s; three minutes measure the same,
    # p99 0.95 ms). A sample's offset is off by up to half its round trip's excess over the
    # floor: the samples nearest the floor are weighted most, over a long history, and the
    # poll rate stays up while the estimate is imprecise (the best-3-of-16 estimate measured
    # p99 1.6 ms).
    diffs: list[float] = []
    for seed in range(2):  # (four seeds measure p99 0.95 ms: twice the time)
        sim = ClockSim(seed, nodes=8, link=SOAK)
        r = sim.run(120.0, check_every=0.1, warmup=30.0)
        assert r.violations == [] and r.decreases == 0, (seed, r.violations[:3])
        diffs += r.diffs
    assert percentile(diffs, 0.99) <= 1e-3, percentile(diffs, 0.99)
