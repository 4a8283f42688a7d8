"""The election core (mesh/_election.py), driven by hand with no event loop.

Three layers:

* unit tests with a few cores run by the project's simulator with zero-delay links
  (:class:`Elections`: each core's output leases are gossiped to the others at once, time
  moves with the cores' timers; the test plays membership);
* hypothesis properties of the merge rule :func:`pick_lease` and of message-order independence;
* the election's deterministic random harness (:mod:`mesh._electionsim`: election cores on
  the project's simulator): many nodes in 2-4 orchestras with message loss, delay and
  reorder, crashes, restarts, graceful leaves, false suspicions and partitions, then a
  connected, loss-free tail in which every node must come to see the same single conductor
  and supernodes. It models membership only as each node's (delayed, sometimes wrong) view of
  who is alive; the whole-node runs (:mod:`mesh._chaos`) drive the real membership core.
  ``bench/election.py`` runs it over 10,000 seeds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from mesh._election import (
    CONDUCTOR,
    Candidate,
    ClaimAnswer,
    ClaimRequest,
    ConductorArbiter,
    ElectionCore,
    ElectionEvent,
    PostChanged,
    SteppedDown,
    best_candidate,
    pick_lease,
    post_orchestra,
    supernode_post,
)
from mesh._electionsim import AGREEMENT_BOUND, run_seeds, simulate_election
from mesh._membership import SendDatagram
from mesh._profiles import get_profile
from mesh._sim import INSTANT, SimNode, Simulator
from mesh._simpeers import ElectionPeer
from mesh._wire import Gossip, Lease, MemberRecord


def nid(n: int) -> str:
    """A node id that sorts by *n*."""
    return f"{n:032x}"


A, B, C, D, E, F = (nid(i) for i in range(1, 7))
SN_X = supernode_post("x")
SN_Y = supernode_post("y")


class Elections:
    """Several election cores run by the simulator (:mod:`mesh._sim`) with zero-delay links:
    leases travel as gossip datagrams at once, time moves with the cores' timers.

    The test plays membership: every core is given its view of who is alive (``info``, minus
    the ``down`` nodes and, in a partition, the other side), and a partition or a crash in the
    simulator stops the leases too.
    """

    def __init__(self, members: Sequence[Candidate], now: float = 0.0, **knobs: Any) -> None:
        self.sim = Simulator(1, get_profile("lan"), INSTANT, on_event=self._event)
        self.sim.now = now
        self.info = {c.node_id: c for c in members}
        self.knobs = knobs
        self.cores: dict[str, ElectionCore] = {}
        self.events: dict[str, list[ElectionEvent]] = {}
        self.records: dict[str, MemberRecord] = {}
        self.down: set[str] = set()
        self.groups: list[set[str]] | None = None
        for c in members:
            self.start(c.node_id)

    @property
    def now(self) -> float:
        return self.sim.now

    def _event(self, node: SimNode, event: ElectionEvent, now: float) -> None:
        self.events[node.node_id].append(event)

    def node(self, node_id: str) -> SimNode:
        return self.sim.nodes[self.records[node_id].address]

    def gossip(self, sender: str, lease: Lease) -> list[SendDatagram]:
        """*lease* from *sender* to every other node, one datagram each."""
        return [
            SendDatagram(record.address, Gossip((lease,)), node)
            for node, record in self.records.items()
            if node != sender
        ]

    def spread(self, sender: str, leases: list[Lease]) -> list[SendDatagram]:
        """Each of *leases* from *sender* to every other node."""
        return [out for lease in leases for out in self.gossip(sender, lease)]

    def start(self, node: str) -> None:
        """Start *node* with a fresh core (again, if it ran before)."""
        if node not in self.records:
            self.records[node] = attrs.evolve(self.sim.new_record("n"), node_id=node)
        self.cores[node] = ElectionCore(node, self.now, **self.knobs)
        self.events[node] = []
        self.down.discard(node)
        peer = ElectionPeer(self.cores[node], lambda leases: self.spread(node, leases))
        self.sim.add_node(self.records[node], core=peer)
        self.refresh()

    def add(self, member: Candidate) -> None:
        self.info[member.node_id] = member
        self.start(member.node_id)

    def side(self, node: str) -> set[str]:
        if self.groups is None:
            return set(self.info)
        return next(g for g in self.groups if node in g)

    def view(self, observer: str) -> list[Candidate]:
        side = self.side(observer)
        return [
            attrs.evolve(c, alive=c.node_id not in self.down and c.node_id in side)
            for c in self.info.values()
        ]

    def refresh(self) -> None:
        """Give every running core its (partition-aware) view."""
        for node, core in self.cores.items():
            if node not in self.down:
                core.update_members(self.now, self.view(node))
        self.flush()

    def flush(self) -> None:
        """Deliver what the cores produced until nobody has anything more to say."""
        self.sim.flush()

    def send(self, sender: str, lease: Lease) -> None:
        """Gossip *lease* from *sender* (running or not) to the nodes it can reach."""
        for out in self.gossip(sender, lease):
            self.sim.send(self.node(sender), out)

    def push_pull(self) -> None:
        """Every node exchanges its lease records with every node it can reach."""
        for node, core in self.cores.items():
            if node not in self.down:
                for lease in core.leases():
                    self.send(node, lease)
        self.flush()

    def advance(self, until: float) -> None:
        """Run the simulator (timers in order, leases at once) up to *until*."""
        self.flush()
        self.sim.run_until(until)

    def crash(self, node: str) -> None:
        """*node* stops; the others' views say so at once."""
        self.down.add(node)
        self.sim.crash(self.node(node))
        self.refresh()

    def partition(self, *groups: set[str]) -> None:
        self.groups = [set(g) for g in groups]
        self.sim.partition(*([self.node(n) for n in g] for g in groups))
        self.refresh()

    def heal(self) -> None:
        self.groups = None
        self.sim.heal()
        self.refresh()
        self.push_pull()

    def conductors(self) -> set[str | None]:
        return {c.conductor() for n, c in self.cores.items() if n not in self.down}

    def supernodes(self, orchestra: str) -> set[str | None]:
        return {c.supernode(orchestra) for n, c in self.cores.items() if n not in self.down}

    def take(self, node: str) -> list[ElectionEvent]:
        out, self.events[node] = self.events[node], []
        return out


