"""Clock lineages: when clocks that kept time apart meet, the younger steps once, forward, to
the older (mesh._lineage by hand, then whole nodes in the simulator)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from mesh._chaos import _core, _core_factory, run_chaos
from mesh._lineage import MAX_DECISION_BOUND, EpochSeal, LineageProbes, lineage_id, should_join
from mesh._nodecore import ClockStepped
from mesh._profiles import get_profile
from mesh._sim import LinkModel, SimNode, Simulator
from mesh._wire import ClockReply, Keyring


def _answer(request_t1: float, probe: int, their_fed: float) -> ClockReply:
    return ClockReply(probe, request_t1, their_fed, their_fed, 0.0, True)


def test_a_probe_measures_how_far_ahead_a_peer_is() -> None:
    probes = LineageProbes()
    request = probes.probe(now=5.0, fed=0.5, peer="a")
    assert request is not None and LineageProbes.owns(request)
    meeting = probes.handle_reply(5.002, 0.502, _answer(request.t1, request.probe, 30.501), "a")
    assert meeting is not None and meeting.peer == "a"
    assert meeting.ahead == pytest.approx(30.0) and meeting.bound == pytest.approx(0.001)
    assert probes.probe(now=5.1, fed=0.6, peer="a") is None  # not due yet
    assert probes.next_due("a") == 5.25


def test_answers_from_the_wrong_peer_or_too_late_are_ignored() -> None:
    probes = LineageProbes()
    request = probes.probe(now=5.0, fed=0.5, peer="a")
    assert request is not None
    reply = _answer(request.t1, request.probe, 30.0)
    assert probes.handle_reply(5.001, 0.501, reply, "b") is None  # not the peer asked
    assert probes.handle_reply(7.0, 2.5, reply, "a") is None  # later than the reply timeout


def test_send_time_stamp_moves_t1_and_the_federation_time_with_it() -> None:
    probes = LineageProbes()
    request = probes.probe(now=5.0, fed=0.5, peer="a")
    assert request is not None
    sent = probes.stamp(5.01, 0.51, request)
    assert sent.t1 == 5.01
    meeting = probes.handle_reply(5.011, 0.511, _answer(sent.t1, sent.probe, 30.5105), "a")
    assert meeting is not None and meeting.ahead == pytest.approx(30.0)


def test_a_clearly_older_lineage_is_joined_and_a_tie_only_with_ones_reference() -> None:
    assert should_join(30.0, 0.001, reference=False)
    assert not should_join(-30.0, 0.001, reference=True)
    assert not should_join(0.0001, 0.001, reference=False), "a reference never joins a follower"
    assert should_join(0.0001, 0.001, reference=True)
    assert should_join(-0.005, 0.001, reference=True), "as old, within the probes' errors"


@pytest.mark.parametrize("true_gap", [x / 1000 for x in range(-30, 31)])
@pytest.mark.parametrize("error", [-MAX_DECISION_BOUND, 0.0, MAX_DECISION_BOUND])
def test_of_a_node_and_its_reference_one_always_joins_the_other(
    true_gap: float, error: float
) -> None:
    # The reference's time is true_gap ahead of the node's; each measures with an error
    # within its bound.
    bound = MAX_DECISION_BOUND
    node_joins = should_join(true_gap + error, bound, reference=True)
    reference_joins = should_join(-true_gap + error, bound, reference=False)
    assert node_joins or reference_joins, "both would wait for the other forever"


def test_an_epoch_tag_fits_only_its_federation_generation_epoch_lineage_and_key() -> None:
    """What a keyed node hands the registry with its epoch (see EpochSeal): only a holder of the
    key makes one, and it fits nothing else (not another generation: the registry's changes at
    every reset); a keyring being rotated verifies by any key."""
    old, new = b"o" * 32, b"n" * 32
    gen = "5eed0f5eed0f5eed0f5eed0f"
    seal = EpochSeal("sleo", Keyring.single(old))
    tag = seal.tag(gen, 1_700_000_000.25, "abc")
    assert tag.startswith("1.") and len(tag) == 2 + 32
    assert seal.verifies(gen, 1_700_000_000.25, "abc", tag)
    rotated = EpochSeal("sleo", Keyring({1: old, 2: new}, primary=2))
    assert rotated.verifies(gen, 1_700_000_000.25, "abc", tag)  # the old key still verifies
    assert rotated.tag(gen, 1.0, "abc").startswith("2.") and not seal.verifies(
        gen, 1.0, "abc", rotated.tag(gen, 1.0, "abc")
    )  # a key the node does not hold
    others = [
        (seal, gen, 1_700_000_000.25 - 3600.0, "abc", tag),  # another epoch
        (seal, gen, 1_700_000_000.25, "abd", tag),  # another lineage
        (seal, "0" * 24, 1_700_000_000.25, "abc", tag),  # another generation (after a reset)
        (seal, "", 1_700_000_000.25, "abc", tag),
        (EpochSeal("other", Keyring.single(old)), gen, 1_700_000_000.25, "abc", tag),
        (EpochSeal("sleo", Keyring.single(new, 1)), gen, 1_700_000_000.25, "abc", tag),
    ]
    for checker, generation, epoch, lineage, given in others:
        assert not checker.verifies(generation, epoch, lineage, given)
    for bad in (None, "", "1", "1.", "x.00", "9999.00", "1." + "0" * 32, "1.\u00e9", "-1.00"):
        assert not seal.verifies(gen, 1_700_000_000.25, "abc", bad)


def test_lineage_ids_are_unique_per_run() -> None:
    node = "f" * 32
    assert lineage_id(node, 1700000000.0) != lineage_id(node, 1700000000.5)
    assert lineage_id(node, 1.0).startswith(node[:10])


# ---------------------------------------------------------------------------------------------
# Whole nodes in the simulator


class Recorder:
    """Every ClockStepped event, with the node, its lineage before and the simulated time."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, ClockStepped, float]] = []

    def __call__(self, node: SimNode, event: Any, now: float) -> None:
        if isinstance(event, ClockStepped):
            self.steps.append((node.node_id, event, now))


