"""The SWIM/Lifeguard membership core (mesh/_membership.py), driven by hand with no event loop.

Two or three :class:`Membership` cores run in the project's simulator (:mod:`mesh._sim`) with
zero-delay links (:data:`~mesh._sim.INSTANT`) and the checked edge: every datagram and stream
frame is encoded with the real, signed codec under the longest federation name (so the
1200-byte cap is checked on everything any core sends here), bound to its receiver as the live
node binds it, and passes the receiver's real :class:`~mesh._inbound.Inbound` checks (so a core
that named the wrong receiver, or none, is caught) before the peer gets it at the same virtual
instant. Time advances only when a test says so (:meth:`Net.run`), with the cores' timers;
a test may call a core by hand and let the simulator carry out what it produced. One test per
protocol transition.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pytest

from mesh._membership import (
    MAX_PUSH_PULL_PAGES,
    MemberEvent,
    Membership,
    MemberView,
    OpenStream,
    PathConflict,
    SendDatagram,
    Snapshot,
    UpdateReceived,
    path_winner,
)
from mesh._profiles import Profile, get_profile
from mesh._sim import INSTANT, SimNode, Simulator
from mesh._wire import (
    MAX_COUNTER,
    MAX_DATAGRAM,
    MAX_FRAME,
    Ack,
    Address,
    Dead,
    Envelope,
    Gossip,
    Keyring,
    Lease,
    MemberRecord,
    MemberStatus,
    Message,
    Nack,
    Ping,
    PingReq,
    Publish,
    PushPull,
    Suspect,
    WireCodec,
    update_size,
)
from registry_bridge._relaystore import FRAME_MAX as RELAY_FRAME_MAX

LAN = get_profile("lan")
FEDERATION = "f" * 64  # the longest federation name: the largest header a datagram can have
CODECS = (WireCodec(), WireCodec(Keyring.single(b"k" * 32)))  # unsigned, and signed (+16 bytes)


def record(i: int, *, name: str | None = None, orchestra: str = "o", **kw: Any) -> MemberRecord:
    """Member *i*: id ``i`` as 32 hex digits, address 10.0.<i>."""
    address = (f"10.0.{i >> 8}.{i & 255}", 7471)
    return MemberRecord(f"{i:032x}", name or f"n{i}", orchestra, address, 0, **kw)


def core(
    rec: MemberRecord,
    seed: int,
    *,
    now: float = 0.0,
    snapshot: Snapshot | None = None,
    profile: Profile = LAN,
) -> Membership:
    return Membership(rec, profile, now=now, rng=random.Random(seed), snapshot=snapshot)


def converged(count: int, seed: int = 1, profile: Profile = LAN) -> list[Membership]:
    """*count* cores that already know each other (one shared snapshot)."""
    records = [record(i + 1) for i in range(count)]
    snapshot = Snapshot.of(records)
    return [
        core(r, seed * 1000 + i, snapshot=snapshot, profile=profile) for i, r in enumerate(records)
    ]


class Net:
    """The simulator (:class:`~mesh._sim.Simulator`) over hand-built cores, and what it saw.

    Links are :data:`~mesh._sim.INSTANT` and the edge is checked (see the module docstring).
    This class only names the simulator's hooks by core and records its events (time,
    observer id, event) and datagrams (time, source, destination, body, lost or not).
    """

    def __init__(self, cores: Iterable[Membership], now: float = 0.0) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.sent: list[tuple[float, Address, Address, Message]] = []
        self.sim = Simulator(
            1,
            LAN,
            INSTANT,
            federation=FEDERATION,
            codec=CODECS[1],
            edge=True,
            on_event=lambda node, ev, t: self.events.append((t, node.node_id, ev)),
            on_send=lambda node, dest, body, t: self.sent.append((t, node.address, dest, body)),
        )
        self.sim.now = now  # the virtual clock starts at *now*: timers already due fire then
        for c in cores:
            self.add(c)

    @property
    def now(self) -> float:
        return self.sim.now

    @property
    def largest(self) -> int:
        """The largest datagram sent, encoded and signed."""
        return self.sim.largest_datagram

    def node(self, c: Any) -> SimNode:
        return self.sim.nodes[c.me.address]

    def add(self, c: Any) -> SimNode:
        """Start *c* (a core, or a stand-in with the same methods) now."""
        return self.sim.add_node(c.me, core=c)

    def crash(self, c: Membership) -> None:
        self.sim.crash(self.node(c))

    def cut(self, a: Membership, b: Membership) -> None:
        self.sim.cut(self.node(a), self.node(b))

    def block(self, src: Membership, dest: Membership) -> None:
        self.sim.block(self.node(src), self.node(dest))

    def isolate(self, c: Membership) -> None:
        self.sim.isolate(self.node(c))

    def heal(self) -> None:
        self.sim.heal()

    def stall(self, c: Membership, duration: float) -> None:
        """Freeze *c* for *duration*: no timer runs, and what is sent to it is lost."""
        self.sim.stall(self.node(c), duration, drop=True)

    def send(self, c: Membership, output: SendDatagram | OpenStream) -> None:
        """Send one output a test took from *c* by hand, then deliver everything due."""
        self.sim.send(self.node(c), output)
        self.sim.flush()

    def flush(self) -> None:
        """Carry out what the cores produced by hand, and deliver everything due now."""
        self.sim.flush()

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run the simulator to *until* (or until *stop()*, checked first); return whether
        *stop* ended the run."""
        self.sim.flush()
        if stop is not None and stop():
            return True
        return self.sim.run_until(until, stop)

    # -- observing ----------------------------------------------------------------------------

    def member_events(
        self, kind: str, *, about: Membership, seen_by: Membership | None = None
    ) -> list[tuple[float, MemberEvent]]:
        return [
            (t, ev)
            for t, observer, ev in self.events
            if isinstance(ev, MemberEvent)
            and ev.kind == kind
            and ev.member.node_id == about.node_id
            and (seen_by is None or observer == seen_by.node_id)
        ]

    def first(self, kind: str, *, about: Membership, seen_by: Membership) -> float | None:
        found = self.member_events(kind, about=about, seen_by=seen_by)
        return found[0][0] if found else None

    def of_kind(self, kind: type, src: Membership | None = None) -> list[Any]:
        return [
            (t, s, d, b)
            for t, s, d, b in self.sent
            if isinstance(b, kind) and (src is None or s == src.me.address)
        ]


def status(observer: Membership, member: Membership) -> str | None:
    view = observer.member(member.node_id)
    return None if view is None else view.status


# ---------------------------------------------------------------------------------------------
# Join


def test_join_push_pull_makes_both_know_each_other() -> None:
    a, b = core(record(1), 1), core(record(2), 2)
    net = Net([a, b])
    b.add_candidate(0.0, a.me.address)
    opened = b.take_outputs()
    assert len(opened) == 1 and isinstance(opened[0], OpenStream) and opened[0].body.join
    net.send(b, opened[0])
    assert status(a, b) == "alive" and status(b, a) == "alive"
    assert net.first("joined", about=b, seen_by=a) == 0.0
    assert net.first("joined", about=a, seen_by=b) == 0.0
    assert a.live_count() == b.live_count() == 2
    # A peer already known at that address is not joined again.
    b.add_candidate(5.0, a.me.address)
    assert b.take_outputs() == []


def test_join_through_one_member_reaches_the_others_by_gossip() -> None:
    a, b = converged(2)
    c = core(record(3), 3)
    net = Net([a, b, c])
    c.add_candidate(0.0, a.me.address)
    net.flush()
    assert status(c, b) == "alive"  # from a's push-pull reply
    assert net.run(2.0, stop=lambda: status(b, c) == "alive")  # a gossips c on
    joined = net.first("joined", about=c, seen_by=b)
    assert joined is not None and joined <= LAN.gossip_interval + 1e-9


