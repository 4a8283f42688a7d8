"""The clock lineage check: a restarted node adopts the federation's time instead of imposing
its young clock (mesh._lineage by hand, then whole nodes in the simulator)."""

from __future__ import annotations

import math

from mesh._chaos import _core, _core_factory, run_chaos
from mesh._lineage import ClockLineage
from mesh._profiles import get_profile
from mesh._sim import LinkModel, Simulator
from mesh._wire import ClockReply


def _answer(request_t1: float, probe: int, their_fed: float, synced: bool) -> ClockReply:
    return ClockReply(probe, request_t1, their_fed, their_fed, 0.0, synced)


def test_a_synced_peer_far_ahead_is_adopted() -> None:
    lineage = ClockLineage()
    sent = lineage.probe(now=5.0, fed=0.5, peers=["a", "b"])
    assert sent is not None
    peer, request = sent
    assert peer == "a" and ClockLineage.owns(_answer(request.t1, request.probe, 0, True))
    lineage.handle_reply(5.001, 0.501, _answer(request.t1, request.probe, 30.0, True), "a")
    assert lineage.adopting == "a" and not lineage.settled
    assert lineage.probe(now=9.0, fed=4.5, peers=["a"]) is None  # no more probes while adopting


def test_a_peer_behind_or_not_synced_settles_the_node_as_the_oldest() -> None:
    for their_fed, synced in ((0.2, True), (30.0, False), (0.55, True)):
        lineage = ClockLineage()
        sent = lineage.probe(now=5.0, fed=0.5, peers=["a"])
        assert sent is not None
        reply = _answer(sent[1].t1, sent[1].probe, their_fed, synced)
        lineage.handle_reply(5.001, 0.501, reply, "a")
        assert lineage.settled and lineage.adopting is None, (their_fed, synced)
        assert lineage.next_deadline() is None


def test_answers_from_the_wrong_peer_or_too_late_are_ignored() -> None:
    lineage = ClockLineage(interval=0.25)
    sent = lineage.probe(now=5.0, fed=0.5, peers=["a", "b"])
    assert sent is not None
    reply = _answer(sent[1].t1, sent[1].probe, 30.0, True)
    lineage.handle_reply(5.001, 0.501, reply, "b")  # not the peer asked
    lineage.handle_reply(7.0, 2.5, reply, "a")  # later than the reply timeout
    assert not lineage.settled and lineage.adopting is None
    assert lineage.next_deadline() == 5.25
    assert lineage.probe(now=5.1, fed=0.6, peers=["a", "b"]) is None  # not due yet
    again = lineage.probe(now=5.25, fed=0.75, peers=["a", "b"])
    assert again is not None and again[0] == "b"  # peers are asked in turn


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
            fed = _core(node).federation_time(node.local(sim.now))
            assert fed >= last[node.node_id]
            last[node.node_id] = fed
            if node is nodes[0]:
                if sim.now > 31.5:
                    worst_restarted = max(worst_restarted, abs(fed - sim.now))
            else:
                worst_follower = max(worst_follower, abs(fed - sim.now))
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
