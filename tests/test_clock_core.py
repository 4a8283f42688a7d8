"""The federation clock core driven by hand, or run by the project's simulator (:class:`Clocks`:
virtual time and network, skewed and drifting local clocks), with no event loop and no
sockets."""

from __future__ import annotations

import itertools
import math

import attrs
import pytest

from mesh._clock import MAX_REPORTED_ERROR, ClockConfig, ClockCore, SkewedClock
from mesh._profiles import get_profile
from mesh._sim import LinkModel, Simulator
from mesh._simpeers import ClockPeer, PeerDirectory
from mesh._wire import Address, ClockReply, ClockRequest, Message


@attrs.define
class Node:
    """A core with its local clock (a SkewedClock of true time)."""

    name: str
    clock: SkewedClock
    core: ClockCore

    def fed(self, t: float) -> float:
        return self.core.federation_time(self.clock(t))


def make(
    name: str,
    t: float = 0.0,
    skew: float = 0.0,
    drift: float = 0.0,
    *,
    reference: bool = False,
    initial_time: float = 0.0,
    config: ClockConfig | None = None,
) -> Node:
    clock = SkewedClock(skew, drift)
    core = ClockCore(
        clock(t),
        is_reference=reference,
        reference_id=name if reference else None,
        initial_time=initial_time,
        config=config,
    )
    return Node(name, clock, core)


class StrictPeer(ClockPeer):
    """A node's clock core on the simulator (:class:`mesh._simpeers.ClockPeer`) whose every
    reply from its reference must be taken into the estimate, and whose polls are noted."""

    def __init__(self, node: Node, net: Clocks) -> None:
        super().__init__(node.core, net.directory.records[node.name].node_id, net.directory)
        self.node = node
        self.net = net
        self.polls: list[float] = []
        """When (true time) its timer sent a request (the first of a pair)."""

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None:
        if isinstance(body, ClockReply):
            name = self.directory.names[sender]
            # (An answer still on its way from a reference left behind is refused.)
            assert self.core.handle_reply(now, body, sender=name) or name != self.core.reference
        else:
            super().handle_message(now, src, sender, body)

    def handle_timer(self, now: float) -> None:
        before = self.core.snapshot(now).requests
        super().handle_timer(now)
        if self.core.snapshot(now).requests > before:
            self.polls.append(self.net.sim.now)


class Clocks:
    """Clock cores run by the simulator (:mod:`mesh._sim`): each one a node whose local clock
    is its :class:`SkewedClock`, the followers' requests and the replies datagrams over links
    of *delay* plus up to *jitter* (seeded by *seed*). Time moves only in :meth:`run`."""

    def __init__(self, *nodes: Node, delay: float = 50e-6, jitter: float = 0.0, seed: int = 1):
        self.sim = Simulator(seed, get_profile("lan"), LinkModel(delay=delay, jitter=jitter))
        self.directory = PeerDirectory()
        for node in nodes:
            self.add(node)

    def peer(self, node: Node) -> StrictPeer:
        peer = self.sim.nodes[self.directory.records[node.name].address].core
        assert isinstance(peer, StrictPeer)
        return peer

    def add(self, node: Node) -> None:
        """Start *node* now; one of the same name is replaced (a restart)."""
        record = self.directory.records.get(node.name)
        if record is None:
            record = self.sim.new_record(node.name)
            self.directory.add(node.name, record)
        old = self.sim.nodes.get(record.address)
        if old is not None:
            self.sim.crash(old)
        self.sim.add_node(record, core=StrictPeer(node, self), clock=node.clock)

    def run(
        self, start: float, end: float, tick: float = 0.01, watch: list[Node] | None = None
    ) -> float:
        """Run from *start* to *end*; check at every *tick* that no watched node's federation
        time went back."""
        self.sim.flush()  # what the test did to the cores by hand
        self.sim.run_until(start)
        last = {n.name: -math.inf for n in watch or []}
        t = start
        while t < end - 1e-9:
            t = min(t + tick, end)
            self.sim.run_until(t)
            for n in watch or []:
                f = n.fed(t)
                assert f >= last[n.name], f"{n.name} went back at t={t}"
                last[n.name] = f
        return t


def follow(node: Node, ref: Node, t: float) -> None:
    node.core.set_reference(node.clock(t), ref.name, is_self=False)


# ---------------------------------------------------------------------------------------------


def test_skewed_clock_maps_true_to_local_and_back() -> None:
    c = SkewedClock(1.5, 100.0, origin=10.0)
    assert c(10.0) == pytest.approx(11.5)
    assert c(1010.0) == pytest.approx(1011.5 + 0.1)
    for t in (0.0, 10.0, 12345.678):
        assert c.to_true(c(t)) == pytest.approx(t, abs=1e-9)
    with pytest.raises(ValueError, match="drift"):
        SkewedClock(0.0, math.inf)


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="slew"):
        ClockConfig(slew_rate=0.6, fast_slew_rate=0.5)
    with pytest.raises(ValueError, match="advance"):
        ClockConfig(fast_slew_rate=1.0)
    with pytest.raises(ValueError, match="best <= window"):
        ClockConfig(best=20, window=16)
    with pytest.raises(ValueError, match="max_interval"):
        ClockConfig(max_interval=0.0)