def start_group(
    sim: Simulator, flags: dict[str, tuple[bool, bool]], names: list[str], orchestra: str
) -> list[SimNode]:
    records = [sim.new_record(n, orchestra) for n in names]
    for i, record in enumerate(records):
        flags[record.node_id] = (False, i == 0)
    nodes = [sim.add_node(records[0])]
    nodes += [sim.add_node(r, seeds=[records[0].address]) for r in records[1:]]
    return nodes


def fed(node: SimNode, sim: Simulator) -> float:
    return _core(node).federation_time(node.local(sim.now))


def test_a_joining_node_steps_once_to_the_federations_time() -> None:
    flags: dict[str, tuple[bool, bool]] = {}
    recorder = Recorder()
    link = LinkModel(delay=0.0003, jitter=0.0004)
    sim = Simulator(3, get_profile("lan"), link, core_factory=_core_factory(flags))
    sim.on_event = recorder
    group = start_group(sim, flags, ["a0", "a1", "a2"], "a")
    sim.run_until(20.0)
    first_steps = len(recorder.steps)
    assert first_steps == 0, "nodes started together join one lineage without a step"
    assert len({_core(n).lineage_id for n in group}) == 1
    record = sim.new_record("late", "a")
    flags[record.node_id] = (False, False)
    late = sim.add_node(record, seeds=[group[0].address])
    sim.run_until(23.0)
    (node, step, _), *_ = recorder.steps[first_steps:]
    assert len(recorder.steps) == first_steps + 1 and node == late.node_id
    assert step.new_lineage == _core(group[0]).lineage_id
    assert step.old_lineage == lineage_id(late.node_id, 20.0)
    assert step.size == pytest.approx(20.0, abs=0.01)
    assert abs(fed(late, sim) - fed(group[0], sim)) < 0.001
    assert _core(late).clock_snapshot(late.local(sim.now)).synced


def test_two_sites_that_kept_time_apart_meet_and_the_younger_steps_together() -> None:
    flags: dict[str, tuple[bool, bool]] = {}
    recorder = Recorder()
    link = LinkModel(delay=0.0003, jitter=0.0004)
    sim = Simulator(5, get_profile("lan"), link, core_factory=_core_factory(flags))
    sim.on_event = recorder
    old = start_group(sim, flags, ["a0", "a1", "a2"], "a")
    sim.run_until(30.0)
    young = start_group(sim, flags, ["b0", "b1", "b2"], "b")
    sim.run_until(60.0)
    old_lineage = _core(old[0]).lineage_id
    young_lineage = _core(young[0]).lineage_id
    assert old_lineage != young_lineage
    assert {_core(n).lineage_id for n in old} == {old_lineage}
    assert {_core(n).lineage_id for n in young} == {young_lineage}
    before = len(recorder.steps)
    last = {n.node_id: fed(n, sim) for n in old + young}
    # The sites meet (a partition between them healed, or the registry introduced them).
    _core(young[1]).add_candidate(young[1].local(sim.now), old[2].address)
    sim._after_input(young[1])
    while sim.now < 70.0:
        sim.run_until(sim.now + 0.01)
        for node in old + young:
            now_fed = fed(node, sim)
            assert now_fed >= last[node.node_id], "federation time went backwards"
            last[node.node_id] = now_fed
    steps = recorder.steps[before:]
    assert {n for n, _, _ in steps} == {n.node_id for n in young}, "only the younger stepped"
    assert all(s.old_lineage == young_lineage and s.new_lineage == old_lineage for _, s, _ in steps)
    assert all(s.size == pytest.approx(30.0, abs=0.01) for _, s, _ in steps)
    # At the same moment on every node of the younger site (its announced federation time).
    assert (
        max(s.federation_time for _, s, _ in steps) - min(s.federation_time for _, s, _ in steps)
        < 0.001
    )
    assert max(t for _, _, t in steps) - min(t for _, _, t in steps) < 0.001
    everyone = old + young
    assert {_core(n).lineage_id for n in everyone} == {old_lineage}
    spread = max(fed(n, sim) for n in everyone) - min(fed(n, sim) for n in everyone)
    assert spread < 0.001