def test_a_group_larger_than_one_frame_joins_in_pages() -> None:
    """20,000 members (about 1.3 MB of records, over the 1 MiB frame): the joiner gets the
    state in pages, each a frame that fits (the edge encodes and checks every one), and knows
    every member after the last."""
    records = [record(i) for i in range(1, 20_001)]
    a = core(records[0], 1, snapshot=Snapshot.of(records))
    c = core(record(20_001), 3)
    net = Net([a, c])
    assert sum(update_size(r) for r in records) > MAX_FRAME
    asked: list[int] = []  # the cursor each of c's exchanges asked for
    open_stream = net.sim._open_stream

    def opening(node: SimNode, out: OpenStream) -> None:
        asked.append(out.body.cursor)
        open_stream(node, out)  # encode_frame raises MessageTooLarge above MAX_FRAME

    net.sim._open_stream = opening  # type: ignore[method-assign]
    c.add_candidate(0.0, a.me.address)
    net.flush()
    # From the start, then each time where the last page ended, always forwards.
    assert len(asked) >= 2 and asked[0] == 0
    assert asked == sorted(set(asked))
    assert c.live_count() == 20_001  # everyone, itself included
    assert status(a, c) == "alive"
    assert not net.sim.refused


def test_a_state_exchange_with_another_site_fits_the_registrys_relay() -> None:
    """With sites (the ``wan`` profile), a state exchange with another site's supernode goes
    in pages that each fit one frame of the registry's relay (32 KiB: the path between two
    venues behind NATs), both ways, and the pages still bring every member; a member of the
    same site gets the whole state in one page, as before."""
    wan = get_profile("wan")
    assert wan.push_pull_page is not None

    def site(name: str, first: int) -> tuple[Membership, list[MemberRecord]]:
        records = [record(i, orchestra=name) for i in range(first, first + 600)]
        snapshot = Snapshot.of(records)
        core = Membership(records[0], LAN, now=0.0, rng=random.Random(first), snapshot=snapshot,
                          wan=wan)  # fmt: skip
        return core, records

    (a, site_a), (b, _) = site("a", 1), site("b", 1001)

    def relayed_size(sender: Membership, to: Membership, body: Message) -> int:
        """The bytes the relay link carries for *body*: a kind byte, an 8-byte exchange id
        and the signed frame (with the largest header a message can have)."""
        env = Envelope(FEDERATION, sender.node_id, MAX_COUNTER, MAX_COUNTER, 1.7e9, body,
                       to.node_id, MAX_COUNTER)  # fmt: skip
        return 1 + 8 + len(CODECS[1].encode_frame(env))

    assert sum(update_size(r) for r in site_a) > RELAY_FRAME_MAX
    b.add_candidate(0.0, a.me.address)  # b's supernode joins a's across the relay
    (request,) = [o for o in b.take_outputs() if isinstance(o, OpenStream)]
    assert relayed_size(b, a, request.body) <= RELAY_FRAME_MAX
    known: set[str] = set()
    cursor, pages = 0, 0
    while True:
        body = request.body if cursor == 0 else PushPull((b.me,), cursor=cursor)
        reply = a.handle_stream(0.0, b.me.address, b.node_id, body)
        assert relayed_size(a, b, reply) <= RELAY_FRAME_MAX
        known.update(r.node_id for r in reply.members)
        pages += 1
        if reply.cursor == 0:
            break
        assert reply.cursor > cursor
        cursor = reply.cursor
    assert pages >= 3
    assert known >= {r.node_id for r in site_a}
    local = record(700, orchestra="a")
    assert a.handle_stream(0.0, local.address, local.node_id, PushPull((local,))).cursor == 0


def test_a_peer_whose_pages_never_end_is_not_asked_for_ever() -> None:
    """Someone else answers every page with one more: the joiner stops after
    MAX_PUSH_PULL_PAGES exchanges and counts it."""
    c = core(record(1), 1)
    liar = record(2)
    c.add_candidate(0.0, liar.address)
    asked = 0
    for _ in range(10 * MAX_PUSH_PULL_PAGES):
        opened = [o for o in c.take_outputs() if isinstance(o, OpenStream)]
        if not opened:
            break
        asked += 1
        (out,) = opened
        page = PushPull((liar, record(1000 + asked)), reply=True, cursor=out.body.cursor + 1)
        c.handle_stream_reply(float(asked), out.exchange, page)
    assert asked == MAX_PUSH_PULL_PAGES
    assert c.statistics().refused["push-pull pages"] == 1
    # A page that does not move forwards is not followed either.
    d = core(record(3), 3)
    d.add_candidate(0.0, liar.address)
    (out,) = d.take_outputs()
    assert isinstance(out, OpenStream)
    d.handle_stream_reply(0.0, out.exchange, PushPull((liar,), reply=True, cursor=0))
    assert d.take_outputs() == []


def test_a_state_that_fits_is_one_push_pull_of_the_earlier_format() -> None:
    a, b = converged(2)
    reply = a.handle_stream(0.0, b.me.address, b.node_id, PushPull((b.me,)))
    assert reply.cursor == 0 and len(reply.members) == 2
    assert len(reply.fields()) == 4


# ---------------------------------------------------------------------------------------------
# Probing


def test_probe_gets_an_ack_and_raises_no_suspicion() -> None:
    a, b = converged(2)
    net = Net([a, b])
    net.run(3.0)
    pings = net.of_kind(Ping, src=a)
    acks = net.of_kind(Ack, src=b)
    assert len(pings) >= 8  # one per probe period
    answered = {body.probe for _, _, _, body in acks}
    assert all(body.probe in answered and body.target == b.node_id for *_, body in pings)
    assert not [e for e in net.events if isinstance(e[2], MemberEvent)]
    stats = a.statistics()
    assert stats.probes_failed == 0 and stats.awareness == 0 and stats.indirect_probes == 0


def test_indirect_ack_through_a_helper_prevents_suspicion() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.cut(a, c)  # a and c cannot talk directly; both can talk to b
    net.run(5.0)
    assert a.statistics().indirect_probes > 0 and c.statistics().indirect_probes > 0
    # b relayed: it pinged c on a's behalf and forwarded c's ack to a.
    assert any(d == c.me.address for _, _, d, _ in net.of_kind(Ping, src=b))
    assert any(
        d == a.me.address and body.target == c.node_id for _, _, d, body in net.of_kind(Ack, src=b)
    )
    assert a.statistics().probes_failed == 0 and c.statistics().probes_failed == 0
    assert not net.member_events("suspect", about=a) + net.member_events("suspect", about=c)
    assert status(a, c) == status(c, a) == "alive"


def test_silent_target_is_suspected_at_the_end_of_the_probe_period() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.run(1.0)
    net.crash(c)
    assert net.run(5.0, stop=lambda: bool(net.member_events("suspect", about=c)))
    # The peer that found out itself: its ping went unanswered for probe_timeout, so it asked
    # the other peer (PingReq); that one nacked in time, and at the end of the probe period
    # the target is suspected - and the prober does not blame itself (Lifeguard).
    (prober,) = [p for p in (a, b) if p.statistics().suspicions_raised]
    (helper,) = [p for p in (a, b) if p is not prober]
    suspected = net.first("suspect", about=c, seen_by=prober)
    assert suspected is not None
    (asked, *_), *_ = net.of_kind(PingReq, src=prober)
    nacks = [t for t, _, d, body in net.of_kind(Nack, src=helper) if d == prober.me.address]
    window = LAN.probe_interval - LAN.probe_timeout
    assert suspected - asked == pytest.approx(window, abs=1e-5)
    assert nacks and asked < nacks[0] < suspected
    assert prober.statistics().awareness == 0 and prober.statistics().probes_failed == 1
    # The suspicion is gossiped: the other peer suspects c too.
    assert net.run(net.now + 1.0, stop=lambda: status(helper, c) == "suspect")