def test_reference_answers_with_its_own_federation_time() -> None:
    ref = make("r", skew=3.0, reference=True, initial_time=100.0)
    reply = ref.core.handle_request(ref.clock(2.0), ClockRequest(7, 55.5))
    assert reply.probe == 7 and reply.t1 == 55.5
    assert reply.t2 == reply.t3 == pytest.approx(102.0)
    assert reply.error_bound == 0.0 and reply.synced
    snap = ref.core.snapshot(ref.clock(2.0))
    assert snap.is_reference and snap.synced and snap.error_bound == 0.0
    assert ref.core.next_deadline() is None and ref.core.take_outputs() == []


def test_unsynced_node_reports_unknown_error() -> None:
    n = make("n", skew=1.0)
    snap = n.core.snapshot(n.clock(0.5))
    assert not snap.synced and snap.error_bound == math.inf and snap.reference is None
    reply = n.core.handle_request(n.clock(0.5), ClockRequest(1, 0.0))
    assert reply.error_bound == MAX_REPORTED_ERROR and not reply.synced
    assert n.core.next_deadline() is None  # no reference: no polling


def test_polls_fast_at_start_then_backs_off() -> None:
    ref = make("r", reference=True)
    n = make("n")
    follow(n, ref, 0.0)
    clocks = Clocks(ref, n)
    clocks.run(0.0, 30.0)
    sent = clocks.peer(n).polls
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps[:9] == pytest.approx([0.1] * 9, abs=1e-3)  # 10/s for the first second
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps))  # backs off
    assert max(gaps) == pytest.approx(ClockConfig().max_interval, abs=1e-3)  # up to the cap
    assert 100 <= len(sent) <= 140  # 10 in the first second, then 4/s


def test_first_sync_steps_forward_and_agrees() -> None:
    ref = make("r", skew=-0.7, reference=True, initial_time=1000.0)
    n = make("n", skew=1.3)  # a fresh node: federation time starts at 0
    follow(n, ref, 0.0)
    clocks = Clocks(ref, n, delay=40e-6, jitter=20e-6)
    clocks.run(0.0, 1.0, watch=[n])
    snap = n.core.snapshot(n.clock(1.0))
    assert snap.synced and snap.steps == 1
    assert abs(n.fed(1.0) - ref.fed(1.0)) <= snap.error_bound
    clocks.run(1.0, 10.0, watch=[n])
    diff = n.fed(10.0) - ref.fed(10.0)
    snap = n.core.snapshot(n.clock(10.0))
    assert abs(diff) < 10e-6 and abs(diff) <= snap.error_bound
    assert snap.offset == pytest.approx(1000.0 - 1.3, abs=1e-4)  # ref: 1000 + t; n: t + 1.3
    assert snap.error_bound < 200e-6 and snap.rtt is not None and snap.rtt >= 80e-6


def test_node_ahead_slews_back_at_most_four_ms_a_second_without_going_backwards() -> None:
    ref = make("r", reference=True, initial_time=50.0)
    n = make("n", initial_time=50.02)  # 20 ms ahead of the reference
    follow(n, ref, 0.0)
    clocks = Clocks(ref, n)
    t, prev = 0.0, n.fed(0.0)
    while t < 3.0:
        t += 0.01
        clocks.run(t - 0.01, t)
        f = n.fed(t)
        assert f - prev >= (1.0 - 0.004) * 0.01 - 1e-9  # the slew costs at most 0.4%
        prev = f
    mid = n.core.snapshot(n.clock(t))
    assert mid.steps == 0 and n.fed(t) > ref.fed(t) + 0.005  # still slewing, never stepped
    assert mid.error_bound >= n.fed(t) - ref.fed(t)  # the bound owns up to it
    clocks.run(t, 8.0, tick=0.005, watch=[n])
    assert abs(n.fed(8.0) - ref.fed(8.0)) < 5e-6


def test_later_sample_saying_ahead_is_slewed_not_stepped_back() -> None:
    ref = make("r", reference=True, initial_time=10.0)
    late = make("late", reference=True, initial_time=10.0 - 0.05)  # 50 ms behind `ref`
    n = make("n")
    follow(n, ref, 0.0)
    clocks = Clocks(ref, late, n)
    clocks.run(0.0, 5.0, watch=[n])
    assert abs(n.fed(5.0) - ref.fed(5.0)) < 5e-6
    follow(n, late, 5.0)  # a new reference whose samples say n is 50 ms ahead
    before = n.fed(5.0)
    t, prev = 5.0, before
    while t < 6.0:
        clocks.run(clocks.sim.now, t + 0.001)
        f = n.fed(t + 0.001)
        assert f >= prev
        # Slewing at 0.4%: federation time still advances at >= 0.996 of local time.
        assert f - prev >= 0.995 * (n.clock(t + 0.001) - n.clock(t - 0.009)) or t == 5.0
        prev = f
        t += 0.01
    assert n.core.snapshot(n.clock(6.0)).steps == 1  # only the first sync stepped
    clocks.run(6.0, 20.0, tick=0.05, watch=[n])
    assert abs(n.fed(20.0) - late.fed(20.0)) < 10e-6  # 50 ms absorbed in about 12.5 s


