"""The tempo helper: the pure model (beats over federation time), the replication core driven by
hand (a conductor and a follower back to back), and live in-process nodes on loopback (a late
joiner learns the tempo; a non-conductor's tempo is not obeyed; a new conductor carries on)."""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from hypothesis import given, strategies as st

import mesh
from mesh import (
    TEMPO_TOPIC,
    InvalidTempo,
    NotConductor,
    Tempo,
    TempoChanged,
    TempoIgnored,
    TempoReplica,
)
from mesh._node import Node, open_node
from tests.harness import wait_for
from tests.livenodes import loopback_config

# -- the model ----------------------------------------------------------------------------------


def test_beats_bars_and_phase_at_a_federation_time() -> None:
    tempo = Tempo.start(bpm=120, meter=4, origin=100.0)
    pos = tempo.at(101.25)  # 1.25 s at 2 beats/s: beat 2.5
    assert pos.beat == pytest.approx(2.5)
    assert pos.bar == 0 and pos.beat_in_bar == pytest.approx(2.5)
    assert pos.phase == pytest.approx(0.5)
    assert tempo.at(103.0).bar == 1 and tempo.at(103.0).beat_in_bar == pytest.approx(2.0)
    before = tempo.at(99.5)  # a count-in before the origin
    assert before.beat == pytest.approx(-1.0) and before.bar == -1
    assert before.beat_in_bar == pytest.approx(3.0)
    assert tempo.time_at_beat(8) == pytest.approx(104.0)
    assert tempo.next_beat(101.2) == pytest.approx(101.5)
    assert tempo.next_bar(100.1) == pytest.approx(102.0)
    assert tempo.next_bar(102.0) == pytest.approx(102.0)


def test_a_tempo_change_keeps_the_beat_continuous() -> None:
    tempo = Tempo.start(bpm=120, meter=4, origin=0.0)
    at = tempo.next_bar(1.0)  # 2.0 s: bar 1, beat 4
    faster = tempo.change(at, bpm=180)
    assert faster.version == tempo.version + 1
    assert faster.beat_at(at) == pytest.approx(4.0)
    assert faster.beat_at(at + 1.0) == pytest.approx(7.0)  # 3 beats/s after the change
    assert faster.beat_at(1.0) == pytest.approx(2.0)  # the old tempo before it
    assert faster.time_at_beat(7.0) == pytest.approx(3.0)
    assert faster.time_at_beat(2.0) == pytest.approx(1.0)
    assert faster.next_change(1.0) == pytest.approx(2.0) and faster.next_change(2.5) is None
    waltz = faster.change(faster.next_bar(2.5), meter=3)  # at bar 2 (beat 8, t = 3.333 s)
    pos = waltz.at(waltz.time_at_beat(11.0))
    assert pos.bar == 3 and pos.beat_in_bar == pytest.approx(0.0, abs=1e-9)
    assert pos.meter == 3


def test_changes_keep_at_most_four_segments_and_prune_the_past() -> None:
    tempo = Tempo.start(bpm=60, origin=0.0)
    for i in range(1, 8):
        tempo = tempo.change(float(i), bpm=60 + i)
    assert len(tempo.segments) == 4 and tempo.segments[-1].bpm == 67
    assert len(tempo.pruned(6.5).segments) == 2  # the one in force and the one scheduled


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bpm": 0}, "bpm must be in"),
        ({"bpm": 1000.5}, "bpm must be in"),
        ({"bpm": math.nan}, "finite"),
        ({"bpm": 120, "meter": 0}, "meter"),
        ({"bpm": 120, "meter": 2.5}, "meter"),
        ({"bpm": 120, "origin": math.inf}, "finite"),
    ],
)
def test_out_of_range_tempos_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidTempo, match=message):
        Tempo.start(**kwargs)  # type: ignore[arg-type]


@given(
    bpm=st.floats(1, 999),
    meter=st.integers(1, 64),
    origin=st.floats(-1e6, 1e6),
    changes=st.lists(st.tuples(st.floats(0.01, 100), st.floats(1, 999)), max_size=6),
    probe=st.floats(-100, 1000),
)
def test_time_at_beat_inverts_beat_at(
    bpm: float, meter: int, origin: float, changes: list[tuple[float, float]], probe: float
) -> None:
    tempo = Tempo.start(bpm, meter, origin)
    at = origin
    for step, new_bpm in changes:
        at += step
        tempo = tempo.change(at, bpm=new_bpm)
    t = origin + probe
    if t < tempo.segments[0].since:
        return  # before the oldest kept segment the model extrapolates it (no inverse promise)
    assert tempo.time_at_beat(tempo.beat_at(t)) == pytest.approx(t, abs=1e-6)
    assert Tempo.from_payload(tempo.to_payload()) == tempo


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"v": 1},
        {"v": "1", "s": [[0.0, 120.0, 4, 0.0, 0.0]]},
        {"v": 1, "s": []},
        {"v": 1, "s": [[0.0, 120.0, 4, 0.0]]},
        {"v": 1, "s": [[0.0, 120.0, 4.0, 0.0, 0.0]]},
        {"v": 1, "s": [[0.0, -5.0, 4, 0.0, 0.0]]},
        {"v": 1, "s": [[0.0, 120.0, 4, "x", 0.0]]},
        {"v": 1, "s": [[1.0, 120.0, 4, 0.0, 0.0], [0.5, 120.0, 4, 0.0, 0.0]]},
        {"v": 1, "s": [[0.0, 120.0, 4, 0.0, 0.0]] * 5},
        {"v": -1, "s": [[0.0, 120.0, 4, 0.0, 0.0]]},
    ],
)
def test_malformed_published_tempos_are_refused(payload: mesh._wire.Value) -> None:
    with pytest.raises(InvalidTempo):
        Tempo.from_payload(payload)


