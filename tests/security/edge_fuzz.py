"""A structured fuzzer for a node's wire edge and protocol core (issue 18).

Hypothesis strategies built from the wire's message types (every message type and every update
kind) with hostile field values: absurd and boundary counters, negative numbers, the victim's own
id and path, foreign ids, host names and broadcast addresses where IP addresses go, maximum-size
strings, odd metadata (join times that are not numbers, NaN), extreme floats; and, from each
message, raw variants whose fields are replaced by values of the wrong type or out of range, the
way only a forger writes them. Everything is signed and bound to the victim as a key holder
would send it, and goes through the victim's real receiving edge (:class:`~mesh._inbound.Inbound`)
into its :class:`~mesh._nodecore.NodeCore`, between timer ticks, exactly as the live node
receives it.

:func:`drive` checks, after every step:

- nothing raises out of the edge or the core;
- a refused input is counted once, by its reason; an accepted one reaches the core;
- the node has not left, its incarnation stays in range and rose at most once per update it
  was sent (it refutes at its own + 1);
- every datagram and frame the node sends is bound to its receiver, fits its size limit, and is
  accepted by the receiver's codec (the node never sends what its peers would refuse: an
  incarnation, a term or a number out of range, an address that is not an IP literal...).

Used by ``tests/security/test_edge_fuzz.py`` (2,000 examples) and ``bench/fuzz.py``
(100,000).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import attrs
import msgpack
from hypothesis import strategies as st

from mesh._inbound import Inbound
from mesh._membership import OpenStream, SendDatagram, Snapshot
from mesh._nodecore import NodeCore
from mesh._profiles import get_profile
from mesh._wire import (
    MAX_COUNTER,
    MAX_DATAGRAM,
    MAX_FRAME,
    Ack,
    Beacon,
    ClockReply,
    ClockRequest,
    Dead,
    Envelope,
    Gossip,
    InvalidMessage,
    Keyring,
    Lease,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PingReq,
    Publish,
    PushPull,
    Reply,
    Request,
    Suspect,
    WireCodec,
)

__all__ = ["FuzzStats", "drive", "steps"]

FEDERATION = "fuzz"
KEYRING = Keyring.single(b"fuzz federation key, 32 bytes..!")
CODEC = WireCodec(KEYRING)
WALL = 1_700_000_000.0  # wall-clock time at virtual time 0
BOOT = 5  # the victim's incarnation at start


def _id(i: int) -> str:
    return f"{i:032x}"


VICTIM = MemberRecord(_id(1), "victim", "o1", ("10.0.0.1", 7471), BOOT, {"j": 100.0})
PEERS = [
    MemberRecord(_id(2), "p2", "o1", ("10.0.0.2", 7471), 0, {"j": 50.0, "c": True, "s": True}),
    MemberRecord(_id(3), "p3", "o2", ("10.0.0.3", 7471), 3, {"j": 60.0, "c": True}),
    MemberRecord(_id(4), "p4", "o2", ("10.0.0.4", 7471), 0, {"j": 70.0}),
]
SNAPSHOT = Snapshot.of([VICTIM, *PEERS])
KNOWN = {r.node_id: r for r in PEERS}

# ---------------------------------------------------------------------------------------------
# Hostile values

ids = st.one_of(
    st.sampled_from([VICTIM.node_id, *KNOWN]),
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
)
senders = st.one_of(  # mostly members and strangers; now and then the victim's own id
    st.sampled_from(list(KNOWN)),
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.sampled_from([*KNOWN, VICTIM.node_id]),
)
counters = st.one_of(
    st.integers(0, 12),
    st.sampled_from([MAX_COUNTER, MAX_COUNTER - 1, 2**32, 2**31 - 1]),
    st.integers(0, MAX_COUNTER),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, WALL, 100.0]),
)
names = st.one_of(
    st.sampled_from(["victim", "o1", "o2", "p2", "x", "a" * 64, "A.b-c_9"]),
    st.text(alphabet="abz09._-", min_size=1, max_size=64),
)
hosts = st.one_of(
    st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.9", "127.0.0.1", "::1", "fe80::1"]),
    st.integers(1, 2**32 - 2).map(lambda n: f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"),
)
addresses = st.tuples(hosts, st.integers(1, 65535))
odd_meta_values = st.one_of(
    st.floats(),  # NaN and infinities too: metadata is application data
    st.booleans(),
    st.text(max_size=8),
    st.integers(-(2**63), 2**64 - 1),
    st.none(),
)
metas = st.dictionaries(
    st.sampled_from(["j", "s", "c", "r", "h", "x"]), odd_meta_values | floats, max_size=4
)
posts = st.one_of(
    st.sampled_from(["conductor", "supernode:o1", "supernode:o2", "supernode:victim"]),
    st.text(max_size=80),
)

records = st.builds(MemberRecord, ids, names, names, addresses, counters, metas, st.integers(0, 3))
updates = st.one_of(
    records,
    st.builds(Suspect, ids, counters, ids),
    st.builds(Dead, ids, counters, ids, st.booleans()),
    st.builds(Lease, posts, ids, counters, floats),
    st.builds(Publish, ids, counters, st.text(max_size=128), odd_meta_values),
)
update_lists = st.lists(updates, max_size=4).map(tuple)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, counters, ids, update_lists),
    st.builds(PingReq, counters, ids, addresses, counters, update_lists),
    st.builds(Ack, counters, ids, update_lists),
    st.builds(Nack, counters, ids),
    st.builds(Gossip, update_lists),
    st.builds(ClockRequest, counters, floats),
    st.builds(ClockReply, counters, floats, floats, floats, floats.map(abs), st.booleans()),
    st.builds(Request, counters, st.text(max_size=200), st.text(max_size=128), odd_meta_values),
    st.builds(Reply, counters, st.booleans(), odd_meta_values, st.text(), st.text(max_size=20)),
    st.builds(Beacon, names, names, st.integers(1, 65535)),
)
push_pulls = st.builds(
    PushPull,
    st.lists(records, max_size=5).map(tuple),
    update_lists,
    st.booleans(),
    st.booleans(),
)

# What only a forger writes: a field of the wrong type, out of range, or a name for an address.
junk = st.one_of(
    st.sampled_from(
        [-1, 2**63 - 1, 2**64 - 1, MAX_COUNTER + 1, "", "x" * 5000, None, True, [], {}, 1.5]
    ),
    st.sampled_from(["stall.example.org", "localhost", "0.0.0.0", "255.255.255.255", "ff02::1"]),
    st.sampled_from([["stall.example.org", 7471], ["10.0.0.2", 0], ["10.0.0.2"], [1, 2]]),
    st.binary(max_size=8),
)


def _replace_leaf(data: Any, index: int, value: Any) -> tuple[Any, int]:
    """*data* with its *index*-th leaf (depth-first) replaced; and the leaves left to count."""
    if isinstance(data, list):
        out = []
        for item in data:
            item, index = _replace_leaf(item, index, value)
            out.append(item)
        return out, index
    if index == 0:
        return value, -1
    return data, index - 1


@attrs.frozen
class Send:
    """A datagram to the victim from *sender* (at *src*): a message, or raw wire fields."""

    sender: str
    src: tuple[str, int]
    body: Message
    mangle: tuple[int, Any] | None = None  # (leaf index, junk): forge the fields
    sent_at: float = 0.0  # seconds from the victim's wall clock
    bound_at: int | None = None  # the victim incarnation it is bound to (None: the current)


@attrs.frozen
class Exchange:
    """A push-pull over TCP from *sender*, as a first contact (unbound) or bound."""

    sender: str
    src: tuple[str, int]
    body: PushPull
    bound: bool = True


@attrs.frozen
class Tick:
    """Let *seconds* of virtual time pass, running every timer that falls due."""

    seconds: float


sends = st.builds(
    Send,
    senders,
    addresses,
    messages,
    st.none() | st.tuples(st.integers(0, 30), junk),
    st.sampled_from([0.0] * 6 + [-1000.0, 1e9]),
    st.sampled_from([None] * 6 + [0, BOOT - 1, BOOT + 50, MAX_COUNTER]),
)
exchanges = st.builds(
    Exchange, senders, addresses, push_pulls, st.sampled_from([True] * 3 + [False])
)
ticks = st.builds(Tick, st.sampled_from([0.05, 0.3, 1.0]))
steps = st.lists(st.one_of(sends, sends, exchanges, ticks), min_size=1, max_size=8)
"""One fuzz example: a sequence of inputs to one victim node."""


# ---------------------------------------------------------------------------------------------
# Driving the victim


@attrs.define
class FuzzStats:
    """What a run of examples did (added up over all of them)."""

    examples: int = 0
    inputs: int = 0
    accepted: int = 0
    refused: Counter[str] = attrs.field(factory=Counter)
    """Inputs the edge refused, by reason."""
    core_refused: Counter[str] = attrs.field(factory=Counter)
    """Well-formed input the membership core would not take as it came, by reason."""
    outputs: int = 0


def _seal(body: bytes, to: str | None, incarnation: int) -> bytes:
    return CODEC._seal(body, to, incarnation)  # raw fields: nothing checks them on the way out


def _datagram(step: Send, incarnation: int, seq: int) -> bytes:
    bound = incarnation if step.bound_at is None else step.bound_at
    env = Envelope(
        FEDERATION,
        step.sender,
        0,
        seq,
        WALL + step.sent_at,
        step.body,
        VICTIM.node_id,
        bound,
    )
    if step.mangle is None:
        return CODEC.encode(env, MAX_FRAME)
    raw = [step.body.TYPE, env.federation, env.sender, 0, seq, env.sent_at, *step.body.fields()]
    mangled, _ = _replace_leaf(raw, step.mangle[0], step.mangle[1])
    return _seal(msgpack.packb(mangled), VICTIM.node_id, bound)


class _Victim:
    def __init__(self, seed: int) -> None:
        self.core = NodeCore(
            VICTIM,
            get_profile("lan"),
            now=0.0,
            rng=random.Random(seed),
            snapshot=SNAPSHOT,
            joined_at=100.0,
        )
        self.inbound = Inbound(CODEC, FEDERATION, VICTIM.node_id, BOOT)
        self.now = 0.0
        self.seq = 0
        self.updates_in = 0
        self.max_term_seen = 0

    def check_outputs(self, stats: FuzzStats) -> None:
        core = self.core
        self.inbound.incarnation = core.incarnation
        for out in core.take_outputs():
            stats.outputs += 1
            env = Envelope(
                FEDERATION,
                core.node_id,
                core.incarnation,
                1,
                WALL,
                out.body,
                out.to,
                max(out.to_incarnation, 0),
            )
            if isinstance(out, SendDatagram):
                assert out.to is not None, f"an unbound datagram: {out}"
            else:
                assert isinstance(out, OpenStream)
            if isinstance(out, SendDatagram):
                data = CODEC.encode(env)  # raises above 1200 bytes
                got = CODEC.decode(data, MAX_DATAGRAM, out.to)
            else:
                frame = CODEC.encode_frame(env)
                prefix = CODEC.frame_prefix_size
                assert CODEC.frame_length(frame[:prefix]) == len(frame) - prefix
                got = CODEC.decode_frame(frame[prefix:], out.to)
            # (compared as encoded: metadata may hold NaN, which equals nothing)
            assert msgpack.packb(got.body.fields()) == msgpack.packb(out.body.fields())
        core.take_events()

    def run_timers(self, until: float, stats: FuzzStats) -> None:
        for _ in range(100_000):
            due = self.core.next_deadline()
            if due > until:
                break
            self.now = max(self.now, due)
            self.core.handle_timer(self.now)
            self.check_outputs(stats)
        self.now = max(self.now, until)

    def step(self, step: Send | Exchange | Tick, stats: FuzzStats) -> None:
        core, inbound = self.core, self.inbound
        if isinstance(step, Tick):
            self.run_timers(self.now + step.seconds, stats)
            return
        stats.inputs += 1
        self.seq += 1
        before = sum(inbound.rejected.values())
        env: Envelope | None
        if isinstance(step, Send):
            env = inbound.datagram(_datagram(step, core.incarnation, self.seq), WALL + self.now)
        else:
            to = VICTIM.node_id if step.bound else None
            body = Envelope(FEDERATION, step.sender, 0, self.seq, WALL, step.body, to, BOOT)
            frame = CODEC.encode_frame(body, 1 << 30)
            try:
                length = CODEC.frame_length(frame[: CODEC.frame_prefix_size])
                payload = frame[CODEC.frame_prefix_size :]
                assert len(payload) == length
                env = inbound.check_frame(payload, WALL + self.now, request=True)
            except InvalidMessage as exc:
                inbound.reject(exc.reason)
                env = None
        after = sum(inbound.rejected.values())
        if env is None:
            assert after == before + 1, "a refused input was not counted exactly once"
            return
        assert after == before
        stats.accepted += 1
        self.updates_in += len(_updates(env.body))
        if isinstance(env.body, PushPull):
            reply = core.handle_stream(self.now, step.src, env.sender, env.body)
            frame = CODEC.encode_frame(Envelope(FEDERATION, core.node_id, 0, 1, WALL, reply))
            assert len(frame) <= MAX_FRAME + CODEC.frame_prefix_size
        else:
            core.handle_message(self.now, step.src, env.sender, env.body)
        self.check_outputs(stats)
        self.check_self()

    def check_self(self) -> None:
        core = self.core
        assert not core.membership.has_left
        assert BOOT <= core.incarnation <= MAX_COUNTER
        assert core.incarnation <= BOOT + self.updates_in + 1, "refuted above its own + 1"
        me = core.membership.member(core.node_id)
        assert me is not None and me.status == "alive"
        assert math.isfinite(core.federation_time(self.now))


def _updates(body: Message) -> tuple[Any, ...]:
    if isinstance(body, PushPull):
        return (*body.members, *body.extras)
    return tuple(getattr(body, "updates", ()))


def drive(example: list[Send | Exchange | Tick], seed: int, stats: FuzzStats) -> None:
    """Run one example against a fresh victim (see the module docstring for the checks)."""
    victim = _Victim(seed)
    victim.run_timers(0.5, stats)
    for step in example:
        victim.step(step, stats)
    victim.run_timers(victim.now + 3.0, stats)
    victim.check_self()
    stats.examples += 1
    stats.refused.update(victim.inbound.rejected)
    stats.core_refused.update(victim.core.membership.statistics().refused)