def test_after_the_first_sync_a_large_error_behind_is_slewed_not_stepped() -> None:
    ref = make("r", reference=True, initial_time=10.0)
    ahead = make("ahead", reference=True, initial_time=11.0)  # 1 s ahead of `ref`
    n = make("n")
    follow(n, ref, 0.0)
    clocks = Clocks(ref, ahead, n)
    clocks.run(0.0, 3.0, watch=[n])
    steps = n.core.snapshot(n.clock(3.0)).steps
    assert steps == 1 and 9.9 < n.core.take_stepped() < 10.0  # the first sync
    follow(n, ahead, 3.0)
    clocks.run(3.0, 4.0, watch=[n])
    assert n.core.snapshot(n.clock(4.0)).steps == steps, "steps are for lineages meeting"
    assert 0.99 < ahead.fed(4.0) - n.fed(4.0) < 1.0  # slewing at 0.4%
    assert n.core.take_stepped() == 0.0


def test_an_announced_step_moves_time_and_estimate_together() -> None:
    ref = make("r", reference=True, initial_time=10.0)
    n = make("n", skew=0.3, drift=50.0)
    follow(n, ref, 0.0)
    clocks = Clocks(ref, n)
    clocks.run(0.0, 5.0, watch=[n])
    n.core.take_stepped()
    before = n.core.snapshot(n.clock(5.0))
    for node in (ref, n):  # both step by 30 s at the same instant
        node.core.step(node.clock(5.0), 30.0)
    assert n.fed(5.0) == pytest.approx(before.federation_time + 30.0, abs=1e-6)
    clocks.run(5.0, 8.0, watch=[n])
    after = n.core.snapshot(n.clock(8.0))
    assert after.resets == before.resets, "the samples moved with the step"
    assert abs(n.fed(8.0) - ref.fed(8.0)) < 10e-6 <= after.error_bound + 10e-6
    assert n.core.take_stepped() == 30.0
    with pytest.raises(ValueError):
        n.core.step(n.clock(8.0), -1.0)


def member_synced_for_20_s() -> tuple[Node, Node, Clocks]:
    """A reference r and a member m following it from 0 (skewed and drifting), run to 20 s."""
    r = make("r", reference=True, initial_time=100.0)
    m = make("m", skew=0.7, drift=60.0)
    follow(m, r, 0.0)
    clocks = Clocks(r, m, delay=100e-6, seed=6)
    clocks.run(0.0, 20.0)
    return r, m, clocks


def test_a_follower_stepping_to_another_lineage_owns_up_to_the_steps_uncertainty_at_once() -> None:
    # r is a site's top and m its member. The site steps 5 s to an older lineage (the
    # registry's) that r measured only within u = 12.8 ms: after the step r's time is the new
    # lineage's within u (here 12.2 ms off), so m's bound against the top of its chain must
    # cover u from the step on, not from its next sample of r (chaos seed 3547 of the registry
    # sweep: two members 12.2 ms off the registry's time with bounds of 2.3-2.4 ms).
    r, m, clocks = member_synced_for_20_s()
    t = 20.0
    before = m.core.snapshot(m.clock(t))
    assert before.synced and before.error_bound < 0.001
    u, off = 0.0128, 0.0122
    lineage_time = r.fed(t) + 5.0 + off  # the new lineage's time (the registry's) now
    for node in (r, m):  # the announced step: both at the same instant, by the same size
        node.core.step(node.clock(t), 5.0, uncertainty=u)
    after = m.core.snapshot(m.clock(t))
    assert after.synced and after.lan_error_bound == pytest.approx(before.lan_error_bound)
    assert after.error_bound >= before.error_bound + u
    assert abs(after.federation_time - lineage_time) <= after.error_bound
    # The reference's own bound is its owner's (NodeCore's, against the registry): r's clock
    # core defines the time. The followed node's next answer says how well it knows the new
    # time (here r's core says exactly: m's bound is back to what it was).
    assert r.core.snapshot(r.clock(t)).error_bound == 0.0
    clocks.run(t, t + 1.0)
    assert m.core.snapshot(m.clock(t + 1.0)).error_bound < 0.001
    for bad in (-1e-3, math.nan, math.inf):
        with pytest.raises(ValueError):
            m.core.step(m.clock(t + 1.0), 0.0, uncertainty=bad)