def member(
    node: str,
    orchestra: str = "x",
    *,
    supernode: bool = False,
    conductor: bool = False,
    joined: float = 0.0,
    alive: bool = True,
) -> Candidate:
    return Candidate(node, orchestra, supernode, conductor, joined, alive)


def four_nodes() -> Elections:
    return Elections(
        [
            member(A, "x", joined=0.0),
            member(B, "x", supernode=True, conductor=True, joined=1.0),
            member(C, "y", conductor=True, joined=2.0),
            member(D, "y", joined=0.5),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Hand-driven unit tests


def test_posts_are_named_and_parsed() -> None:
    assert supernode_post("cmu") == "supernode:cmu"
    assert post_orchestra("supernode:cmu") == "cmu"
    assert post_orchestra(CONDUCTOR) is None
    for bad in ("", "supernode:", "supernode:a b", "leader", "supernode:" + "x" * 65):
        with pytest.raises(ValueError):
            post_orchestra(bad)


def test_best_candidate_prefers_flagged_then_earliest_join_then_lowest_id() -> None:
    cands = [
        member(D, joined=0.0),
        member(C, supernode=True, joined=5.0),
        member(B, supernode=True, joined=5.0),
        member(A, supernode=True, joined=6.0),
    ]
    best = best_candidate(SN_X, cands)
    assert best is not None and best.node_id == B
    assert best_candidate(SN_X, [member(B, joined=1.0), member(A, joined=1.0)]) == member(
        A, joined=1.0
    )
    assert best_candidate(SN_X, [member(A, "y"), member(B, alive=False)]) is None
    assert best_candidate(CONDUCTOR, [member(A), member(B)]) is None


def test_initial_election_gives_one_conductor_and_one_supernode_per_orchestra() -> None:
    w = four_nodes()
    w.advance(0.9)
    assert w.conductors() == {None}, "no claims inside the settle time"
    w.advance(2.0)
    assert w.conductors() == {B}  # the conductor candidate that joined first
    assert w.supernodes("x") == {B}  # the flagged one
    assert w.supernodes("y") == {D}  # nobody flagged: the earliest join
    assert w.cores[C].supernodes() == {"x": B, "y": D}
    assert [n for n, c in w.cores.items() if c.holds(CONDUCTOR)] == [B]
    assert sum(c.statistics().claims for c in w.cores.values()) == 3, "one claim per post"
    lease = w.cores[A].lease(CONDUCTOR)
    assert lease is not None and lease.term == 1 and lease.holder == B
    assert PostChanged(CONDUCTOR, None, B, 1) in w.take(A)
    assert w.cores[C].standby_for_conductor()
    assert not w.cores[B].standby_for_conductor()
    assert not w.cores[A].standby_for_conductor()


def test_incumbent_keeps_its_posts_when_a_better_node_joins() -> None:
    w = four_nodes()
    w.advance(2.0)
    for node in w.cores:
        w.take(node)
    # Better in every way: flagged for both, earlier join, lower id than everybody.
    w.add(member(nid(0), "y", supernode=True, conductor=True, joined=-10.0))
    w.advance(5.0)
    w.push_pull()
    w.advance(20.0)
    assert w.conductors() == {B}
    assert w.supernodes("y") == {D}
    assert w.supernodes("x") == {B}
    for node in (A, B, C, D):
        assert w.take(node) == [], "no post changed hands, nobody stepped down"
    assert w.cores[nid(0)].conductor() == B, "the newcomer learns the incumbent"
    assert w.cores[nid(0)].standby_for_conductor()


def test_failover_after_the_conductor_dies_claims_term_plus_one() -> None:
    w = four_nodes()
    w.advance(2.0)
    for node in w.cores:
        w.take(node)
    claims_before = sum(c.statistics().claims for c in w.cores.values())
    w.crash(B)
    assert w.conductors() == {None}, "vacant as soon as the death is known"
    assert w.supernodes("x") == {None}
    assert PostChanged(CONDUCTOR, B, None, 1) in w.take(A)
    crash_time = w.now
    w.advance(crash_time + 0.29)
    assert w.conductors() == {None}, "the claim delay has not passed"
    w.advance(crash_time + 0.31)
    assert w.conductors() == {C}, "the only other conductor candidate"
    assert w.supernodes("x") == {A}, "any member of x when no flagged one lives"
    lease = w.cores[D].lease(CONDUCTOR)
    assert lease is not None and lease.term == 2 and lease.tenure_start == pytest.approx(2.3)
    assert PostChanged(CONDUCTOR, None, C, 2) in w.take(D)
    w.advance(w.now + 10.0)
    claims = sum(c.statistics().claims for c in w.cores.values()) - claims_before
    assert claims == 2, "one claim per vacant post: only the best candidate claims"


def test_only_conductor_flagged_nodes_conduct() -> None:
    w = Elections([member(A), member(B, supernode=True), member(C, "y")])
    w.advance(30.0)
    assert w.conductors() == {None}
    assert w.supernodes("x") == {B}
    assert w.supernodes("y") == {C}
    # A record naming an unflagged node is not honoured (and not adopted as holder).
    w.cores[A].handle_lease(w.now, Lease(CONDUCTOR, A, 7, 1.0))
    assert w.cores[A].conductor() is None
    assert not w.cores[A].holds(CONDUCTOR)
    assert not w.cores[A].standby_for_conductor()


def test_orchestra_without_flagged_nodes_still_gets_a_supernode() -> None:
    w = Elections([member(C, "y", joined=3.0), member(B, "y", joined=2.0), member(A, "x")])
    w.advance(2.0)
    assert w.supernodes("y") == {B}, "earliest join among the unflagged"
    w.crash(B)
    w.advance(w.now + 0.5)
    assert w.supernodes("y") == {C}
    w.crash(C)
    assert w.supernodes("y") == {None}, "no live member, no supernode"
    assert w.supernodes("x") == {A}


def test_split_brain_heals_to_the_longer_tenure_and_the_loser_steps_down() -> None:
    w = Elections(
        [
            member(A, "x", conductor=True, supernode=True, joined=0.0),
            member(B, "x", joined=0.0),
            member(C, "x", conductor=True, joined=1.0),
            member(D, "x", joined=1.0),
        ]
    )
    w.advance(2.0)
    assert w.conductors() == {A}
    assert w.supernodes("x") == {A}
    w.partition({A, B}, {C, D})
    w.advance(10.0)
    assert w.cores[A].conductor() == A and w.cores[B].conductor() == A
    assert w.cores[C].conductor() == C and w.cores[D].conductor() == C, "two while cut off"
    assert w.cores[C].supernode("x") == C
    for node in w.cores:
        w.take(node)
    w.heal()
    assert w.conductors() == {A}, "the longer tenure wins"
    assert w.supernodes("x") == {A}
    assert [n for n, c in w.cores.items() if c.holds(CONDUCTOR)] == [A]
    events = w.take(C)
    assert SteppedDown(CONDUCTOR, 2, "conflict", A) in events
    assert SteppedDown(SN_X, 2, "conflict", A) in events
    assert PostChanged(CONDUCTOR, C, A, 1) in events
    assert w.cores[C].standby_for_conductor()
    assert not any(isinstance(e, SteppedDown) for e in w.take(A))


def test_split_brain_with_equal_tenure_goes_to_the_lower_id() -> None:
    w = Elections([member(A, conductor=True), member(B, conductor=True)])
    w.partition({A}, {B})
    w.advance(2.0)
    assert w.cores[A].conductor() == A and w.cores[B].conductor() == B
    assert w.cores[A].lease(CONDUCTOR) == Lease(CONDUCTOR, A, 1, 1.0)
    assert w.cores[B].lease(CONDUCTOR) == Lease(CONDUCTOR, B, 1, 1.0)
    w.take(B)
    w.heal()
    assert w.conductors() == {A}
    assert SteppedDown(CONDUCTOR, 1, "conflict", A) in w.take(B)


def test_handoff_gives_each_post_to_the_best_successor_at_once() -> None:
    w = four_nodes()
    w.advance(2.0)
    for node in w.cores:
        w.take(node)
    claims_before = sum(c.statistics().claims for c in w.cores.values())
    records = w.cores[B].handoff(w.now)
    assert records == [
        Lease(CONDUCTOR, C, 2, 1.0),  # term + 1, the tenure is kept
        Lease(SN_X, A, 2, 1.0),
    ]
    assert SteppedDown(CONDUCTOR, 1, "handoff", C) in w.cores[B].take_events()
    assert w.cores[B].posts_held() == []
    assert not w.cores[B].standby_for_conductor()
    # The records arrive before the leave announcement: they win even while B looks alive.
    for lease in records:
        w.send(B, lease)
    w.flush()
    assert {w.cores[n].conductor() for n in (A, C, D)} == {C}
    assert {w.cores[n].supernode("x") for n in (A, C, D)} == {A}
    assert PostChanged(CONDUCTOR, B, C, 2) in w.take(C)
    w.crash(B)  # the leave announcement
    w.advance(w.now + 5.0)
    assert w.conductors() == {C}
    assert sum(c.statistics().claims for c in w.cores.values()) == claims_before, "no claims"


def test_handoff_records_arriving_after_the_leave_still_win() -> None:
    w = four_nodes()
    w.advance(2.0)
    records = w.cores[B].handoff(w.now)
    w.crash(B)
    assert w.conductors() == {None}
    for lease in records:
        w.send(B, lease)
    w.flush()
    assert w.conductors() == {C}
    assert w.supernodes("x") == {A}


def test_handoff_without_successor_leaves_the_post_vacant() -> None:
    w = Elections([member(A, conductor=True), member(B, "y")])
    w.advance(2.0)
    assert w.conductors() == {A}
    assert w.cores[A].handoff(w.now) == []
    assert SteppedDown(CONDUCTOR, 1, "handoff", None) in w.cores[A].take_events()
    assert w.cores[A].conductor() is None
    w.advance(10.0)
    assert w.cores[A].statistics().claims == 2, "a leaving node claims nothing more"


def test_a_lower_ranked_candidate_claims_when_the_best_one_stays_silent() -> None:
    # C is the best supernode candidate in everybody's view but runs no election core.
    w = Elections([member(A, joined=2.0), member(B, joined=3.0)], rank_delay=1.0)
    w.info[C] = member(C, joined=1.0)
    w.refresh()
    w.advance(1.9)
    assert w.supernodes("x") == {None}
    # Vacant since 0, inside the settle time (1 s): the best would claim at its end; A is
    # second, one rank delay later.
    w.advance(2.01)
    assert w.supernodes("x") == {A}


def test_stale_records_of_a_dead_holder_lose_to_the_newer_claim() -> None:
    w = four_nodes()
    w.advance(2.0)
    old = w.cores[A].lease(CONDUCTOR)
    w.crash(B)
    w.advance(w.now + 1.0)
    assert w.conductors() == {C}
    assert old is not None
    for node in (A, C, D):
        w.cores[node].handle_lease(w.now, old)  # a late duplicate of B's record
    w.flush()
    assert w.conductors() == {C}


def test_a_restarted_node_learns_the_posts_and_does_not_claim_them() -> None:
    w = four_nodes()
    w.advance(2.0)
    w.crash(A)
    w.advance(3.0)
    w.start(A)  # a fresh core: knows nothing
    w.push_pull()
    w.advance(10.0)
    assert w.conductors() == {B}
    assert w.supernodes("x") == {B}
    assert w.cores[A].statistics().claims == 0


def test_a_fresh_core_adopts_its_own_record_from_an_earlier_run() -> None:
    # A restarted so fast that nobody declared it dead: its record is still in force, and the
    # new run holds the post, so every node agrees without a failover.
    w = four_nodes()
    w.advance(2.0)
    w.start(B)
    assert w.cores[B].conductor() is None
    w.push_pull()
    assert w.conductors() == {B}
    assert w.cores[B].holds(CONDUCTOR)
    assert PostChanged(CONDUCTOR, None, B, 1) in w.take(B)


def test_a_holder_that_becomes_ineligible_steps_down() -> None:
    w = four_nodes()
    w.advance(2.0)
    w.info[B] = attrs.evolve(w.info[B], conductor_flag=False)
    w.refresh()
    events = w.cores[B].take_events() + w.take(B)
    assert SteppedDown(CONDUCTOR, 1, "ineligible", None) in events
    w.advance(w.now + 0.5)
    assert w.conductors() == {C}


def test_candidates_behind_the_best_keep_their_rank_delays_after_the_settle_time() -> None:
    # Nodes started together: the post is vacant from the start, so the places behind the best
    # count from the end of the settle period, not from the vacancy. Counted from the vacancy,
    # they ran out during the settle time and the best two claimed at once at its end (a live
    # group of 6 nodes started together: 2 holders of each post, every time).
    view = [member(A, conductor=True), member(B, conductor=True), member(C, conductor=True)]
    due = {}
    for node in (A, B, C):
        core = ElectionCore(node, 0.0, settle_time=1.5, claim_delay=0.3, rank_delay=1.0)
        core.update_members(0.0, view)
        due[node] = core.next_deadline()
        core.handle_timer(1.5)
        claims = [lease for lease in core.take_outputs() if lease.post == CONDUCTOR]
        assert claims == ([Lease(CONDUCTOR, A, 1, 1.5)] if node == A else []), node
    assert due == {A: 1.5, B: 2.5, C: 3.5}


def test_the_far_side_declared_dead_moves_this_side_up_one_place_at_a_time() -> None:
    # A partition: D (the conductor) and A (a better candidate) are on the far side. This side
    # declares D dead at 10 and A at 11.2, at about the same moment on every node: B becomes
    # the best and claims at once; C, second now, still waits one rank delay from then, so
    # B's claim has time to reach it. Counted from the vacancy alone, C's place came at 11.3
    # and C claimed unless B's claim had reached it within 0.1 s: two holders on one side.
    view = [member(n, conductor=True, joined=j) for n, j in ((D, 0), (A, 1), (B, 2), (C, 3))]
    cores = {n: ElectionCore(n, 0.0) for n in (B, C)}
    for core in cores.values():
        core.update_members(0.0, view)
        core.handle_lease(0.5, Lease(CONDUCTOR, D, 1, 0.5))
        core.update_member(10.0, member(D, conductor=True, joined=0, alive=False))
        core.handle_timer(11.1)
        core.update_member(11.2, member(A, conductor=True, joined=1, alive=False))
        assert core.conductor() is None
        core.take_outputs()
    cores[B].handle_timer(11.2)
    claim = Lease(CONDUCTOR, B, 2, 11.2)
    assert [r for r in cores[B].take_outputs() if r.post == CONDUCTOR] == [claim]
    cores[C].handle_timer(11.3)  # B's claim is late (5 % loss: a gossip round)
    assert [r for r in cores[C].take_outputs() if r.post == CONDUCTOR] == []
    cores[C].handle_lease(11.5, claim)
    cores[C].handle_timer(12.2)
    assert cores[C].conductor() == B and not cores[C].holds(CONDUCTOR)


def test_a_live_competitors_claim_takes_over_when_the_holder_in_force_is_declared_dead() -> None:
    # A partition: this node (C) still sees D, the far side's conductor, alive when A, the
    # best of this side, claims the post; A's claim loses to D's record here. When C declares
    # D dead, A holds the post at once in C's view. Before, C had dropped A's claim: the post
    # looked vacant until A re-announced it (1.8 s in a soak), and C could claim meanwhile.
    view = [member(n, conductor=True, joined=j) for n, j in ((D, 0), (A, 1), (B, 2), (C, 3))]
    core = ElectionCore(C, 0.0, reannounce_interval=3.0)
    core.update_members(0.0, view)
    core.handle_lease(0.5, Lease(CONDUCTOR, D, 1, 0.5))
    claim = Lease(CONDUCTOR, A, 2, 12.9)
    core.handle_lease(12.9, claim)
    assert core.conductor() == D
    core.take_outputs()
    core.update_member(14.3, member(D, conductor=True, joined=0, alive=False))
    assert core.conductor() == A and core.lease(CONDUCTOR) == claim
    assert claim in core.take_outputs()  # passed on, for the nodes that dropped it too
    core.handle_timer(20.0)
    assert core.conductor() == A and not core.holds(CONDUCTOR)


def test_a_competing_record_not_heard_again_does_not_take_over() -> None:
    # The competitor stepped down (it stopped re-announcing): two re-announce intervals
    # later its old record no longer counts, and the post falls vacant when D is dead.
    view = [member(n, conductor=True, joined=j) for n, j in ((D, 0), (A, 1), (B, 2), (C, 3))]
    core = ElectionCore(C, 0.0, reannounce_interval=3.0)
    core.update_members(0.0, view)
    core.handle_lease(0.5, Lease(CONDUCTOR, D, 1, 0.5))
    core.handle_lease(12.9, Lease(CONDUCTOR, A, 2, 12.9))
    core.update_member(19.0, member(D, conductor=True, joined=0, alive=False))
    assert core.conductor() is None


def test_held_claims_wait_for_the_settle_call() -> None:
    # A node whose discovery starts a second after the core was made: no claim before the
    # node could hear its peers, then the settle time from then.
    core = ElectionCore(A, 0.0, settle_time=1.0)
    core.hold_claims()
    core.update_members(0.0, [member(A, conductor=True)])
    assert core.next_deadline() is None
    core.handle_timer(1.5)
    assert core.take_outputs() == [] and core.conductor() is None
    core.settle(1.5)
    assert core.next_deadline() == 2.5
    core.update_members(1.6, [member(A, conductor=True), member(B, conductor=True)])
    core.handle_timer(2.5)
    assert {lease.post for lease in core.take_outputs()} == {CONDUCTOR, SN_X}
    assert core.conductor() == A


def test_invalid_posts_are_dropped_and_counted() -> None:
    core = ElectionCore(A, 0.0)
    core.update_members(0.0, [member(A)])
    core.handle_lease(0.0, Lease("leader", B, 1, 0.0))
    core.handle_lease(0.0, Lease("supernode:a b", B, 1, 0.0))
    assert core.leases() == []
    stats = core.statistics()
    assert stats.leases_received == 2 and stats.leases_dropped == 2


def test_holders_reannounce_their_posts() -> None:
    core = ElectionCore(A, 0.0, reannounce_interval=5.0)
    core.update_members(0.0, [member(A, conductor=True)])
    assert core.next_deadline() == 1.0  # settle time
    core.handle_timer(1.0)
    first = core.take_outputs()
    assert {lease.post for lease in first} == {CONDUCTOR, SN_X}
    assert core.next_deadline() == 6.0
    core.handle_timer(6.0)
    assert sorted(core.take_outputs(), key=lambda r: r.post) == sorted(first, key=lambda r: r.post)


def test_a_competing_live_claim_is_answered_with_the_winner() -> None:
    core = ElectionCore(A, 0.0, conflict_resend_interval=0.5)
    core.update_members(0.0, [member(A, conductor=True), member(B, conductor=True)])
    core.handle_lease(0.0, Lease(CONDUCTOR, A, 1, 1.0))
    core.take_outputs()
    core.handle_lease(2.0, Lease(CONDUCTOR, B, 2, 5.0))
    assert core.take_outputs() == [Lease(CONDUCTOR, A, 1, 1.0)]
    core.handle_lease(2.1, Lease(CONDUCTOR, B, 2, 5.0))
    assert core.take_outputs() == [], "rate-limited"


def test_forgets_posts_of_orchestras_nobody_knows() -> None:
    core = ElectionCore(A, 0.0)
    core.update_members(0.0, [member(A), member(B, "y")])
    core.handle_lease(0.0, Lease(SN_Y, B, 1, 0.0))
    assert core.supernode("y") == B
    core.update_members(1.0, [member(A)])
    assert core.leases() == []


def test_a_lease_that_arrives_before_its_holder_is_known_counts_once_it_is() -> None:
    core = ElectionCore(A, 0.0)
    core.update_members(0.0, [member(A)])
    core.handle_lease(0.0, Lease(SN_Y, B, 3, 0.0))
    assert core.supernode("y") is None
    core.update_members(0.1, [member(A), member(C, "z")])
    core.update_members(0.2, [member(A), member(C, "z"), member(B, "y")])
    assert core.supernode("y") == B
    assert core.supernodes() == {"y": B}


def arbitrated(node_id: str, *others: Candidate) -> ElectionCore:
    core = ElectionCore(node_id, 0.0, arbiter=ConductorArbiter())
    core.update_members(0.0, [member(node_id, conductor=True), *others])
    return core


def requests(core: ElectionCore) -> list[ClaimRequest]:
    return [out for out in core.take_outputs() if isinstance(out, ClaimRequest)]


def test_with_an_arbiter_a_claim_is_a_request_until_granted() -> None:
    core = arbitrated(A)
    core.handle_timer(1.0)
    assert core.supernode("x") == A, "supernodes need no arbiter"
    assert core.conductor() is None
    (request,) = requests(core)
    assert request == ClaimRequest(Lease(CONDUCTOR, A, 1, 1.0), renewal=False)
    core.handle_timer(1.5)
    assert requests(core) == [], "one request at a time"
    core.handle_claim_answer(1.6, ClaimAnswer(request.claim, granted=True))
    assert core.conductor() == A
    assert Lease(CONDUCTOR, A, 1, 1.0) in core.take_outputs(), "the granted claim is gossiped"
    # The holder confirms its post every `renew` seconds.
    core.handle_timer(3.6)
    (renewal,) = requests(core)
    assert renewal.renewal and renewal.claim == Lease(CONDUCTOR, A, 1, 1.0)
    core.handle_claim_answer(3.61, ClaimAnswer(renewal.claim, granted=True))
    assert core.conductor() == A
    assert core.statistics().claim_requests == 2


def test_a_refused_claim_is_asked_again_after_retry() -> None:
    core = arbitrated(A)
    core.handle_timer(1.0)
    (request,) = requests(core)
    core.handle_claim_answer(1.1, ClaimAnswer(request.claim, granted=False, holder=B, term=7))
    assert core.conductor() is None
    assert core.next_deadline() == pytest.approx(2.1)
    core.handle_timer(2.1)
    (again,) = requests(core)
    assert again.claim.tenure_start == 2.1
    assert core.statistics().refusals == 1


def test_an_unanswered_claim_is_asked_again_after_the_timeout() -> None:
    core = arbitrated(A)
    core.handle_timer(1.0)
    assert len(requests(core)) == 1
    core.handle_timer(3.9)
    assert requests(core) == []
    core.handle_timer(4.0)
    assert len(requests(core)) == 1


def test_a_claim_after_the_holder_died_asks_the_arbiter_with_the_next_term() -> None:
    core = arbitrated(A, member(B, conductor=True))
    core.handle_lease(0.5, Lease(CONDUCTOR, B, 3, 0.5))
    assert core.conductor() == B
    core.update_members(2.0, [member(A, conductor=True), member(B, conductor=True, alive=False)])
    core.handle_timer(2.3)
    (request,) = requests(core)
    assert request == ClaimRequest(Lease(CONDUCTOR, A, 4, 2.3), renewal=False)


def test_a_refused_renewal_makes_the_holder_step_down_and_stay_out() -> None:
    core = arbitrated(A, member(C))
    core.handle_timer(1.0)
    (request,) = requests(core)
    core.handle_claim_answer(1.1, ClaimAnswer(request.claim, granted=True))
    core.take_events()
    core.handle_timer(3.1)
    (renewal,) = requests(core)
    # The arbiter gave the post away meanwhile (the registry was reset and another site asked).
    core.handle_claim_answer(3.2, ClaimAnswer(renewal.claim, granted=False, holder=B))
    assert core.conductor() is None and core.deferred
    assert SteppedDown(CONDUCTOR, 1, "arbiter", None) in core.take_events()
    # Deferred, the node still asks when the post is vacant, and holds it again once granted.
    core.handle_timer(3.5)
    (ask,) = requests(core)
    assert not ask.renewal
    core.handle_claim_answer(3.6, ClaimAnswer(ask.claim, granted=True))
    assert core.conductor() == A and not core.deferred


def test_without_the_arbiter_the_local_rule_claims_and_a_deferred_node_returns() -> None:
    core = arbitrated(A)
    core.set_arbiter_available(0.5, False)
    core.handle_timer(1.0)
    assert core.conductor() == A, "the LAN never waits"
    # The holder still confirms its post: the first answer says the arbiter is back.
    (renewal,) = requests(core)
    assert renewal.renewal and renewal.claim.holder == A
    core.set_arbiter_available(1.5, True)
    core.handle_claim_answer(1.6, ClaimAnswer(renewal.claim, granted=False, holder=B))
    assert core.deferred and core.conductor() is None
    core.set_arbiter_available(2.0, False)  # unreachable again, and nobody holds the post
    assert not core.deferred
    core.handle_timer(2.3)
    assert core.conductor() == A


def test_a_grant_wins_over_a_holder_the_arbiter_does_not_record() -> None:
    core = arbitrated(A, member(B, conductor=True))
    core.handle_timer(1.0)
    (request,) = requests(core)
    core.handle_lease(1.05, Lease(CONDUCTOR, B, 1, 1.05))  # B claimed by the local rule
    core.handle_claim_answer(1.1, ClaimAnswer(request.claim, granted=True))
    # A holds by the arbiter's word; the mesh decides by tenure until B, refused at its next
    # renewal, steps down and says so in its metadata (ineligible).
    core.update_members(3.0, [member(A, conductor=True), member(B, conductor=False)])
    assert core.conductor() == A


changes = st.lists(
    st.tuples(
        st.sampled_from([A, B, C, D]),
        st.sampled_from(["x", "y", None]),  # None: the member is removed
        st.booleans(),
        st.booleans(),
    ),
    max_size=12,
)


@given(changes)
def test_one_change_at_a_time_equals_the_full_view(
    steps: list[tuple[str, str | None, bool, bool]],
) -> None:
    one = ElectionCore(A, 0.0)
    full = ElectionCore(A, 0.0)
    view: dict[str, Candidate] = {A: member(A, conductor=True)}
    one.update_members(0.0, view.values())
    full.update_members(0.0, view.values())
    for lease in (Lease(CONDUCTOR, B, 2, 0.5), Lease(SN_Y, C, 1, 0.1), Lease(SN_X, D, 1, 0.2)):
        one.handle_lease(0.0, lease)
        full.handle_lease(0.0, lease)
    for k, (node, orchestra, flag, alive) in enumerate(steps, 1):
        now = 0.1 * k
        if orchestra is None:
            view.pop(node, None)
            one.remove_member(now, node)
        else:
            view[node] = member(node, orchestra, conductor=flag, supernode=flag, alive=alive)
            one.update_member(now, view[node])
        full.update_members(now, view.values())
        assert one.leases() == full.leases()
        assert one.take_events() == full.take_events()
        assert one.next_deadline() == full.next_deadline()
        for post in (CONDUCTOR, SN_X, SN_Y):
            assert one.holder(post) == full.holder(post)
    one.handle_timer(5.0)
    full.handle_timer(5.0)
    assert one.leases() == full.leases()


# ---------------------------------------------------------------------------------------------
# Properties of the merge rule

IDS = [nid(i) for i in range(1, 6)]
leases = st.builds(
    Lease,
    st.just(CONDUCTOR),
    st.sampled_from(IDS),
    st.integers(0, 6),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.25]),
)
valid_sets = st.frozensets(st.sampled_from(IDS))