def test_a_younger_reference_steps_to_its_older_follower() -> None:
    # The follower started first (its lineage is older) but the other node is elected the
    # reference (the only conductor candidate): the reference steps, the follower never does.
    flags: dict[str, tuple[bool, bool]] = {}
    recorder = Recorder()
    link = LinkModel(delay=0.0003, jitter=0.0004)
    sim = Simulator(7, get_profile("lan"), link, core_factory=_core_factory(flags))
    sim.on_event = recorder
    elder_record = sim.new_record("elder", "a")
    flags[elder_record.node_id] = (False, False)
    elder = sim.add_node(elder_record)
    sim.run_until(10.0)
    chief_record = sim.new_record("chief", "a")
    flags[chief_record.node_id] = (False, True)
    chief = sim.add_node(chief_record, seeds=[elder.address])
    last = -math.inf
    while sim.now < 20.0:
        sim.run_until(sim.now + 0.01)
        now_fed = fed(elder, sim)
        assert now_fed >= last
        last = now_fed
    assert _core(elder).conductor() == chief.node_id
    assert [n for n, _, _ in recorder.steps] == [chief.node_id]
    assert recorder.steps[0][1].size == pytest.approx(10.0, abs=0.01)
    assert abs(fed(elder, sim) - sim.now) < 0.001, "the older lineage never moved"
    assert abs(fed(chief, sim) - fed(elder, sim)) < 0.001


def test_restarted_conductor_adopts_the_federation_time() -> None:
    # One conductor candidate: when it restarts within its lease it is the conductor again at
    # once. Its clock restarts at 0; the federation is 30 s old and must stay so.
    flags: dict[str, tuple[bool, bool]] = {}
    link = LinkModel(delay=0.0003, jitter=0.0004)
    sim = Simulator(1, get_profile("lan"), link, core_factory=_core_factory(flags))
    records = [sim.new_record(f"n{i}", "o0") for i in range(4)]
    for i, record in enumerate(records):
        flags[record.node_id] = (False, i == 0)
    nodes = [sim.add_node(records[0])]
    nodes += [sim.add_node(r, seeds=[records[0].address]) for r in records[1:]]
    sim.run_until(30.0)
    assert all(_core(n).conductor() == records[0].node_id for n in nodes)
    sim.crash(nodes[0])
    sim.run_until(30.3)
    nodes[0] = sim.restart(nodes[0], [records[1].address])
    worst_follower = worst_restarted = 0.0
    last = {n.node_id: -math.inf for n in nodes}
    while sim.now < 40.0:
        sim.run_until(sim.now + 0.05)
        for node in nodes:
            # Unskewed clocks and the federation's epoch at simulated time 0: federation time
            # should read the simulated time.
            now_fed = _core(node).federation_time(node.local(sim.now))
            assert now_fed >= last[node.node_id]
            last[node.node_id] = now_fed
            if node is nodes[0]:
                if sim.now > 31.5:
                    worst_restarted = max(worst_restarted, abs(now_fed - sim.now))
            else:
                worst_follower = max(worst_follower, abs(now_fed - sim.now))
    assert _core(nodes[0]).conductor() == records[0].node_id
    assert _core(nodes[0]).clock_snapshot(nodes[0].local(sim.now)).is_reference
    assert worst_follower < 0.005, worst_follower
    assert worst_restarted < 0.005, worst_restarted


# Whole-node chaos seeds in which a restarted conductor or supernode made itself the time
# reference with its young clock (followers synced to the old process found their bound broken),
# and one (1179) where the restarted reference adopted the federation's time but its followers
# mixed the old process's answers with the new one's (now they start over, see
# ClockCore.reference_restarted).
RESTART_SEEDS = (843, 1115, 1179, 5397, 7970, 9883)


def test_chaos_seeds_with_restarted_references() -> None:
    for seed in RESTART_SEEDS:
        result = run_chaos(seed)
        assert result.ok, f"seed {seed}: {result.failure}"