def test_a_follower_handed_over_owns_up_to_a_steps_uncertainty_on_its_held_bound() -> None:
    # A node handed over to a new reference (see the hand-over tests below) holds a bound
    # until the new reference's first answer; a step to another lineage then grows it too.
    r, s, s2 = two_following()
    clocks = Clocks(r, s, s2, delay=100e-6, seed=5)
    clocks.run(0.0, 20.0)
    t = 20.0
    held = s.core.snapshot(s.clock(t)).error_bound
    s.core.set_reference(s.clock(t), "s2", is_self=False, handover=held)
    assert s.core.snapshot(s.clock(t)).error_bound == pytest.approx(held)
    s.core.step(s.clock(t), 1.0, uncertainty=0.005)
    snap = s.core.snapshot(s.clock(t))
    assert snap.synced and snap.error_bound == pytest.approx(held + 0.005)


def test_drift_is_estimated_within_a_few_ppm() -> None:
    ref = make("r", skew=0.3, reference=True)
    n = make("n", skew=-1.9, drift=100.0)
    follow(n, ref, 0.0)
    clocks = Clocks(ref, n, delay=30e-6, jitter=150e-6, seed=4)
    clocks.run(0.0, 60.0, watch=[n])
    snap = n.core.snapshot(n.clock(60.0))
    assert snap.drift_ppm == pytest.approx(100.0, abs=2.0)
    assert abs(snap.drift_ppm - 100.0) <= snap.drift_bound_ppm + 0.01
    assert abs(n.fed(60.0) - ref.fed(60.0)) <= snap.error_bound
    assert abs(n.fed(60.0) - ref.fed(60.0)) < 50e-6


def test_reference_change_is_continuous() -> None:
    a = make("a", skew=0.5, drift=-40.0, reference=True, initial_time=500.0)
    b = make("b", skew=-1.0, drift=80.0)
    c = make("c", skew=1.7, drift=150.0)
    for n in (b, c):
        follow(n, a, 0.0)
    clocks = Clocks(a, b, c, delay=30e-6, jitter=60e-6, seed=2)
    clocks.run(0.0, 30.0, watch=[b, c])
    t = 30.0
    before = {n.name: n.fed(t) for n in (a, b, c)}
    b.core.set_reference(b.clock(t), "b", is_self=True)  # b takes over as the reference
    follow(a, b, t)
    follow(c, b, t)
    for n in (a, b, c):  # no jump at the switch
        assert n.fed(t) == pytest.approx(before[n.name], abs=1e-9)
    assert b.core.snapshot(b.clock(t)).drift_ppm == pytest.approx(80.0 + 40.0, abs=1.0)
    clocks.run(t, 60.0, watch=[a, b, c])
    for n in (a, c):
        snap = n.core.snapshot(n.clock(60.0))
        diff = n.fed(60.0) - b.fed(60.0)
        assert snap.synced and snap.reference == "b"
        assert abs(diff) <= snap.error_bound and abs(diff) < 20e-6


def test_bad_replies_are_rejected() -> None:
    ref = make("r", reference=True)
    n = make("n", config=ClockConfig(pairs=False))  # one request per poll, to count them
    follow(n, ref, 0.0)
    n.core.handle_timer(0.0)
    [(dest, req)] = n.core.take_outputs()
    assert dest == "r"
    good = ref.core.handle_request(0.0001, req)
    bad = [
        (attrs.evolve(good, probe=req.probe + 100), None),  # unknown probe
        (attrs.evolve(good, t1=req.t1 + 1e-3), None),  # t1 not echoed
        (good, "someone-else"),  # not the node asked
        (attrs.evolve(good, t3=good.t2 - 1.0), None),  # t3 before t2
    ]
    for reply, sender in bad:
        assert not n.core.handle_reply(0.0002, reply, sender=sender)
    assert n.core.handle_reply(0.0002, good, sender="r")
    assert not n.core.handle_reply(0.0003, good, sender="r")  # duplicate
    n.core.handle_timer(0.1)
    [(_, late_req)] = n.core.take_outputs()
    late = ref.core.handle_request(0.2, late_req)
    assert not n.core.handle_reply(0.1 + 1.5, late)  # older than reply_timeout
    snap = n.core.snapshot(2.0)
    assert snap.rejected == 6 and snap.replies == 1


def test_reply_with_negative_round_trip_is_rejected() -> None:
    n = make("n")
    follow(n, make("r", reference=True), 0.0)
    n.core.handle_timer(1.0)
    [(_, req)] = n.core.take_outputs()
    reply = ClockReply(req.probe, req.t1, 5.0, 5.5, 0.0, True)  # held 0.5 s, answered in 0.1
    assert not n.core.handle_reply(1.1, reply)


def test_synced_lapses_without_samples_and_time_runs_on() -> None:
    ref = make("r", reference=True, initial_time=7.0)
    n = make("n")
    follow(n, ref, 0.0)
    Clocks(ref, n).run(0.0, 5.0, watch=[n])
    assert n.core.snapshot(n.clock(5.0)).synced
    n.core.set_reference(n.clock(5.0), None, is_self=False)  # between elections
    assert n.core.next_deadline() is None
    assert not n.core.snapshot(n.clock(5.0)).synced
    f1, f2 = n.fed(6.0), n.fed(40.0)
    assert f2 - f1 == pytest.approx(34.0, abs=1e-3)
    snap = n.core.snapshot(n.clock(40.0))
    assert abs(n.fed(40.0) - ref.fed(40.0)) <= snap.error_bound < 0.1