@pytest.mark.parametrize("heard", [False, True], ids=["silent", "heard-from"])
def test_a_datagram_from_the_probed_member_counts_as_its_ack(heard: bool) -> None:
    # Chaos seeds 8747 and 3079: a probe whose ping was lost (or sent into a partition) ended,
    # stretched by awareness, after the target had been heard from (its own pings, gossip),
    # and suspected it anyway. Hearing from the target during the probe is as good as its ack.
    records = [record(i) for i in (1, 2, 3)]
    a = core(records[0], 11, snapshot=Snapshot.of(records))
    net = Net([a])  # a alone: everything it sends is lost
    assert net.run(1.0, stop=lambda: bool(net.of_kind(Ping, src=a)))
    ((started, _, dest, _),) = net.of_kind(Ping, src=a)
    target = next(r for r in records if r.address == dest)
    if heard:  # the target's own probe of a arrives while a's probe is out
        net.run(started + LAN.probe_timeout / 2)
        a.handle_message(net.now, target.address, target.node_id, Ping(1, a.node_id))
    net.run(started + LAN.probe_interval + 1e-3)
    view = a.member(target.node_id)
    assert view is not None
    if heard:
        assert view.status == "alive" and a.statistics().probes_failed == 0
        assert not net.of_kind(PingReq, src=a)  # no indirect probe needed either
    else:
        assert view.status == "suspect" and a.statistics().probes_failed == 1


def test_suspect_refutes_by_raising_its_incarnation() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.run(1.0)
    net.isolate(c)
    assert net.run(5.0, stop=lambda: bool(net.member_events("suspect", about=c)))
    net.heal()
    # c hears it is suspected (gossip, or the suspect piggybacked on a probe) and refutes.
    net.run(net.now + 3.0)
    # (A probe begun while c was cut off may still fail after the heal: another refutation.)
    assert c.incarnation >= 1 and c.statistics().refutations == c.incarnation
    for peer in (a, b):
        view = peer.member(c.node_id)
        assert view is not None and (view.status, view.incarnation) == ("alive", c.incarnation)
        assert net.member_events("alive", about=c, seen_by=peer)
    assert not net.member_events("dead", about=c)


def test_stale_suspicion_is_answered_with_the_newer_incarnation() -> None:
    records = [record(i) for i in (1, 2, 3)]
    snapshot = Snapshot.of(records)
    a, b = (core(r, i, snapshot=snapshot) for i, r in enumerate(records[:2]))
    c = core(attrs.evolve(records[2], incarnation=1), 3, snapshot=snapshot)  # refuted once
    net = Net([a, b, c])
    edge = net.node(c).inbound
    assert edge is not None
    edge.boot_incarnation = 0  # this run of c started at 0
    old_news = Gossip((Suspect(c.node_id, 0, b.node_id),))
    # a missed c's refutation and hears an old suspicion of c (incarnation 0) from b. It tells
    # c directly; c answers with its current record, and a's suspicion is over at once.
    a.handle_message(0.0, b.me.address, b.node_id, old_news)
    assert status(a, c) == "suspect"
    net.flush()
    view = a.member(c.node_id)
    assert view is not None and (view.status, view.incarnation) == ("alive", 1)
    assert net.member_events("alive", about=c, seen_by=a)
    assert c.incarnation == 1 and c.statistics().refutations == 0  # nothing new to refute
    # The same through a buddy ping: b's direct notice is lost, then its probe carries it.
    net.block(b, c)
    b.handle_message(0.1, a.me.address, a.node_id, old_news)
    net.flush()
    assert status(b, c) == "suspect"
    net.heal()
    c.handle_message(0.2, b.me.address, b.node_id, Ping(1, c.node_id, old_news.updates))
    net.flush()
    view = b.member(c.node_id)
    assert view is not None and (view.status, view.incarnation) == ("alive", 1)
    # And the other way round: c probes a node that still suspects it; the ack says so.
    net.block(a, c)
    a.handle_message(0.3, b.me.address, b.node_id, Gossip((Suspect(c.node_id, 1, b.node_id),)))
    net.flush()
    assert status(a, c) == "suspect"  # its direct notice was lost; c's refutation not yet heard
    a.handle_message(0.4, c.me.address, c.node_id, Ping(7, a.node_id))
    (ack,) = [o for o in a.take_outputs() if isinstance(o, SendDatagram)]
    assert isinstance(ack.body, Ack) and ack.body.updates[0] == Suspect(c.node_id, 1, a.node_id)
    net.heal()
    net.send(a, ack)
    view = a.member(c.node_id)
    assert view is not None and (view.status, view.incarnation) == ("alive", 2)
    net.run(10.0)
    assert not net.member_events("dead", about=c)


def test_every_new_suspecter_tells_the_suspect_directly() -> None:
    a, b, c, d = converged(4)
    suspicion = Gossip((Suspect(d.node_id, 0, a.node_id),))
    for peer in (b, c):  # learned by gossip from a, the reporter
        peer.handle_message(0.0, a.me.address, a.node_id, suspicion)
        told = [o for o in peer.take_outputs() if isinstance(o, SendDatagram)]
        assert SendDatagram(d.me.address, suspicion, d.node_id, 0) in told
    # In a big group only about 64 of the suspecters do, so the suspect's fan-in is bounded.
    records = [record(i) for i in range(1, 641)]
    big = core(records[0], 5, snapshot=Snapshot.of(records))
    notices = 0
    for rec in records[2:202]:
        big.handle_message(
            0.0,
            records[1].address,
            records[1].node_id,
            Gossip((Suspect(rec.node_id, 0, records[1].node_id),)),
        )
        notices += sum(1 for o in big.take_outputs() if getattr(o, "dest", None) == rec.address)
    assert 200 * 64 / 640 / 2 < notices < 200 * 64 / 640 * 2  # about 20 of 200


def test_remote_dead_in_push_pull_only_suspects_and_tells_the_member() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c], now=0.5)
    # b's full state says c is dead (say b was cut off from c for a while).
    state = PushPull((b.me, attrs.evolve(c.me, status=MemberStatus.DEAD)))
    a.handle_stream(0.5, b.me.address, b.node_id, state)
    assert status(a, c) == "suspect"  # not dead: a can still reach c
    told = [o for o in a.take_outputs() if isinstance(o, SendDatagram) and o.dest == c.me.address]
    assert told and isinstance(told[0].body, Gossip)
    assert told[0].body.updates == (Suspect(c.node_id, 0, b.node_id),)
    net.send(a, told[0])
    # c refuted at once and a took it back.
    assert c.incarnation == 1 and status(a, c) == "alive"
    net.run(10.0)
    assert not net.member_events("dead", about=c)


def test_remote_suspect_in_push_pull_is_a_suspicion_and_never_revives_a_tombstone() -> None:
    # Chaos seed 8716: a member refuted a suspicion (incarnation 1) on one side of a partition,
    # then crashed; this side had declared it dead at incarnation 0. After the heal a push-pull
    # carried "suspect at 1", which the merge took for "alive at 1": the crashed member
    # "joined" again.
    me, peer, gone, new, known = (record(i) for i in range(1, 6))
    dead = attrs.evolve(gone, status=MemberStatus.DEAD)
    a = core(me, 5, snapshot=Snapshot.of([me, peer, dead, known]))
    net = Net([a], now=1.0)
    suspect = MemberStatus.SUSPECT
    state = PushPull(
        (
            peer,
            attrs.evolve(gone, incarnation=1, status=suspect),
            attrs.evolve(new, status=suspect),
            attrs.evolve(known, incarnation=1, status=suspect, meta={"sn": True}),
        )
    )
    a.handle_stream(1.0, peer.address, peer.node_id, state)
    net.flush()
    gone_view, new_view, known_view = (a.member(r.node_id) for r in (gone, new, known))
    # The tombstone stays: no "joined" for a member this node saw die.
    assert gone_view is not None and (gone_view.status, gone_view.incarnation) == ("dead", 0)
    assert not [
        e
        for _, _, e in net.events
        if isinstance(e, MemberEvent) and e.member.node_id == gone.node_id
    ]
    # A member first heard of as suspect is learned, as a suspect.
    assert new_view is not None and new_view.status == "suspect"
    # A live member suspected at a newer incarnation: its newer record, suspected.
    assert known_view is not None
    assert (known_view.status, known_view.incarnation) == ("suspect", 1)
    assert known_view.meta == {"sn": True}
    # Each suspect is told directly (so it can refute), and the suspicions run out here too.
    told = {
        d for _, _, d, body in net.of_kind(Gossip, src=a) if isinstance(body.updates[0], Suspect)
    }
    assert {new.address, known.address} <= told
    net.run(10.0)
    assert all(a.member(r.node_id).status == "dead" for r in (new, known))  # type: ignore[union-attr]