@given(leases, leases, valid_sets)
def test_pick_lease_is_commutative(a: Lease, b: Lease, valid: frozenset[str]) -> None:
    assert pick_lease(a, b, valid) == pick_lease(b, a, valid)
    assert pick_lease(a, b, valid) in (a, b)


@given(leases, valid_sets)
def test_pick_lease_is_idempotent(a: Lease, valid: frozenset[str]) -> None:
    assert pick_lease(a, a, valid) == a


@given(leases, leases, leases, valid_sets)
def test_pick_lease_is_associative(a: Lease, b: Lease, c: Lease, valid: frozenset[str]) -> None:
    assert pick_lease(pick_lease(a, b, valid), c, valid) == pick_lease(
        a, pick_lease(b, c, valid), valid
    )


@given(leases, leases, valid_sets)
def test_pick_lease_follows_the_rules(a: Lease, b: Lease, valid: frozenset[str]) -> None:
    w = pick_lease(a, b, valid)
    a_ok, b_ok = a.holder in valid, b.holder in valid
    if a_ok != b_ok:
        assert w == (a if a_ok else b), "a live, eligible holder beats one that is not"
    elif a_ok:
        assert w.tenure_start == min(a.tenure_start, b.tenure_start), "longer tenure wins"
    else:
        assert w.term == max(a.term, b.term), "a newer term supersedes a dead holder's"