def test_stale_reference_loses_synced() -> None:
    ref = make("r", reference=True)
    n = make("n")
    follow(n, ref, 0.0)
    Clocks(ref, n).run(0.0, 3.0)
    assert n.core.snapshot(n.clock(3.0)).synced
    for t in (4.0, 10.0, 20.0):  # requests go out but nothing comes back
        n.core.handle_timer(n.clock(t))
        n.core.take_outputs()
    assert not n.core.snapshot(n.clock(24.0)).synced


def test_becoming_reference_keeps_time_and_rate() -> None:
    ref = make("r", reference=True)
    n = make("n", drift=-150.0)
    follow(n, ref, 0.0)
    Clocks(ref, n).run(0.0, 20.0)
    f = n.fed(20.0)
    n.core.set_reference(n.clock(20.0), "n", is_self=True)
    assert n.fed(20.0) == f
    snap = n.core.snapshot(n.clock(20.0))
    assert snap.is_reference and snap.error_bound == 0.0 and n.core.next_deadline() is None
    # It keeps running at the federation's rate, not its own local rate.
    assert n.fed(120.0) - ref.fed(120.0) == pytest.approx(n.fed(20.0) - ref.fed(20.0), abs=1e-4)


def test_local_clock_going_backwards_does_not_move_time_back() -> None:
    core = ClockCore(100.0, is_reference=True, reference_id="x")
    f = core.federation_time(105.0)
    assert core.federation_time(101.0) == f
    assert core.snapshot(101.0).local_time == 105.0


def test_set_reference_twice_is_a_no_op() -> None:
    ref = make("r", reference=True)
    n = make("n")
    follow(n, ref, 0.0)
    Clocks(ref, n).run(0.0, 2.0)
    samples = n.core.snapshot(n.clock(2.0)).samples
    follow(n, ref, 2.0)
    assert n.core.snapshot(n.clock(2.0)).samples == samples > 0


def test_send_time_stamps_remove_the_bias_of_local_work() -> None:
    # The follower spends 300 us (its other timers) between making a request and sending it,
    # and the reference 200 us between answering and sending. Stamped at sending, the offset
    # is exact; stamped at making, it is off by half the difference of those delays.
    def run(stamped: bool) -> float:
        ref = make("r", skew=0.4, reference=True, initial_time=50.0)
        n = make("n", skew=-1.1)
        follow(n, ref, 0.0)
        t = 0.0
        while t < 5.0:
            n.core.handle_timer(n.clock(t))
            for _dest, req in n.core.take_outputs():
                sent = t + 300e-6
                if stamped:
                    req = n.core.stamp_request(n.clock(sent), req)
                t2 = sent + 50e-6
                reply = ref.core.handle_request(ref.clock(t2), req)
                if stamped:
                    reply = ref.core.stamp_reply(ref.clock(t2 + 200e-6), reply)
                    assert reply.t3 - reply.t2 == pytest.approx(200e-6, abs=1e-9)
                assert n.core.handle_reply(n.clock(t2 + 200e-6 + 50e-6), reply, sender="r")
            t += 0.01
        return n.fed(t) - ref.fed(t)

    assert abs(run(stamped=True)) < 1e-6
    # Unstamped, the way out looks 350 us long and the way back 250 us: off by 50 us.
    assert run(stamped=False) == pytest.approx(50e-6, abs=1e-6)


def test_stamping_leaves_unknown_requests_alone() -> None:
    n = make("n")
    foreign = ClockRequest(99, 1.0)
    assert n.core.stamp_request(2.0, foreign) is foreign


def test_steady_polling_slows_in_a_large_group_to_spare_the_reference() -> None:
    def steady_gap(members: int) -> float:
        ref = make("r", reference=True)
        n = make("n")
        n.core.set_group_size(members)
        follow(n, ref, 0.0)
        clocks = Clocks(ref, n)
        clocks.run(0.0, 60.0, tick=0.01)
        before = n.core.snapshot(n.clock(60.0)).requests
        clocks.run(60.0, 80.0, tick=0.01)
        polls = (n.core.snapshot(n.clock(80.0)).requests - before) / 2  # a pair each
        return 20.0 / polls

    cfg = ClockConfig()
    assert steady_gap(10) == pytest.approx(cfg.max_interval, rel=0.1)
    # 1000 followers: each polls (a pair of requests) every 5 s, so the reference gets 400
    # requests a second.
    assert steady_gap(1000) == pytest.approx(2 * 1000 / cfg.reference_load, rel=0.1)