def test_suspicion_times_out_into_dead() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.run(1.0)
    net.crash(c)
    assert net.run(10.0, stop=lambda: status(a, c) == status(b, c) == "dead")
    _, high = LAN.suspicion_bounds(3)
    for peer in (a, b):
        suspected = net.first("suspect", about=c, seen_by=peer)
        dead = net.first("dead", about=c, seen_by=peer)
        assert suspected is not None and dead is not None
        # Declared by this peer after its own timeout, or learned from the other one earlier.
        assert dead - suspected <= high + 1e-6
    declared = a.statistics().deaths_declared + b.statistics().deaths_declared
    assert declared >= 1
    assert a.live_count() == b.live_count() == 2


class Responder:
    """A stand-in member that acks every ping and understands nothing else (so it never
    refutes): its prober never doubts it, and a suspicion about it only grows by the reports
    a test feeds in."""

    def __init__(self, rec: MemberRecord) -> None:
        self.me = rec
        self.node_id = rec.node_id
        self.incarnation = rec.incarnation
        self._out: list[SendDatagram] = []

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None:
        if isinstance(body, Ping):
            self._out.append(SendDatagram(src, Ack(body.probe, self.node_id), sender, 0))

    def member(self, node_id: str) -> None:
        return None

    def take_outputs(self) -> list[SendDatagram]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Any]:
        return []

    def next_deadline(self) -> float:
        return math.inf


def test_confirmations_shorten_the_suspicion_timeout() -> None:
    members = [record(i) for i in range(1, 7)]
    me, target, *others = members  # four others: a first report and up to 3 confirmations
    low, high = LAN.suspicion_bounds(6)
    k = LAN.indirect_checks  # 3 independent confirmations bring the timeout to the minimum
    expected = {0: high, 1: high - (high - low) * math.log(2) / math.log(k + 1), 3: low}
    for confirmations, timeout in expected.items():
        m = core(me, 7, snapshot=Snapshot.of(members))
        net = Net([m, *(Responder(rec) for rec in [target, *others])], now=1.0)  # type: ignore[list-item]
        for rec in others[: confirmations + 1]:  # the first report, then the confirmations
            suspicion = Gossip((Suspect(target.node_id, 0, rec.node_id),))
            m.handle_message(1.0, rec.address, rec.node_id, suspicion)
        assert status(m, net.sim.nodes[target.address].core) == "suspect"  # type: ignore[arg-type]
        assert net.run(10.0, stop=lambda m=m: m.statistics().deaths_declared > 0)  # type: ignore[misc]
        assert net.now - 1.0 == pytest.approx(timeout, abs=1e-6), confirmations
        assert m.statistics().probes_failed == 0  # no confirmation of its own


# ---------------------------------------------------------------------------------------------
# Leave and restart


def test_leave_is_known_at_once() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.run(1.0)
    c.leave(net.now)
    net.flush()
    for peer in (a, b):
        assert status(peer, c) == "left"
        assert net.first("left", about=c, seen_by=peer) == 1.0
    assert c.has_left and c.next_deadline() == math.inf
    assert a.live_count() == 2
    # c answers no more probes and nobody suspects or kills it later.
    net.run(6.0)
    assert all(t <= 1.0 for t, *_ in net.of_kind(Ack, src=c))
    assert not net.member_events("dead", about=c) + net.member_events("suspect", about=c)


def test_rejoin_after_restart_replaces_the_tombstone() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.run(1.0)
    old = c.me
    net.crash(c)
    assert net.run(10.0, stop=lambda: status(a, c) == status(b, c) == "dead")
    # An old message from the dead incarnation is told apart from a restart: ignored.
    a.handle_message(net.now, old.address, old.node_id, Gossip((old,)))
    assert status(a, c) == "dead" and a.take_events() == []
    # Restart: same id, incarnation + 1, joining through a.
    c2 = core(attrs.evolve(old, incarnation=old.incarnation + 1), 99, now=net.now)
    net.add(c2)
    c2.add_candidate(net.now, a.me.address)
    restarted = net.now
    assert net.run(restarted + 3.0, stop=lambda: status(b, c2) == "alive")
    for peer in (a, b):
        view = peer.member(c2.node_id)
        assert view is not None and view.status == "alive" and view.incarnation == 1
        joins = [t for t, _ in net.member_events("joined", about=c2, seen_by=peer)]
        assert joins and joins[0] >= restarted
    assert status(c2, a) == status(c2, b) == "alive"
    assert a.live_count() == b.live_count() == c2.live_count() == 3


# ---------------------------------------------------------------------------------------------
# Metadata, paths, extension updates


def test_metadata_update_travels_with_a_new_incarnation() -> None:
    a, b = converged(2)
    net = Net([a, b])
    net.run(0.5)
    a.update_meta(net.now, {"roles": ["record"], "sn": True})
    assert a.incarnation == 1
    assert net.run(2.0, stop=lambda: bool(net.member_events("updated", about=a)))
    view = b.member(a.node_id)
    assert view is not None
    assert view.incarnation == 1 and view.meta == {"roles": ["record"], "sn": True}
    (_, event), *_ = net.member_events("updated", about=a, seen_by=b)
    assert event.member.meta == {"roles": ["record"], "sn": True}


def test_same_path_on_two_live_nodes_is_a_path_conflict() -> None:
    a = core(record(1, name="rbd", orchestra="cmu"), 1)
    b = core(record(2, name="rbd", orchestra="cmu"), 2)
    c = core(record(3), 3)
    net = Net([a, b, c])
    b.add_candidate(0.0, a.me.address)
    c.add_candidate(0.0, a.me.address)
    net.flush()
    conflicts = [(obs, ev) for _, obs, ev in net.events if isinstance(ev, PathConflict)]
    seen = {(obs, ev.holder.node_id) for obs, ev in conflicts}
    assert (a.node_id, b.node_id) in seen and (b.node_id, a.node_id) in seen
    assert all(obs != c.node_id for obs, _ in conflicts)
    assert all(ev.holder.path == "/cmu/rbd" for _, ev in conflicts)
    # Nothing stops: both stay live members everywhere, counted; the rule that says which keeps
    # the path is the same everywhere (earliest start, then lowest id).
    net.run(3.0)
    for x in (a, b, c):
        assert not x.has_left and x.next_deadline() < math.inf
        assert {status(x, a), status(x, b)} == {"alive"}
    assert a.statistics().path_conflicts >= 1 and b.statistics().path_conflicts >= 1
    claims = [v for v in c.members() if v.path == "/cmu/rbd"]
    assert path_winner(claims) == c.member(a.node_id)  # no start time: the lower id


def test_path_winner_prefers_the_earliest_start_then_the_lowest_id() -> None:
    def view(i: int, meta: dict[str, Any]) -> MemberView:
        rec = record(i, name="x", meta=meta)
        return MemberView(rec.node_id, "x", "o", rec.address, 0, "alive", meta, 0.0)

    early, late, odd = view(9, {"j": 5.0}), view(1, {"j": 7.5}), view(2, {"j": "soon"})
    assert path_winner([late, early, odd]) == early
    assert path_winner([late, odd]) == late  # a start time that is not a number ranks last
    assert path_winner([view(4, {"j": 5.0}), view(3, {"j": 5})]).node_id == record(3).node_id
    assert path_winner([]) is None