def test_pick_lease_refuses_different_posts() -> None:
    with pytest.raises(ValueError, match="different posts"):
        pick_lease(Lease(CONDUCTOR, A, 1, 0.0), Lease(SN_X, A, 1, 0.0), set())


@settings(max_examples=200)
@given(st.lists(leases, min_size=1, max_size=8), valid_sets, st.randoms(use_true_random=False))
def test_cores_keep_the_same_winner_whatever_the_order(
    records: list[Lease], valid: frozenset[str], rnd: random.Random
) -> None:
    view = [member(i, conductor=True, alive=i in valid) for i in IDS]
    expected = records[0]
    for r in records[1:]:
        expected = pick_lease(expected, r, valid)
    for _ in range(3):
        shuffled = records + rnd.sample(records, k=len(records) // 2)  # with duplicates
        rnd.shuffle(shuffled)
        core = ElectionCore(nid(99), 0.0)
        core.update_members(0.0, view)
        for r in shuffled:
            core.handle_lease(0.0, r)
        assert core.leases() == [expected]
        assert core.conductor() == (expected.holder if expected.holder in valid else None)


# ---------------------------------------------------------------------------------------------
# The random harness (mesh/_electionsim.py)


def test_harness_is_deterministic() -> None:
    assert simulate_election(7) == simulate_election(7)
    assert simulate_election(7) != simulate_election(8)


def test_every_seed_agrees_on_one_conductor_and_one_supernode_per_orchestra() -> None:
    results = run_seeds(range(500))
    failures = [r for r in results if not r.ok]
    assert failures == [], failures[:3]
    worst = max(results, key=lambda r: r.agreement_after or 0.0)
    assert worst.agreement_after is not None
    assert worst.agreement_after <= AGREEMENT_BOUND, worst
    assert sum(r.step_downs for r in results) > 0, "the faults did make conflicts"
    assert sum(r.conductor_candidates_alive == 0 for r in results) > 0, "some without one"


@pytest.mark.parametrize("scenario", ["crash", "leave"])
def test_conductor_failover_is_fast(scenario: str) -> None:
    results = run_seeds(range(50), scenario)
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    worst = max(r.agreement_after or 0.0 for r in results)
    assert worst <= (5.0 if scenario == "crash" else 0.5)


def test_a_holder_the_arbiter_granted_keeps_the_post_against_a_local_rule_record() -> None:
    # A is granted the post; B's record of the same term, made by the local rule while B could
    # not reach the arbiter (so with a longer tenure), meets it: the local order would make A
    # step down, though B is refused at its next renewal.
    core = arbitrated(A, member(B, conductor=True))
    core.handle_timer(1.0)
    (request,) = requests(core)
    core.handle_claim_answer(1.1, ClaimAnswer(request.claim, granted=True))
    core.take_outputs()
    rival = Lease(CONDUCTOR, B, request.claim.term, request.claim.tenure_start - 0.5)
    core.handle_lease(1.2, rival)
    assert core.holds(CONDUCTOR) and core.conductor() == A
    assert request.claim in core.take_outputs()  # B is told who holds it
    # Without the arbiter, the local rule decides again.
    core.set_arbiter_available(1.3, False)
    core.handle_lease(1.4, rival)
    assert core.conductor() == B