def test_a_restarted_reference_is_followed_afresh() -> None:
    # The reference restarts under the same id, its time now 0.4 ms later than before (what
    # it adopted): the follower forgets the old process's samples and slews to the new time.
    old = make("r", reference=True, initial_time=20.0)
    n = make("n", skew=0.3)
    follow(n, old, 0.0)
    clocks = Clocks(old, n)
    clocks.run(0.0, 10.0, watch=[n])
    new = make("r", t=10.0, reference=True, initial_time=30.0 + 0.0004)
    clocks.add(new)
    n.core.reference_restarted(n.clock(10.0))
    before = n.core.snapshot(n.clock(10.0))
    assert before.synced and before.samples > 0  # kept until the new process answers
    clocks.sim.flush()
    # Until the next poll is answered.
    assert clocks.sim.run_until(
        13.0, stop=lambda: n.core.snapshot(n.clock(clocks.sim.now)).replies != before.replies
    )
    t = clocks.sim.now
    snap = n.core.snapshot(n.clock(t))
    assert not snap.synced and snap.samples == 1 and snap.resets == before.resets
    clocks.run(t, 13.0, watch=[n])
    snap = n.core.snapshot(n.clock(13.0))
    assert snap.synced and abs(n.fed(13.0) - new.fed(13.0)) <= min(snap.error_bound, 5e-6)


def synced_throughout(clocks: Clocks, nodes: list[Node], start: float, end: float) -> None:
    """Run from *start* to *end*, asserting at every 10 ms that each of *nodes* is synced with
    a finite error bound."""
    t = start
    while t < end - 1e-9:
        t = clocks.run(t, min(t + 0.01, end))
        for n in nodes:
            snap = n.core.snapshot(n.clock(t))
            assert snap.synced and math.isfinite(snap.error_bound), (n.name, t, snap)


def test_a_hand_over_to_a_reference_of_the_same_time_keeps_the_chain_synced() -> None:
    # r is the top; s follows it (a site's top on the registry) and m follows s (a member).
    # s moves to s2, which follows r too (another site's supernode, once reached directly):
    # with the hand-over neither s nor m is ever unsynced, and s ends within its bound of r.
    r = make("r", reference=True, initial_time=100.0)
    s = make("s", skew=0.2, drift=30.0)
    s2 = make("s2", skew=-0.4, drift=-20.0)
    m = make("m", skew=0.7, drift=60.0)
    follow(s, r, 0.0)
    follow(s2, r, 0.0)
    follow(m, s, 0.0)
    clocks = Clocks(r, s, s2, m, delay=100e-6, jitter=50e-6, seed=5)
    clocks.run(0.0, 20.0)
    t = 20.0
    before = s.core.snapshot(s.clock(t))
    assert before.synced and m.core.snapshot(m.clock(t)).synced
    s.core.set_reference(s.clock(t), "s2", is_self=False, handover=before.error_bound)
    synced_throughout(clocks, [s, m], t, 30.0)
    snap = s.core.snapshot(s.clock(30.0))
    assert snap.reference == "s2" and snap.samples >= ClockConfig().min_samples
    assert abs(s.fed(30.0) - r.fed(30.0)) <= snap.error_bound


def two_following() -> tuple[Node, Node, Node]:
    """A reference r and two nodes s and s2 following it from 0 (skewed and drifting)."""
    r = make("r", reference=True, initial_time=100.0)
    s = make("s", skew=0.2, drift=30.0)
    s2 = make("s2", skew=-0.4, drift=-20.0)
    follow(s, r, 0.0)
    follow(s2, r, 0.0)
    return r, s, s2


def test_without_a_hand_over_a_new_reference_is_learned_unsynced() -> None:
    # What the hand-over changes: the same move without it unsyncs s until it has samples.
    r, s, s2 = two_following()
    clocks = Clocks(r, s, s2, delay=100e-6, seed=5)
    clocks.run(0.0, 20.0)
    follow(s, s2, 20.0)
    assert not s.core.snapshot(s.clock(20.0)).synced
    # (A bound beyond the step threshold is no hand-over.)
    s.core.set_reference(s.clock(20.0), "r", is_self=False, handover=0.5)
    assert not s.core.snapshot(s.clock(20.0)).synced


def test_a_reference_that_corrects_its_time_leaves_its_followers_synced() -> None:
    # The reference's time moves 3 ms (a top that slews to the registry's estimate): the
    # follower's samples no longer fit its estimate and it starts over, synced all along (its
    # bound owns up to the move while it slews).
    r, m, clocks = member_synced_for_20_s()
    before = m.core.snapshot(m.clock(20.0))
    assert before.synced
    r.core.step(r.clock(20.0), 0.003)
    synced_throughout(clocks, [m], 20.0, 30.0)
    after = m.core.snapshot(m.clock(30.0))
    assert after.resets > before.resets  # (it did start over)
    assert abs(m.fed(30.0) - r.fed(30.0)) <= after.error_bound