def test_extension_updates_reach_every_other_node() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    publication = Publish(a.node_id, 1, "cue", {"bar": 12})
    lease = Lease("conductor", a.node_id, 3, 100.5)
    a.broadcast(publication)
    a.broadcast(lease)
    net.run(5.0)  # long enough for every retransmission
    for peer in (b, c):
        got = [
            ev.update
            for _, obs, ev in net.events
            if obs == peer.node_id and isinstance(ev, UpdateReceived)
        ]
        assert got.count(publication) == 1  # a publication is handed up exactly once
        assert lease in got and all(u in (publication, lease) for u in got)
    echoed = [ev for _, obs, ev in net.events if obs == a.node_id]
    assert all(ev == UpdateReceived(lease) for ev in echoed)  # the publication is not echoed
    # Each node relays each update only the first time it sees it.
    relayed = [
        (s, u)
        for _, s, _, body in net.sent
        for u in getattr(body, "updates", ())
        if isinstance(u, Publish | Lease)
    ]
    limit = LAN.retransmit_limit(3)
    for sender in (a, b, c):
        for update in (publication, lease):
            assert relayed.count((sender.me.address, update)) <= limit
    # A duplicate datagram carrying the publication again is not a new event; a lease is
    # handed up again (the election dedupes leases and needs re-announcements) but not relayed.
    b.handle_message(net.now, a.me.address, a.node_id, Gossip((publication, lease)))
    assert b.take_events() == [UpdateReceived(lease)]
    assert b.statistics().pending_broadcasts == 0
    assert a.statistics().pending_broadcasts == 0  # retransmit budget spent, queue drained


# ---------------------------------------------------------------------------------------------
# Lifeguard: local health


def test_awareness_grows_when_nacks_are_missing_and_recovers() -> None:
    a, *others = converged(5)
    net = Net([a, *others])
    net.run(1.0)
    # a is the sick one: nothing reaches it (no acks, no nacks), while it can still send.
    for o in others:
        net.block(o, a)
    starts: list[float] = []  # when a started each of its probes

    def failed(count: int) -> Callable[[], bool]:
        def check() -> bool:
            starts.extend([net.now] * (a.statistics().probes_sent - len(starts)))
            return a.statistics().probes_failed == count

        return check

    assert net.run(10.0, stop=failed(1))
    helpers = LAN.indirect_checks
    assert a.statistics().awareness == helpers  # one point per nack that never came
    assert net.run(10.0, stop=failed(2))
    assert a.statistics().awareness == min(2 * helpers, LAN.awareness_max - 1)  # capped
    # The score stretches a's probe period: the second failed probe lasted (1 + 3) periods.
    assert net.now - starts[-1] == pytest.approx(LAN.probe_interval * (1 + helpers), abs=1e-5)
    # The healthy peers kept their scores: their helpers' nacks did arrive in time.
    assert all(o.statistics().awareness == 0 for o in others)
    net.heal()
    assert net.run(60.0, stop=lambda: a.statistics().awareness == 0)  # one off per good probe
    assert all(o.statistics().awareness == 0 for o in others)


def test_late_wakeup_blames_nobody() -> None:
    a, b = converged(2)
    net = Net([a, b])
    assert net.run(2.0, stop=lambda: bool(net.of_kind(Ping, src=a)))
    net.flush()
    # a sent a ping and is then frozen for 2 s: the ack is lost, no timer runs.
    net.stall(a, 2.0)
    net.run(net.now + 2.0)
    net.run(net.now + 0.01)
    stats = a.statistics()
    assert stats.late_wakeups >= 1
    assert stats.probes_failed == 0 and stats.suspicions_raised == 0
    assert status(a, b) == "alive"
    assert not net.member_events("suspect", about=b)


def test_a_node_woken_from_a_long_stall_does_not_accuse_the_members_that_stayed() -> None:
    """A laptop that slept 30 s wakes to a socket full of old datagrams; while it works through
    them, the answers to its first probes come late. It must not suspect the members that were
    up all along (they never stopped): its own timing is the one to doubt (the sleeping-laptop
    test found such a flap live)."""
    a, *others = converged(4)
    net = Net([a, *others])
    net.run(2.0)
    net.stall(a, 30.0)
    net.run(net.now + 30.0)
    # For the first 0.4 s after the wake nothing reaches a in time (its backlog).
    for o in others:
        net.block(o, a)
    net.run(net.now + 0.4)
    assert a.statistics().late_wakeups >= 1
    net.heal()
    net.run(net.now + 10.0)
    for o in others:
        assert not net.member_events("suspect", about=o, seen_by=a), o.node_id
    assert a.statistics().suspicions_raised == 0
    # Its probes succeed again, so its trust in its own timing comes back.
    assert net.run(net.now + 60.0, stop=lambda: a.statistics().awareness == 0)


# ---------------------------------------------------------------------------------------------
# Datagram size


def test_piggyback_stays_under_the_datagram_limit_in_a_large_busy_group() -> None:
    meta = {"roles": ["record", "encode", "upload"], "sn": True, "note": "x" * 40}
    records = [record(i, meta=meta) for i in range(1, 301)]
    snapshot = Snapshot.of(records)
    a = core(records[0], 1, snapshot=snapshot)
    b = core(records[1], 2, snapshot=snapshot)
    net = Net([a, b])  # the other 298 members are addresses nobody answers from
    # Many pending updates at once: a push-pull teaching a newer incarnation of everyone,
    # suspicions, deaths and publications with sizeable payloads.
    newer = tuple(attrs.evolve(r, incarnation=5) for r in records[2:])
    a.handle_stream(0.0, b.me.address, b.node_id, PushPull(newer))
    suspects = tuple(Suspect(r.node_id, 5, b.node_id) for r in records[100:110])
    deaths = tuple(Dead(r.node_id, 5, b.node_id) for r in records[110:115])
    a.handle_message(0.0, b.me.address, b.node_id, Gossip(suspects))
    a.handle_message(0.0, b.me.address, b.node_id, Gossip(deaths))
    for number in range(1, 31):
        a.broadcast(Publish(a.node_id, number, "t" * 100, "p" * 600))
    assert a.statistics().pending_broadcasts > 90
    net.run(20.0)
    assert net.largest <= MAX_DATAGRAM
    assert net.largest > 900  # the piggyback budget was really filled
    # Nothing was held back for its size: every publication went out.
    sent = {
        u.number
        for *_, body in net.sent
        for u in getattr(body, "updates", ())
        if isinstance(u, Publish)
    }
    assert sent == set(range(1, 31))


def test_a_full_ping_with_a_buddy_notice_fits_at_the_largest_header() -> None:
    """The worst case: the longest federation name, a signed codec, 9-byte integers in the
    header, a piggyback filled to its budget, and the suspicion prepended beyond it."""
    big = MAX_COUNTER - 1000
    a_rec, b_rec = (attrs.evolve(record(i), incarnation=big) for i in (1, 2))
    a = core(a_rec, 1, snapshot=Snapshot.of([a_rec, b_rec]))
    b = core(b_rec, 2, snapshot=Snapshot.of([a_rec, b_rec]))
    net = Net([a, b])
    for node in net.sim.nodes.values():
        node.seq = big
    a.handle_message(0.0, b.me.address, b.node_id, Gossip((Suspect(b.node_id, big, a.node_id),)))
    a.take_outputs()  # the direct notice
    for number in range(1, 200):  # many small updates, so the budget is filled to the byte
        a.broadcast(Publish(a.node_id, number, "t", "x" * (number % 7)))
    net.block(a, b)
    assert net.run(
        2.0,
        stop=lambda: any(
            isinstance(body, Ping) and body.updates and isinstance(body.updates[0], Suspect)
            for *_, body in net.sent
        ),
    )
    (ping,) = [body for *_, body in net.sent if isinstance(body, Ping) and body.updates]
    assert sum(update_size(u) for u in ping.updates[1:]) > a.piggyback_budget - 20
    assert net.largest <= MAX_DATAGRAM


def test_every_datagram_of_a_protocol_run_fits() -> None:
    """A busy three-node run through join, suspicion, refutation and leave never sends more
    than 1200 bytes (the simulator encodes and checks every datagram)."""
    a, b = converged(2)
    c = core(record(3, meta={"roles": ["stream"] * 20}), 3)
    net = Net([a, b, c])
    c.add_candidate(0.0, a.me.address)
    net.run(2.0)
    net.isolate(b)
    net.run(3.0)
    net.heal()
    net.run(6.0)
    c.leave(net.now)
    net.run(8.0)
    assert net.sent and net.largest <= MAX_DATAGRAM
    assert {type(body) for *_, body in net.sent} >= {Ping, Ack, PingReq, Gossip}