# -- the replica, driven by hand --------------------------------------------------------------


def deliver(sender: TempoReplica, receivers: list[TempoReplica], now: float) -> None:
    for payload in sender.take_publications():
        for r in receivers:
            r.handle_publication(now, sender.me, f"/o/{sender.me}", payload)


def test_only_the_conductor_sets_and_followers_obey_only_it() -> None:
    conductor, follower, rogue = TempoReplica("c"), TempoReplica("f"), TempoReplica("r")
    everyone = [conductor, follower, rogue]
    for r in everyone:
        r.handle_conductor(0.0, "c")
    with pytest.raises(NotConductor):
        rogue.set(0.0, Tempo.start(90))
    set_ = conductor.set(1.0, Tempo.start(120, origin=2.0))
    deliver(conductor, everyone, 1.0)
    assert follower.current == set_ and rogue.current == set_
    assert [type(e) for e in follower.take_events()] == [TempoChanged]
    # A rogue node publishing a tempo (by hand: its replica refused to) is reported, not obeyed.
    forged = Tempo.start(60).with_version(99).to_payload()
    follower.handle_publication(1.5, "r", "/o/r", forged)
    assert follower.current == set_ and follower.ignored == 1
    assert follower.take_events() == [TempoIgnored("r", "/o/r", 99)]


def test_the_conductor_republishes_periodically_and_when_someone_joins() -> None:
    conductor = TempoReplica("c", republish=2.0)
    conductor.handle_conductor(0.0, "c")
    conductor.set(0.0, Tempo.start(120))
    assert len(conductor.take_publications()) == 1
    assert conductor.next_deadline() == pytest.approx(2.0)
    conductor.handle_timer(1.0)
    assert conductor.take_publications() == []
    conductor.handle_timer(2.0)
    assert len(conductor.take_publications()) == 1
    conductor.handle_join(2.5)
    assert conductor.next_deadline() == pytest.approx(2.5)
    conductor.handle_timer(2.5)
    assert len(conductor.take_publications()) == 1  # at once, though one went out 0.5 s ago
    late = TempoReplica("late")
    late.handle_conductor(2.5, "c")
    conductor.handle_join(2.6)
    conductor.handle_timer(2.6)
    deliver(conductor, [late], 2.6)
    assert late.current is not None and late.current.bpm_at(3.0) == 120


def test_a_second_keeper_on_the_conductor_node_does_not_double_the_republications() -> None:
    a, b = TempoReplica("c", republish=2.0), TempoReplica("c", republish=2.0)
    for r in (a, b):
        r.handle_conductor(0.0, "c")
    a.set(0.0, Tempo.start(120))
    deliver(a, [a, b], 0.0)
    sent = 0
    for step in range(1, 41):
        now = step * 0.25
        for r in (a, b):
            r.handle_timer(now)
        for r in (a, b):
            out = r.take_publications()
            sent += len(out)
            for payload in out:
                for other in (a, b):
                    other.handle_publication(now, "c", "/o/c", payload)
    assert sent == 5  # 10 s at one every 2 s


def test_a_new_conductor_adopts_the_tempo_in_force_with_a_higher_version() -> None:
    old, heir, follower = TempoReplica("old"), TempoReplica("heir"), TempoReplica("f")
    for r in (old, heir, follower):
        r.handle_conductor(0.0, "old")
    sent = old.set(0.0, Tempo.start(100, origin=5.0))
    deliver(old, [old, heir, follower], 0.0)
    for r in (heir, follower):
        r.handle_conductor(10.0, "heir")
    heir.handle_timer(10.0)
    deliver(heir, [heir, follower], 10.0)
    assert follower.current is not None and follower.current.version > sent.version
    assert follower.current.beat_at(20.0) == pytest.approx(sent.beat_at(20.0))
    # The old conductor's late republication is now from a non-conductor: ignored.
    follower.handle_publication(10.5, "old", "/o/old", sent.to_payload())
    assert follower.current.version > sent.version and follower.ignored == 1


def test_a_publication_that_arrives_before_the_conductor_is_known_is_kept() -> None:
    follower = TempoReplica("f")
    tempo = Tempo.start(140).with_version(3)
    follower.handle_publication(0.0, "c", "/o/c", tempo.to_payload())
    assert follower.current is None and follower.ignored == 0  # not reported: undecided
    follower.handle_conductor(0.1, "c")
    assert follower.current == tempo


