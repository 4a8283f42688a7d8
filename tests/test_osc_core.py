"""The OSC bridge's core driven by hand: a host object stands in for the node (a plain
federation clock the test moves), python-osc builds what apps send and parses what comes back."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.parsing import ntp, osc_types

from mesh._nodecore import Publication
from mesh._osc_core import (
    OscBridgeCore,
    OscLimits,
    Outgoing,
    build_message,
    federation_timetag,
)
from mesh._tempo import NotConductor, Tempo
from mesh._wire import Address, Value

APP: Address = ("127.0.0.1", 57120)
OTHER: Address = ("127.0.0.1", 57121)


class Host:
    """A node as the bridge sees it; the test sets the time."""

    def __init__(self) -> None:
        self.t = 100.0
        self.published: list[tuple[str, Value]] = []
        self.conductor_path: str | None = "/o/c"
        self.is_conductor = True
        self.current: Tempo | None = None

    def now(self) -> float:
        return self.t

    def error_bound(self) -> float | None:
        return 0.0001

    def members(self) -> list[tuple[str, str]]:
        return [("/o/me", "alive"), ("/o/c", "alive")]

    def conductor(self) -> str | None:
        return self.conductor_path

    def tempo(self) -> Tempo | None:
        return self.current

    def publish(self, topic: str, payload: Value) -> None:
        if len(repr(payload)) > 800:
            raise ValueError("publication of 900 bytes is over the 800-byte limit")
        self.published.append((topic, payload))

    def set_tempo(self, bpm: float, meter: int | None, at: float | None, restart: bool) -> None:
        if not self.is_conductor:
            raise NotConductor("only the conductor sets the tempo")
        when = self.t if at is None else at
        if restart or self.current is None:
            self.current = Tempo.start(bpm, meter or 4, when)
        else:
            self.current = self.current.change(when, bpm=bpm, meter=meter)


def msg(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for a in args:
        builder.add_arg(a)
    return builder.build().dgram


def parsed(out: list[Outgoing]) -> list[tuple[Address, str, list[Any]]]:
    return [(o.dest, (m := OscMessage(o.data)).address, list(m.params)) for o in out]


def bundle(t: float | None, *messages: bytes) -> bytes:
    # python-osc takes Unix time for a timetag; a federation-time timetag is t - the NTP delta.
    stamp = 0 if t is None else (federation_timetag(t) / 2**32) - ntp._NTP_DELTA
    builder = OscBundleBuilder(stamp)  # type: ignore[arg-type]
    for m in messages:
        builder.add_content(OscMessage(m))
    return builder.build().dgram


@pytest.fixture
def host() -> Host:
    return Host()


def test_time_answers_federation_time_as_float64_and_as_whole_plus_fraction(host: Host) -> None:
    core = OscBridgeCore()
    host.t = 123456.789012345
    [(dest, address, args)] = parsed(core.handle_datagram(host, APP, msg("/stagemesh/time")))
    assert dest == APP and address == "/stagemesh/time"
    assert args[0] == host.t and args[1] == pytest.approx(0.0001)
    assert args[2] == 123456 and args[3] == pytest.approx(0.789012345, abs=1e-7)


def test_publications_reach_subscribed_apps_only(host: Host) -> None:
    core = OscBridgeCore()
    assert parsed(core.handle_datagram(host, APP, msg("/stagemesh/subscribe", "notes"))) == [
        (APP, "/stagemesh/subscribed", ["notes"])
    ]
    assert core.handle_datagram(host, APP, msg("/stagemesh/publish", "notes", 60, 0.5, "on")) == []
    assert host.published == [("notes", [60, 0.5, "on"])]
    out = core.handle_publication(Publication("notes", [60, 0.5, "on"], "id", "/o/p", 1))
    assert parsed(out) == [(APP, "/stagemesh/msg", ["notes", "/o/p", 60, 0.5, "on"])]
    assert core.handle_publication(Publication("other", 1, "id", "/o/p", 2)) == []
    # Python publishers' payloads: a dict travels as JSON text, floats keep their precision.
    out = core.handle_publication(Publication("notes", {"bpm": 120}, "id", None, 3))
    assert parsed(out) == [(APP, "/stagemesh/msg", ["notes", "", '{"bpm":120}'])]
    out = core.handle_publication(Publication("notes", 1234567.123456789, "id", "/o/p", 4))
    assert parsed(out)[0][2][2] == 1234567.123456789  # sent as float64
    core.handle_datagram(host, APP, msg("/stagemesh/unsubscribe", "notes"))
    assert core.handle_publication(Publication("notes", 1, "id", "/o/p", 5)) == []
    assert core.statistics().clients == 0


def test_a_scheduled_message_is_sent_when_federation_time_reaches_it(host: Host) -> None:
    core = OscBridgeCore()
    assert (
        core.handle_datagram(host, APP, msg("/stagemesh/schedule", 101.5, "/synth", 60, 1.0)) == []
    )
    # Whole seconds and a fraction: exact for apps that only have 32-bit floats (Pd).
    core.handle_datagram(host, APP, msg("/stagemesh/schedule", 101, 0.25, "/kick"))
    assert core.next_due() == pytest.approx(101.25)
    host.t = 101.2
    assert core.handle_timer(host) == []
    host.t = 101.25
    assert parsed(core.handle_timer(host)) == [(APP, "/kick", [])]
    host.t = 101.6
    assert parsed(core.handle_timer(host)) == [(APP, "/synth", [60, 1.0])]
    assert core.next_due() is None and core.statistics().scheduled_sent == 2
    # How late each left, by the node's clock: 0 ms for /kick, 100 ms for /synth.
    assert core.statistics().send_lateness_ms == {"p50": 100.0, "p99": 100.0, "max": 100.0}
    # Already past: sent at once, counted as late.
    assert parsed(core.handle_datagram(host, APP, msg("/stagemesh/schedule", 50.0, "/x"))) == [
        (APP, "/x", [])
    ]
    assert core.statistics().late_on_arrival == 1


def test_a_scheduled_stagemesh_command_runs_at_its_time(host: Host) -> None:
    core = OscBridgeCore()
    core.handle_datagram(
        host, APP, msg("/stagemesh/schedule", 102.0, "/stagemesh/publish", "cue", 7)
    )
    assert host.published == []
    host.t = 102.0
    core.handle_timer(host)
    assert host.published == [("cue", [7])]


def test_bundles_are_timed_in_federation_time(host: Host) -> None:
    core = OscBridgeCore()
    later = bundle(105.0, msg("/a", 1), msg("/stagemesh/publish", "t", 2))
    assert core.handle_datagram(host, APP, later) == []
    now = bundle(None, msg("/b"))  # timetag "immediately"
    assert parsed(core.handle_datagram(host, APP, now)) == [(APP, "/b", [])]
    host.t = 105.0
    assert parsed(core.handle_timer(host)) == [(APP, "/a", [1])]
    assert host.published == [("t", [2])]
    # A wall-clock NTP timetag (what SuperCollider's sendBundle writes) is refused, not queued.
    wall = OscBundleBuilder(1.7e9)
    wall.add_content(OscMessage(msg("/c")))
    [(_, address, args)] = parsed(core.handle_datagram(host, APP, wall.build().dgram))
    assert address == "/stagemesh/error" and "federation time" in args[0]
    assert core.next_due() is None


def test_members_and_conductor_answer_and_then_push_changes(host: Host) -> None:
    core = OscBridgeCore()
    out = parsed(core.handle_datagram(host, APP, msg("/stagemesh/members")))
    assert out == [
        (APP, "/stagemesh/members", [2]),
        (APP, "/stagemesh/member", ["/o/me", "alive"]),
        (APP, "/stagemesh/member", ["/o/c", "alive"]),
    ]
    assert parsed(core.handle_member("/o/new", "alive")) == [
        (APP, "/stagemesh/member", ["/o/new", "alive"])
    ]
    assert parsed(core.handle_datagram(host, OTHER, msg("/stagemesh/conductor"))) == [
        (OTHER, "/stagemesh/conductor", ["/o/c"])
    ]
    assert core.handle_conductor("/o/c") == []  # no change, no push
    assert parsed(core.handle_conductor(None)) == [(OTHER, "/stagemesh/conductor", [""])]


def test_the_conductor_sets_the_tempo_and_watchers_hear_it(host: Host) -> None:
    core = OscBridgeCore()
    assert parsed(core.handle_datagram(host, APP, msg("/stagemesh/tempo"))) == [
        (APP, "/stagemesh/tempo", [])
    ]
    core.handle_datagram(host, OTHER, msg("/stagemesh/tempo/start", 120.0, 4, 100.0))
    host.t = 101.0
    [(_, address, args)] = parsed(core.handle_tempo(host))
    assert address == "/stagemesh/tempo"
    assert args == [120.0, 4, 101.0, pytest.approx(2.0), 0, pytest.approx(2.0)]
    # A change scheduled for later is pushed again when it takes effect.
    core.handle_datagram(host, OTHER, msg("/stagemesh/tempo/set", 90.0, 4, 102.0))
    core.handle_tempo(host)
    assert core.next_due() == pytest.approx(102.0)
    host.t = 102.0
    [(_, _, args)] = parsed(core.handle_timer(host))
    assert args[0] == 90.0
    host.is_conductor = False
    [(_, address, args)] = parsed(
        core.handle_datagram(host, OTHER, msg("/stagemesh/tempo/set", 60.0))
    )
    assert address == "/stagemesh/error" and "conductor" in args[0]
    assert core.statistics().errors == {"refused": 1}


def test_reply_address_receives_everything_when_given(host: Host) -> None:
    reply: Address = ("127.0.0.1", 7000)
    core = OscBridgeCore(reply_to=reply)
    core.handle_datagram(host, APP, msg("/stagemesh/subscribe", "x"))
    core.handle_datagram(host, OTHER, msg("/stagemesh/schedule", 101.0, "/y"))
    out = core.handle_publication(Publication("x", 1, "id", "/o/p", 1))
    host.t = 101.0
    out += core.handle_timer(host)
    assert {o.dest for o in out} == {reply}


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (b"garbage!!", "malformed", "not an OSC message"),
        (b"", "malformed", "not an OSC message"),
        (b"#bundle\x00\x00\x00", "malformed", "not an OSC bundle"),
        (msg("/nope", 1), "unknown address", "unknown address '/nope'"),
        (msg("/stagemesh/subscribe"), "bad arguments", "usage: /stagemesh/subscribe"),
        (msg("/stagemesh/subscribe", 5), "bad arguments", "usage"),
        (msg("/stagemesh/schedule", "soon", "/x"), "bad arguments", "usage: /stagemesh/schedule"),
        (msg("/stagemesh/schedule", 101.0, "x"), "bad arguments", "usage"),
        (msg("/stagemesh/schedule", float("nan"), "/x"), "bad arguments", "finite"),
        (msg("/stagemesh/schedule", 1e9, "/x"), "limit", "ahead"),
        (msg("/stagemesh/publish"), "bad arguments", "usage: /stagemesh/publish"),
        (msg("/stagemesh/publish", "t", "x" * 900), "limit", "800-byte"),
        (msg("/stagemesh/tempo/set", "fast"), "bad arguments", "usage"),
        (msg("/stagemesh/tempo/set", 120.0, 3.5), "bad arguments", "whole number"),
        (b"/x\x00\x00,q\x00\x00", "bad arguments", "unsupported OSC type tag 'q'"),
        (b"/" * 9000, "too large", "over the 8192-byte limit"),
    ],
)
def test_bad_input_is_answered_with_an_error_and_counted(
    host: Host, data: bytes, kind: str, reason: str
) -> None:
    core = OscBridgeCore()
    [(dest, address, args)] = parsed(core.handle_datagram(host, APP, data))
    assert dest == APP and address == "/stagemesh/error" and reason in args[0]
    assert core.statistics().errors == {kind: 1}
    assert core.statistics().received == 1


def test_limits_bound_what_strangers_can_make_the_bridge_hold(host: Host) -> None:
    limits = OscLimits(max_clients=2, max_subscriptions=2, max_scheduled=3,
                       max_scheduled_per_client=2)  # fmt: skip
    core = OscBridgeCore(limits)

    def errors(src: Address, data: bytes) -> list[str]:
        return [a[0] for _, ad, a in parsed(core.handle_datagram(host, src, data))
                if ad == "/stagemesh/error"]  # fmt: skip

    assert errors(APP, msg("/stagemesh/subscribe", "a")) == []
    assert errors(APP, msg("/stagemesh/subscribe", "b")) == []
    assert "subscriptions already" in errors(APP, msg("/stagemesh/subscribe", "c"))[0]
    assert errors(APP, msg("/stagemesh/subscribe", "t" * 200))[0].startswith("a topic has")
    assert errors(OTHER, msg("/stagemesh/schedule", 200.0, "/x")) == []
    assert errors(OTHER, msg("/stagemesh/schedule", 200.0, "/x")) == []
    assert "of this app" in errors(OTHER, msg("/stagemesh/schedule", 200.0, "/x"))[0]
    assert "apps use this bridge" in errors(("127.0.0.1", 1), msg("/stagemesh/members"))[0]
    assert errors(APP, msg("/stagemesh/schedule", 200.0, "/x")) == []
    assert "scheduled already" in errors(APP, msg("/stagemesh/schedule", 200.0, "/x"))[0]
    # Stateless questions are still answered when the bridge is full.
    assert errors(("127.0.0.1", 1), msg("/stagemesh/time")) == []
    stats = core.statistics()
    assert stats.clients == 2 and stats.scheduled == 3 and stats.errors["limit"] == 4


def test_error_replies_are_rate_limited_but_every_error_is_counted(host: Host) -> None:
    core = OscBridgeCore(OscLimits(error_replies_per_second=10))
    replies = sum(len(core.handle_datagram(host, APP, b"junk")) for _ in range(100))
    assert replies == 10
    host.t += 1.0
    replies += sum(len(core.handle_datagram(host, APP, b"junk")) for _ in range(100))
    assert replies == 20
    stats = core.statistics()
    assert stats.errors == {"malformed": 200} and stats.error_replies_suppressed == 180


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.builds(lambda b: b"#bundle\x00" + b, st.binary()))
def test_no_datagram_makes_the_core_raise(data: bytes) -> None:
    host = Host()
    core = OscBridgeCore()
    out = core.handle_datagram(host, APP, data)
    core.handle_timer(host)
    assert len(out) <= 1_000


def test_replies_are_python_osc_messages() -> None:
    data = build_message("/a", [1, 2**40, 0.5, 0.1, "s", b"\x01", True, None, [1, [2]]])
    assert OscMessage(data).params == [1, 2**40, 0.5, 0.1, "s", b"\x01", True, None, "[1,[2]]"]
    assert struct.unpack(">Q", struct.pack(">Q", federation_timetag(1.5)))[0] == 3 * 2**31


def type_tags(data: bytes) -> str:
    _, index = osc_types.get_string(data, 0)
    tags, _ = osc_types.get_string(data, index)
    return tags[1:]


def test_an_app_that_reads_only_32_bit_types_gets_only_them_and_schedules_with_floats(
    host: Host,
) -> None:
    # Pd vanilla's oscparse reads i, f, s and b only; its oscformat sends numbers as f.
    core = OscBridgeCore()
    host.t = 7201.25
    host.current = Tempo.start(120.0, 4, 7200.0)
    ack = core.handle_datagram(host, APP, msg("/stagemesh/float32"))
    assert parsed(ack) == [(APP, "/stagemesh/float32", [1])]
    core.handle_datagram(host, APP, msg("/stagemesh/subscribe", "notes"))
    out = core.handle_datagram(host, APP, msg("/stagemesh/time"))
    out += core.handle_datagram(host, APP, msg("/stagemesh/tempo"))
    out += core.handle_publication(
        Publication("notes", [1234567.123456789, 2**40, True, None, "x"], "id", "/o/p", 1)
    )
    assert [type_tags(o.data) for o in out] == ["ffif", "fiffif", "ssffiis"]
    time_args = parsed(out[:1])[0][2]
    assert time_args[2:] == [7201, 0.25]  # exact whole seconds and fraction
    # Scheduling the way Pd sends it: <whole seconds:f> <fraction:f> <address> <args:f...>
    core.handle_datagram(host, APP, msg("/stagemesh/schedule", 7202.0, 0.5, "/note", 60.0))
    assert core.next_due() == 7202.5
    host.t = 7202.5
    [note] = core.handle_timer(host)
    assert (type_tags(note.data), OscMessage(note.data).params) == ("f", [60.0])
    # Other apps still get float64; the app can switch back.
    assert type_tags(core.handle_datagram(host, OTHER, msg("/stagemesh/time"))[0].data) == "ddif"
    core.handle_datagram(host, APP, msg("/stagemesh/float32", 0))
    assert type_tags(core.handle_datagram(host, APP, msg("/stagemesh/time"))[0].data) == "ddif"
    assert parsed(core.handle_datagram(host, APP, msg("/stagemesh/float32", 2)))[0][1] == (
        "/stagemesh/error"
    )