# ---------------------------------------------------------------------------------------------
# Hostile news: absurd incarnations, forged departures (issue 18, findings 5 and 8)


def _alive_at(observer: Membership, member: Membership, incarnation: int) -> bool:
    view = observer.member(member.node_id)
    return view is not None and (view.status, view.incarnation) == ("alive", incarnation)


def test_an_absurd_suspicion_cannot_move_an_incarnation() -> None:
    """A suspicion at the largest incarnation the wire carries: peers apply it at the
    incarnation they saw from the member, and the member refutes at its own + 1."""
    a, b, c = converged(3)
    net = Net([a, b, c])
    forged = Gossip((Suspect(c.node_id, MAX_COUNTER, b.node_id),))
    a.handle_message(0.0, b.me.address, b.node_id, forged)
    assert a.member(c.node_id).incarnation == 0  # type: ignore[union-attr]
    net.flush()  # a tells c at once (bound to c's incarnation as a knows it); c refutes
    assert c.incarnation == 1
    assert net.run(1.0, stop=lambda: all(_alive_at(p, c, 1) for p in (a, b)))
    assert a.statistics().refused == {"incarnation ahead": 1}
    # The forged number went no further: a relayed (and told c) the suspicion at 0.
    relayed = [u for *_, body in net.sent for u in getattr(body, "updates", ())]
    assert Suspect(c.node_id, 0, b.node_id) in relayed
    assert all(getattr(u, "incarnation", 0) < MAX_COUNTER for u in relayed)
    net.run(10.0)
    assert not net.member_events("dead", about=c) and c.incarnation == 1


@pytest.mark.parametrize("left", [False, True])
def test_an_absurd_death_notice_cannot_move_an_incarnation(left: bool) -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    a.handle_message(
        0.0, b.me.address, b.node_id, Gossip((Dead(c.node_id, 2**50, c.node_id, left),))
    )
    net.flush()
    assert c.incarnation == 1
    assert net.run(1.0, stop=lambda: all(_alive_at(p, c, 1) for p in (a, b)))
    net.run(10.0)
    assert c.incarnation == 1 and not net.member_events("dead", about=c)


def test_a_forged_departure_is_refuted_at_once() -> None:
    """A 'left' notice about a running node, sent to everyone but that node: each receiver
    tells the node directly, and it refutes before the next full-state exchange."""
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.run(1.0)
    forged = Gossip((Dead(c.node_id, 0, c.node_id, left=True),))
    for peer in (a, b):
        peer.handle_message(net.now, b.me.address, c.node_id, forged)
    assert status(a, c) == status(b, c) == "left"
    net.flush()
    assert c.incarnation == 1 and c.statistics().refutations == 1
    assert status(a, c) == status(b, c) == "alive"
    assert net.first("joined", about=c, seen_by=a) == 1.0


def test_a_member_held_gone_that_probes_us_is_told_so_in_the_ack() -> None:
    a, b, c = converged(3)
    net = Net([a, b, c])
    net.block(a, c)  # a's direct notice to c is lost
    a.handle_message(0.0, b.me.address, c.node_id, Gossip((Dead(c.node_id, 0, c.node_id, True),)))
    net.flush()
    assert status(a, c) == "left" and c.incarnation == 0
    a.handle_message(0.1, c.me.address, c.node_id, Ping(3, a.node_id))
    (ack,) = [o for o in a.take_outputs() if isinstance(o, SendDatagram)]
    assert isinstance(ack.body, Ack)
    assert ack.body.updates[0] == Dead(c.node_id, 0, a.node_id, True)
    net.heal()
    net.send(a, ack)
    assert c.incarnation == 1 and status(a, c) == "alive"


def test_a_record_of_this_node_ahead_of_it_is_refuted_at_its_own_plus_one() -> None:
    a, b = converged(2)
    net = Net([a, b])
    forged = attrs.evolve(b.me, incarnation=MAX_COUNTER)
    b.handle_message(0.0, a.me.address, a.node_id, Gossip((forged,)))
    assert b.incarnation == 1 and b.statistics().refused == {"ahead of self": 1}
    net.flush()


def test_an_exhausted_incarnation_stops_refuting_but_nothing_breaks() -> None:
    a_rec, b_rec = record(1), attrs.evolve(record(2), incarnation=MAX_COUNTER)
    a = core(a_rec, 1, snapshot=Snapshot.of([a_rec, b_rec]))
    b = core(b_rec, 2, snapshot=Snapshot.of([a_rec, b_rec]))
    net = Net([a, b])
    b.handle_message(
        0.0, a.me.address, a.node_id, Gossip((Suspect(b.node_id, MAX_COUNTER, a.node_id),))
    )
    assert b.incarnation == MAX_COUNTER
    assert b.statistics().refused == {"incarnation exhausted": 1}
    b.update_meta(0.0, {"x": 1})
    assert b.incarnation == MAX_COUNTER
    net.flush()


# -- sites: the supernode tier (Membership(wan=...)) -------------------------------------------

WAN = get_profile("wan")


def site_core(rec: MemberRecord, others: Iterable[MemberRecord], seed: int = 1) -> Membership:
    """A core with the site tier on, knowing *others* already."""
    snapshot = Snapshot.of([rec, *others])
    return Membership(rec, LAN, now=0.0, rng=random.Random(seed), snapshot=snapshot, wan=WAN)


def pinged(outputs: Iterable[object]) -> set[str]:
    return {o.to for o in outputs if isinstance(o, SendDatagram) and o.to is not None}


def test_with_sites_a_member_talks_to_its_own_orchestra_only() -> None:
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    far = [record(3, orchestra="b"), record(4, orchestra="b")]
    m = site_core(me, [mate, *far])
    m.broadcast(Publish(me.node_id, 1, "t", "x"))  # something to gossip
    talked: set[str] = set()
    now = 0.0
    while now < 60.0:
        now = m.next_deadline()
        m.handle_timer(now)
        talked |= pinged(m.take_outputs())
    assert talked == {mate.node_id}
    # The other orchestra's members were never probed, so never suspected (the silent mate,
    # probed on the LAN, died).
    assert {v.node_id: v.status for v in m.members() if v.orchestra == "b"} == {
        r.node_id: "alive" for r in far
    }


def test_with_sites_a_supernode_probes_its_contacts_on_the_wan_timings() -> None:
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    contact, far = record(3, orchestra="b"), record(4, orchestra="b")
    m = site_core(me, [mate, contact, far])
    m.set_contacts([contact.node_id])
    pings: list[float] = []
    now = 0.0
    while now < 20.0:
        now = m.next_deadline()
        m.handle_timer(now)
        for out in m.take_outputs():
            if isinstance(out, SendDatagram) and isinstance(out.body, Ping):
                assert out.to != far.node_id
                if out.to == contact.node_id:
                    pings.append(now)
    # A probe every 2 s (the wan interval), not every 0.3 s; the silent contact is suspected
    # (no answer) but not dead: the wan suspicion lasts 8-32 s.
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert gaps and min(gaps) >= WAN.probe_interval - 1e-6
    assert m.member(contact.node_id) is not None
    assert m.member(contact.node_id).status == "suspect"  # type: ignore[union-attr]


def test_with_sites_a_death_reported_by_the_members_own_orchestra_stands() -> None:
    me = record(1, orchestra="a")
    far, its_mate = record(3, orchestra="b"), record(4, orchestra="b")
    stranger = record(5, orchestra="c")
    m = site_core(me, [far, its_mate, stranger])
    # From another orchestra's member: a suspicion on the wan timings, not a death.
    m.handle_message(
        0.0, stranger.address, stranger.node_id, Gossip((Dead(far.node_id, 0, stranger.node_id),))
    )
    assert m.member(far.node_id).status == "suspect"  # type: ignore[union-attr]
    # From its own orchestra (its LAN saw it die): dead at once.
    m.handle_message(
        0.1, its_mate.address, its_mate.node_id, Gossip((Dead(far.node_id, 0, its_mate.node_id),))
    )
    assert m.member(far.node_id).status == "dead"  # type: ignore[union-attr]