# -- live nodes ---------------------------------------------------------------------------------


async def test_a_late_joiner_learns_the_tempo_and_a_non_conductor_is_not_obeyed(
    tmp_path: Path,
) -> None:
    fed = "tempo-live"
    async with AsyncExitStack() as stack:
        conductor = await stack.enter_async_context(
            open_node(loopback_config(tmp_path, "/o1/cond", federation=fed, conductor=True))
        )
        seeds = (conductor.address,)
        player = await stack.enter_async_context(
            open_node(loopback_config(tmp_path, "/o1/player", federation=fed, seeds=seeds))
        )
        await wait_for(lambda: player.conductor == "/o1/cond", 15, "the conductor elected")
        c_tempo = await stack.enter_async_context(mesh.open_tempo(conductor))
        p_tempo = await stack.enter_async_context(mesh.open_tempo(player))
        origin = conductor.now() + 1.0
        c_tempo.start(bpm=132, meter=3, origin=origin)
        with trio.fail_after(10):
            known = await p_tempo.wait()
        assert known.bpm_at(origin) == 132 and known.meter_at(origin) == 3
        with pytest.raises(NotConductor):
            p_tempo.change(bpm=60)
        # A non-conductor publishing on the topic directly is reported and not obeyed.
        player.publish(TEMPO_TOPIC, Tempo.start(61).with_version(10**6).to_payload())
        await wait_for(lambda: c_tempo.statistics().ignored >= 1, 10, "the forgery reported")
        assert c_tempo.current is not None and c_tempo.current.bpm_at(origin) == 132
        # A node that joins after the tempo was set learns it (the conductor republishes).
        late: Node = await stack.enter_async_context(
            open_node(loopback_config(tmp_path, "/o1/late", federation=fed, seeds=seeds))
        )
        l_tempo = await stack.enter_async_context(mesh.open_tempo(late))
        took = await wait_for(lambda: l_tempo.current is not None, 10, "the late joiner's tempo")
        assert l_tempo.current is not None and l_tempo.current.bpm_at(origin) == 132
        assert took < 5.0
        position = l_tempo.at(origin + 2.0)
        assert position is not None and position.beat == pytest.approx(132 / 30, abs=1e-6)


async def test_a_new_conductor_carries_the_tempo_on_to_late_joiners(tmp_path: Path) -> None:
    fed = "tempo-handover"
    leave = trio.Event()

    async def first_conductor(*, task_status: trio.TaskStatus[tuple[Node, mesh.TempoKeeper]]
                              = trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
        config = loopback_config(tmp_path, "/o1/first", federation=fed, conductor=True)
        async with open_node(config) as node, mesh.open_tempo(node) as keeper:
            task_status.started((node, keeper))
            await leave.wait()  # then leaves gracefully, handing the post over

    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        first, first_tempo = await nursery.start(first_conductor)
        second_config = loopback_config(
            tmp_path, "/o1/second", federation=fed, conductor=True, seeds=(first.address,)
        )
        second = await stack.enter_async_context(open_node(second_config))
        await wait_for(lambda: second.conductor == "/o1/first", 15, "the first conductor")
        second_tempo = await stack.enter_async_context(mesh.open_tempo(second))
        origin = first.now() + 0.5
        sent = first_tempo.start(bpm=100, meter=4, origin=origin)
        with trio.fail_after(10):
            await second_tempo.wait()
        leave.set()
        await wait_for(lambda: second.conductor == "/o1/second", 15, "the handover")
        await wait_for(
            lambda: (
                second_tempo.current is not None and second_tempo.current.version > sent.version
            ),
            10,
            "the new conductor adopted the tempo",
        )
        late_config = loopback_config(tmp_path, "/o1/late", federation=fed, seeds=(second.address,))
        late = await stack.enter_async_context(open_node(late_config))
        late_tempo = await stack.enter_async_context(mesh.open_tempo(late))
        with trio.fail_after(10):
            known = await late_tempo.wait()
        t = origin + 30.0
        assert known.beat_at(t) == pytest.approx(sent.beat_at(t), abs=1e-9)
        assert late_tempo.statistics().ignored == 0


@given(
    bpm=st.sampled_from([60.0, 90.0, 120.0, 133.0, 140.0, 174.0]),
    meter=st.integers(2, 7),
    origin_ms=st.integers(0, 10**8),
)
def test_the_time_of_a_beat_reads_back_in_that_beats_bar(
    bpm: float, meter: int, origin_ms: int
) -> None:
    """A player that plays beat b at ``time_at_beat(b)`` and stops at the first beat whose bar
    is past the piece must play exactly bars x meter beats, whatever the origin (the concert
    example once played 17 beats of a 16-beat piece: 3.999999 bars read as bar 3)."""
    tempo = Tempo.start(bpm, meter, origin_ms / 1000)
    for beat in range(8 * meter):
        position = tempo.at(tempo.time_at_beat(beat))
        assert position.bar == beat // meter, (beat, position)
        assert 0.0 <= position.beat_in_bar < meter