def test_a_follower_forgets_what_its_reference_said_before_it_was_synced() -> None:
    # s starts 0.15 s ahead of the top r and slews back (it never steps back): for tens of
    # seconds it answers m unsynced, with a bound of about 0.15 s. Once s is synced, m's
    # samples from before are forgotten: 5 s later m's bound counts the largest bound s gave
    # since it synced (its bound then, 0.1 s) on top of m's own, not the 0.15 s it gave
    # while it slewed unsynced, and m agrees with r within it.
    r = make("r", reference=True, initial_time=100.0)
    s = make("s", skew=0.2, drift=30.0, initial_time=100.15)
    m = make("m", skew=0.7, drift=60.0)
    follow(s, r, 0.0)
    follow(m, s, 0.0)
    clocks = Clocks(r, s, m, delay=100e-6, jitter=20e-6, seed=7)
    clocks.run(0.0, 5.0)
    early = m.core.snapshot(m.clock(5.0))
    assert not s.core.snapshot(s.clock(5.0)).synced and early.samples > 8
    assert early.error_bound > 0.05  # (what s said of itself while it slewed)
    assert clocks.sim.run_until(60.0, stop=lambda: s.core.snapshot(s.clock(clocks.sim.now)).synced)
    t = clocks.sim.now
    s_bound = s.core.snapshot(s.clock(t)).error_bound
    clocks.run(t, t + 5.0, watch=[m])
    snap = m.core.snapshot(m.clock(t + 5.0))
    assert snap.synced and snap.error_bound <= s_bound + snap.lan_error_bound + 1e-4, s_bound
    assert abs(m.fed(t + 5.0) - r.fed(t + 5.0)) <= snap.error_bound


class SiteTop(ClockCore):
    """A site's top as its followers see it (mesh._nodecore): synced on its LAN, its bound
    against the outside clock ``reported`` (``MAX_REPORTED_ERROR`` until it has one)."""

    reported = MAX_REPORTED_ERROR

    def handle_request(self, now: float, request: ClockRequest) -> ClockReply:
        reply = super().handle_request(now, request)
        return attrs.evolve(reply, error_bound=self.reported, synced=True)


def test_a_follower_forgets_what_its_reference_said_before_it_knew_its_bound() -> None:
    # r is a site's top whose bound against the registry is unknown for its first 10 s: m,
    # synced on the LAN, has a bound of 1e6 s. Once r answers with 2 ms, m forgets the
    # samples from before and stays synced while it learns r anew: 2 s later its bound is
    # r's 2 ms on top of its own, and it was synced all along.
    clock = SkewedClock(0.0, 0.0)
    r = Node("r", clock, SiteTop(clock(0.0), is_reference=True, reference_id="r"))
    assert isinstance(r.core, SiteTop)
    m = make("m", skew=0.7, drift=60.0)
    follow(m, r, 0.0)
    clocks = Clocks(r, m, delay=100e-6, jitter=20e-6, seed=8)
    clocks.run(0.0, 10.0)
    before = m.core.snapshot(m.clock(10.0))
    assert before.synced and before.error_bound >= MAX_REPORTED_ERROR
    r.core.reported = 0.002
    t = 10.0
    while t < 12.0 - 1e-9:
        t = clocks.run(t, t + 0.01)
        assert m.core.snapshot(m.clock(t)).synced, t
    snap = m.core.snapshot(m.clock(12.0))
    assert snap.error_bound <= 0.002 + snap.lan_error_bound + 1e-4, snap  # (+ drift since)
    assert snap.samples >= ClockConfig().min_samples


def test_a_hand_over_on_a_jittery_network_carries_the_estimate_across() -> None:
    # On a jittery network (10-30 ms each way) s and s2 follow r; then r is cut off and s2
    # becomes the reference (elected on s's side of a partition), and s hands over to it. s2
    # keeps r's time as it had it, so what s learned of r's time goes on counting while s2's
    # own samples come: s stays within what the two were off r before (a new estimate from
    # s2's samples alone went 1.84 ms off, beyond the 1.56 ms of that), within 1 ms, and
    # within its bound, which rests on s2's samples alone, all along.
    r, s, s2 = two_following()
    clocks = Clocks(r, s, s2, delay=10e-3, jitter=20e-3, seed=1)
    t = clocks.run(0.0, 30.0)
    errors = {"s": 0.0, "s2": 0.0}
    while t < 40.0:
        t = clocks.run(t, t + 0.1)
        for n in (s, s2):
            errors[n.name] = max(errors[n.name], abs(n.fed(t) - r.fed(t)))
    apart = errors["s"] + errors["s2"]  # how far s and s2 could be apart at the change
    before = s.core.snapshot(s.clock(t))
    assert before.synced
    s2.core.set_reference(s2.clock(t), "s2", is_self=True)
    s.core.set_reference(s.clock(t), "s2", is_self=False, handover=before.error_bound)
    worst = 0.0
    while t < 60.0:
        t = clocks.run(t, t + 0.1)
        snap = s.core.snapshot(s.clock(t))
        error = abs(snap.federation_time - s2.fed(t))
        assert snap.synced and error <= snap.error_bound, (t, error, snap.error_bound)
        worst = max(worst, error)
    assert worst <= min(apart, 1e-3), (worst, apart)
    assert s.core.snapshot(s.clock(t)).samples >= ClockConfig().min_samples