def gossiped_to(outputs: Iterable[object], node_id: str) -> list[object]:
    """The updates of every Gossip datagram among *outputs* bound to *node_id*."""
    return [
        update
        for o in outputs
        if isinstance(o, SendDatagram) and o.to == node_id and isinstance(o.body, Gossip)
        for update in o.body.updates
    ]


def test_with_sites_a_stale_notice_from_another_site_is_answered_for_the_member() -> None:
    # The other site suspects this site's member at the incarnation it refuted (the refutation
    # was lost across the WAN): it cannot reach the member, so this node answers for it.
    me, mate = record(1, orchestra="a"), attrs.evolve(record(2, orchestra="a"), incarnation=2)
    far = record(3, orchestra="b")
    m = site_core(me, [mate, far])
    m.set_contacts([far.node_id])
    m.handle_message(
        0.0, far.address, far.node_id, Gossip((Suspect(mate.node_id, 1, far.node_id),))
    )
    assert mate in gossiped_to(m.take_outputs(), far.node_id)
    assert m.member(mate.node_id).status == "alive"  # type: ignore[union-attr]
    # A notice from its own site is not answered so (the member answers for itself).
    m.handle_message(0.1, mate.address, mate.node_id, Gossip((Dead(mate.node_id, 1, me.node_id),)))
    assert gossiped_to(m.take_outputs(), mate.node_id) == []


def test_with_sites_a_supernode_passes_a_lease_reannouncement_across() -> None:
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    contact = record(3, orchestra="b")
    m = site_core(me, [mate, contact])
    m.set_contacts([contact.node_id])
    lease = Lease("conductor", mate.node_id, 1, 0.0)
    m.handle_message(0.0, mate.address, mate.node_id, Gossip((lease,)))  # new: gossiped as usual
    m.take_outputs()
    # Re-announced by its holder, already seen: straight on to the contact, once a second.
    m.handle_message(3.0, mate.address, mate.node_id, Gossip((lease,)))
    assert gossiped_to(m.take_outputs(), contact.node_id) == [lease]
    m.handle_message(3.5, mate.address, mate.node_id, Gossip((lease,)))
    assert gossiped_to(m.take_outputs(), contact.node_id) == []
    # From the other site, already seen: on to this site's members.
    m.handle_message(6.0, contact.address, contact.node_id, Gossip((lease,)))
    assert gossiped_to(m.take_outputs(), mate.node_id) == [lease]


def test_with_sites_a_supernode_passes_news_across_however_often_its_site_had_it() -> None:
    # A member pinging the supernode often (each ack carries the queued news) spent every
    # send an update had before the supernode's next gossip round reached its contact: the
    # conductor's tempo never reached the other site (the concert metronome waited for it
    # forever, 1 run in 10). Sends within the site and across are counted apart.
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    contact = record(3, orchestra="b")
    m = site_core(me, [mate, contact])
    m.set_contacts([contact.node_id])
    tempo = Publish(me.node_id, 1, "tempo", {"bpm": 240})
    m.broadcast(tempo)
    for probe in range(LAN.retransmit_limit(m.live_count())):
        m.handle_message(0.0, mate.address, mate.node_id, Ping(probe, me.node_id))
    assert gossiped_to(m.take_outputs(), contact.node_id) == []
    _, outputs = run_site_core(m, 5.0, [mate, contact])
    sent = [o for _, o in outputs]
    crossed = [u for u in carried_to(sent, contact.node_id) if u == tempo]
    assert len(crossed) == WAN.retransmit_mult  # as often as a member of a site of its own
    assert tempo not in carried_to(sent, mate.node_id)  # the site's sends were spent
    m.set_contacts([])
    m.broadcast(Publish(me.node_id, 2, "tempo", {"bpm": 120}))
    _, outputs = run_site_core(m, 10.0, [mate], now=5.0)
    assert carried_to([o for _, o in outputs], contact.node_id) == []  # no contact: no crossing


def carried_to(outputs: Iterable[object], node_id: str) -> list[object]:
    """The updates every datagram among *outputs* bound to *node_id* carries (gossip, or
    piggybacked on a ping or an ack)."""
    return [
        update
        for o in outputs
        if isinstance(o, SendDatagram) and o.to == node_id
        for update in getattr(o.body, "updates", ())
    ]


def run_site_core(
    m: Membership, until: float, answering: Iterable[MemberRecord], now: float = 0.0
) -> tuple[float, list[tuple[float, object]]]:
    """Run *m*'s timers until *until*, acking its pings to the members *answering* (so they
    stay alive); return *until* and every output with the time it was made."""
    answer = {r.node_id for r in answering}
    outputs: list[tuple[float, object]] = []
    while True:
        deadline = m.next_deadline()
        if deadline > until:
            return until, outputs
        now = deadline
        m.handle_timer(now)
        for out in m.take_outputs():
            outputs.append((now, out))
            body = out.body if isinstance(out, SendDatagram) else None
            if isinstance(body, Ping) and out.to in answer:
                m.handle_message(now, out.dest, body.target, Ack(body.probe, body.target))


def test_with_sites_a_member_never_acts_on_a_suspicion_of_another_sites_member() -> None:
    # A member that is not its site's supernode holds a suspicion of another site's member
    # that may never have reached that site (its supernode held the member dead at an older
    # incarnation then, and dropped it), or whose refutation was lost across: nobody would
    # refute it, and it declared a live member dead a few seconds after the faults (chaos
    # seed 1 of the registry sweep). It cannot check it: each time it runs out, it hands it to
    # its site again, and a verdict ends it; only if nobody answers for two of its longest
    # timeouts is it acted on (an incarnation only this node heard of: chaos seed 16).
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    far, its_mate = record(3, orchestra="b"), record(4, orchestra="b")
    m = site_core(me, [mate, far, its_mate])
    notice = Suspect(far.node_id, 0, mate.node_id)
    m.handle_message(0.0, mate.address, mate.node_id, Gossip((notice,)))
    timeout = WAN.suspicion_bounds(m.live_count())[1]  # no confirmations: the longest
    now, outputs = run_site_core(m, 2 * timeout - 0.5, [mate])
    assert m.member(far.node_id).status == "suspect"  # type: ignore[union-attr]
    handed = [t for t, o in outputs if notice in gossiped_to([o], mate.node_id)]
    assert any(t >= timeout for t in handed)  # handed to the site again
    assert m.statistics().deaths_declared == 0
    # Unanswered for two of its longest timeouts: acted on at its next time out.
    unanswered = site_core(me, [mate, far, its_mate], seed=3)
    unanswered.handle_message(0.0, mate.address, mate.node_id, Gossip((notice,)))
    run_site_core(unanswered, 2 * timeout + 0.5, [mate])
    assert unanswered.member(far.node_id).status == "dead"  # type: ignore[union-attr]
    # A refutation ends it, as any suspicion.
    refuted = attrs.evolve(far, incarnation=1)
    m.handle_message(now, mate.address, mate.node_id, Gossip((refuted,)))
    assert m.member(far.node_id).status == "alive"  # type: ignore[union-attr]
    # So does the member's own site's verdict.
    m.handle_message(
        now, mate.address, mate.node_id, Gossip((Suspect(far.node_id, 1, mate.node_id),))
    )
    m.handle_message(
        now, mate.address, mate.node_id, Gossip((Dead(far.node_id, 1, its_mate.node_id),))
    )
    assert m.member(far.node_id).status == "dead"  # type: ignore[union-attr]


def test_with_sites_a_member_answers_its_site_for_another_sites_member() -> None:
    # A member of this site that missed its site's verdict or refutation about another site's
    # member hands its suspicion to the site again: whoever here knows better answers it.
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    far, gone = attrs.evolve(record(3, orchestra="b"), incarnation=2), record(4, orchestra="b")
    m = site_core(me, [mate, far, gone])
    verdict = Dead(gone.node_id, 0, gone.node_id)  # (its own site's: stands)
    m.handle_message(0.0, mate.address, mate.node_id, Gossip((verdict,)))
    assert m.member(gone.node_id).status == "dead"  # type: ignore[union-attr]
    m.take_outputs()
    # A suspicion of a member held dead: answered with the death.
    m.handle_message(
        1.0, mate.address, mate.node_id, Gossip((Suspect(gone.node_id, 0, mate.node_id),))
    )
    assert Dead(gone.node_id, 0, me.node_id) in gossiped_to(m.take_outputs(), mate.node_id)
    # A death notice is not answered with one (two nodes that agree would answer for ever).
    m.handle_message(
        1.1, mate.address, mate.node_id, Gossip((Dead(gone.node_id, 0, mate.node_id),))
    )
    assert gossiped_to(m.take_outputs(), mate.node_id) == []
    # A notice older than the member's alive record here: answered with the record.
    m.handle_message(
        1.2, mate.address, mate.node_id, Gossip((Suspect(far.node_id, 1, mate.node_id),))
    )
    assert far in gossiped_to(m.take_outputs(), mate.node_id)
    assert m.member(far.node_id).status == "alive"  # type: ignore[union-attr]


def told_once_more(m: Membership, contact: MemberRecord, until: float) -> float:
    """Run *m* (its mate answering) until it tells *contact* of its suspicion in a datagram of
    its own (not a probe) after the shortest wan suspicion; return when."""
    low = WAN.suspicion_bounds(m.live_count())[0]
    now = 0.0
    while now < until:
        now, outputs = run_site_core(m, now + 0.05, [record(2, orchestra="a")], now)
        for t, o in outputs:
            if (
                t >= low - 1e-6
                and isinstance(o, SendDatagram)
                and isinstance(o.body, Gossip)
                and any(isinstance(u, Suspect) for u in gossiped_to([o], contact.node_id))
            ):
                return t
    raise AssertionError("never told once more")


def test_with_sites_a_contact_is_told_once_more_before_it_is_declared_dead() -> None:
    # The supernode's own wan probes suspected its contact while the sites were cut off; they
    # carried the suspicion to it only while the path worked. When the suspicion runs out,
    # the contact is told once more and has a wan probe timeout to refute (chaos seed 2336 of
    # the registry sweep: declared dead 0.4 s after the partition healed, back 50 ms later).
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    contact = record(3, orchestra="b")
    notice = Gossip((Suspect(contact.node_id, 0, mate.node_id),))
    for refutes in (False, True):
        m = site_core(me, [mate, contact], seed=2 if refutes else 1)
        m.set_contacts([contact.node_id])
        m.handle_message(0.0, mate.address, mate.node_id, notice)
        told = told_once_more(m, contact, 60.0)
        assert m.member(contact.node_id).status == "suspect"  # type: ignore[union-attr]
        if refutes:
            refuted = attrs.evolve(contact, incarnation=1)
            m.handle_message(told, contact.address, contact.node_id, Gossip((refuted,)))
        run_site_core(m, told + WAN.probe_timeout - 0.01, [mate, contact], told)
        assert m.member(contact.node_id).status == ("alive" if refutes else "suspect")  # type: ignore[union-attr]
        run_site_core(m, told + WAN.probe_timeout + 0.5, [mate, contact], told)
        # No refutation within the probe timeout: dead; a refutation: alive.
        assert m.member(contact.node_id).status == ("alive" if refutes else "dead")  # type: ignore[union-attr]


def exchanges_with(outputs: Iterable[tuple[float, object]], node_id: str) -> list[float]:
    """When the push-pulls among *outputs* bound to *node_id* were opened."""
    return [t for t, o in outputs if isinstance(o, OpenStream) and o.to == node_id]


def test_with_sites_a_supernode_checks_its_suspicion_of_another_sites_member_there() -> None:
    # The supernode suspects a member of the other site (not a contact: that site decides its
    # liveness), at the incarnation the member refuted while the sites were cut off (the
    # refutation was lost across). It exchanges state with that site's contact every reconnect
    # interval while the suspicion lasts (the exchange carries the suspicion there, and brings
    # the member's current record back), once more at once each time the suspicion runs out,
    # and does not declare the member dead on its own timer while its site may answer (chaos
    # seeds 354, 58 and 662 of the registry sweep).
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    contact, far = record(3, orchestra="b"), record(4, orchestra="b")
    m = site_core(me, [mate, contact, far])
    m.set_contacts([contact.node_id])
    notice = Gossip((Suspect(far.node_id, 0, mate.node_id),))
    m.handle_message(0.0, mate.address, mate.node_id, notice)
    low, high = WAN.suspicion_bounds(m.live_count())
    now, outputs = run_site_core(m, low, [mate, contact])
    asked = exchanges_with(outputs, contact.node_id)
    assert asked and asked[0] <= 1.25 * LAN.reconnect_interval  # checked before the shortest
    # The request carries the suspicion to the member's site.
    first = next(o for _, o in outputs if isinstance(o, OpenStream) and o.to == contact.node_id)
    assert isinstance(first, OpenStream)
    held = {r.node_id: r.status for r in first.body.members}
    assert held[far.node_id] == MemberStatus.SUSPECT
    # Every reconnect interval while it lasts; and at each time out, at once.
    now, outputs = run_site_core(m, 2 * high - 0.5, [mate, contact], now)
    asked = exchanges_with(outputs, contact.node_id)
    gaps = [b - a for a, b in itertools.pairwise([*asked])]
    assert gaps and max(gaps) <= 1.25 * LAN.reconnect_interval + 1e-6
    assert m.member(far.node_id).status == "suspect"  # type: ignore[union-attr]
    assert any(abs(t - high) < 0.5 for t in asked)
    # The answer: the member refuted there; the suspicion ends here.
    exchange = next(o for _, o in outputs if isinstance(o, OpenStream) and o.to == contact.node_id)
    assert isinstance(exchange, OpenStream)
    refuted = attrs.evolve(far, incarnation=1)
    m.handle_stream_reply(now, exchange.exchange, PushPull((contact, refuted), reply=True))
    assert m.member(far.node_id).status == "alive"  # type: ignore[union-attr]
    assert m.member(far.node_id).incarnation == 1  # type: ignore[union-attr]
    # Or the answer is its site's verdict, which stands as it does in gossip.
    m.handle_message(
        now, mate.address, mate.node_id, Gossip((Suspect(far.node_id, 1, mate.node_id),))
    )
    assert m.member(far.node_id).status == "suspect"  # type: ignore[union-attr]
    # (In a state exchange the member's site started: its dead record is that site's verdict.)
    dead = attrs.evolve(far, incarnation=1, status=MemberStatus.DEAD)
    m.handle_stream(now, contact.address, contact.node_id, PushPull((contact, dead)))
    assert m.member(far.node_id).status == "dead"  # type: ignore[union-attr]


def test_with_sites_supernodes_exchange_state_on_the_wan_schedule() -> None:
    # Only the supernodes cross, so a record whose one crossing was lost (a member that joined
    # the other site while the sites were cut off) waited for a push-pull that happened to
    # pick a contact: 130 s after the faults (chaos seeds 2247 and 2328 of the registry
    # sweep). A supernode now exchanges state with a contact every wan push-pull period (0.75
    # to 1.25 of it), the first within one period; a member that is not a supernode never.
    me, mate = record(1, orchestra="a"), record(2, orchestra="a")
    contact = record(3, orchestra="b")
    period = WAN.push_pull_period(3)
    for seed in range(5):
        m = site_core(me, [mate, contact], seed=seed)
        m.set_contacts([contact.node_id])
        _, outputs = run_site_core(m, 5 * period, [mate, contact])
        asked = exchanges_with(outputs, contact.node_id)
        assert asked and asked[0] <= period
        gaps = [b - a for a, b in itertools.pairwise([0.0, *asked])]
        assert max(gaps) <= 1.25 * period + 1e-6
        member = site_core(mate, [me, contact], seed=seed)
        _, outputs = run_site_core(member, 5 * period, [me])
        assert exchanges_with(outputs, contact.node_id) == []