def test_a_clock_that_is_not_steady_is_neither_remembered_nor_taken_up_again() -> None:
    # The registry's time is an epoch that a reset or an empty restart replaces under the
    # same id: its samples from before must not be taken up when the node follows it again
    # (steady=False), as a node's are on a jittery network (ClockConfig.rate_history).
    for steady, taken_up in ((True, True), (False, False)):
        r = make("r", reference=True, initial_time=100.0)
        s = make("s", skew=0.2, drift=30.0)
        s.core.set_reference(s.clock(0.0), "r", is_self=False, steady=steady)
        clocks = Clocks(r, s, delay=10e-3, jitter=20e-3, seed=1)
        t = clocks.run(0.0, 20.0)
        held = s.core.snapshot(s.clock(t)).samples
        assert held > 100
        s.core.set_reference(s.clock(t), None, is_self=False)
        t = clocks.run(t, t + 1.0)  # (replies in flight are for the clock left)
        s.core.set_reference(s.clock(t), "r", is_self=False, steady=steady)
        assert s.core.snapshot(s.clock(t)).samples == (held if taken_up else 0), steady


def test_a_node_that_becomes_the_reference_while_carrying_samples_reports_a_bound_of_0() -> None:
    # A node that becomes the reference defines the time: its bound is 0, whatever it held as
    # a follower. One that still carried samples across a hand-over (a follower of a
    # partition's own reference, elected in turn) went on reporting the carried estimate's
    # bound, which its followers counted as theirs (and took for a reference whose time
    # does not run straight, keeping no rate history of it).
    r, s, s2 = two_following()
    clocks = Clocks(r, s, s2, delay=10e-3, jitter=20e-3, seed=1)
    t = clocks.run(0.0, 30.0)
    held = s.core.snapshot(s.clock(t))
    assert held.synced
    s2.core.set_reference(s2.clock(t), "s2", is_self=True)
    s.core.set_reference(s.clock(t), "s2", is_self=False, handover=held.error_bound)
    t = clocks.run(t, t + 2.0)  # (s carries r's samples for the 13 s s2's take to replace)
    following = s.core.snapshot(s.clock(t))
    assert following.synced and following.error_bound > 0.0
    s.core.set_reference(s.clock(t), "s", is_self=True)
    assert s.core.snapshot(s.clock(t)).error_bound == 0.0
    assert s.core.handle_request(s.clock(t), ClockRequest(1, 0.0)).error_bound == 0.0
    t = clocks.run(t, t + 1.0)
    assert s.core.snapshot(s.clock(t)).error_bound == 0.0


def test_a_node_followed_again_is_taken_up_again_only_if_it_defines_the_time() -> None:
    # On a jittery network a node that follows again a node it followed before takes up the
    # samples it held of it (ClockConfig.rate_history: the stash), but only of a node that
    # defines the time (r, the reference): s, which follows r, slews towards each new estimate
    # of r, so its samples from before describe a time it has left.
    r, s, s2 = two_following()
    clocks = Clocks(r, s, s2, delay=10e-3, jitter=20e-3, seed=1)
    t = clocks.run(0.0, 20.0)
    s2.core.set_reference(s2.clock(t), "s", is_self=False)  # (a chain: s2 -> s -> r)
    t = clocks.run(t, 30.0)
    assert s2.core.snapshot(s2.clock(t)).samples > 100
    # (Each switch back comes a second later: replies in flight are for the node left.)
    s2.core.set_reference(s2.clock(t), "r", is_self=False)
    t = clocks.run(t, t + 1.0)
    s2.core.set_reference(s2.clock(t), "s", is_self=False)
    assert s2.core.snapshot(s2.clock(t)).samples == 0  # s's samples: not taken up
    t = clocks.run(t, 40.0)
    s2.core.set_reference(s2.clock(t), "r", is_self=False)
    t = clocks.run(t, 50.0)
    held = s2.core.snapshot(s2.clock(t)).samples
    assert held > 100
    s2.core.set_reference(s2.clock(t), "s", is_self=False)
    t = clocks.run(t, t + 1.0)
    s2.core.set_reference(s2.clock(t), "r", is_self=False)
    assert s2.core.snapshot(s2.clock(t)).samples == held  # r's samples: taken up again
    # Without the stash (rate_history 0) nothing is taken up.
    r = make("r", reference=True, initial_time=100.0)
    s2 = make("s2", skew=-0.4, drift=-20.0, config=ClockConfig(rate_history=0))
    follow(s2, r, 0.0)
    clocks = Clocks(r, s2, delay=10e-3, jitter=20e-3, seed=1)
    t = clocks.run(0.0, 20.0)
    assert s2.core.snapshot(s2.clock(t)).samples > 100
    s2.core.set_reference(s2.clock(t), None, is_self=False)
    t = clocks.run(t, t + 1.0)
    s2.core.set_reference(s2.clock(t), "r", is_self=False)
    assert s2.core.snapshot(s2.clock(t)).samples == 0
