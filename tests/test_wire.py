"""The wire format (mesh/_wire.py): round trips, hostile input, signing, receiver binding,
frames, bounds, size limits, replay.

Property tests draw every message type and every update kind from the strategies below; the
same strategies serve the signed and the unsigned codec.
"""

from __future__ import annotations

from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from mesh._names import NAME_MAX_LENGTH, is_valid_name
from mesh._wire import (
    FRAME_MAGIC,
    HEADER_SIZE,
    MAGIC,
    MAX_COUNTER,
    MAX_DATAGRAM,
    MAX_FRAME,
    MAX_PUSH_PULL_CURSOR,
    NODE_ID_LENGTH,
    TAG_SIZE,
    WIRE_VERSION,
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
    MemberStatus,
    Message,
    MessageTooLarge,
    Nack,
    Ping,
    PingReq,
    Publish,
    PushPull,
    ReplayGuard,
    Reply,
    Request,
    Suspect,
    Update,
    WireCodec,
    check_value,
    is_ip_literal,
    update_size,
)

FAST = settings(max_examples=60)
KEYRING = Keyring({1: b"k" * 32, 7: b"another federation key"}, primary=7)
CODECS = {"unkeyed": WireCodec(), "keyed": WireCodec(KEYRING)}

# ---------------------------------------------------------------------------------------------
# Strategies

names = st.from_regex(rf"[A-Za-z0-9._-]{{1,{NAME_MAX_LENGTH}}}", fullmatch=True).filter(
    is_valid_name  # not "." or ".."
)
node_ids = st.text(alphabet="0123456789abcdef", min_size=NODE_ID_LENGTH, max_size=NODE_ID_LENGTH)
small_u = st.integers(0, 2**40)
counters = st.one_of(small_u, st.integers(0, MAX_COUNTER))
finite = st.floats(allow_nan=False, allow_infinity=False)
ipv4 = st.ip_addresses(v=4).filter(lambda a: is_ip_literal(str(a))).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda a: is_ip_literal(str(a))).map(str)
addresses = st.tuples(st.one_of(ipv4, ipv6), st.integers(1, 65535))


def values(depth: int = 0) -> st.SearchStrategy[Any]:
    """Plain msgpack data (mesh._wire.Value), nested at most a few levels (limit is 8)."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
    )
    if depth >= 3:
        return leaves
    inner = st.deferred(lambda: values(depth + 1))
    return st.one_of(
        leaves,
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    )


metas = st.dictionaries(st.text(max_size=10), values(1), max_size=4)

member_records = st.builds(
    MemberRecord,
    node_id=node_ids,
    name=names,
    orchestra=names,
    address=addresses,
    incarnation=counters,
    meta=metas,
    status=st.integers(0, 3),
)
suspects = st.builds(Suspect, node_ids, counters, node_ids)
deads = st.builds(Dead, node_ids, counters, node_ids, st.booleans())
leases = st.builds(Lease, st.text(max_size=80), node_ids, counters, finite)
publishes = st.builds(Publish, node_ids, counters, st.text(max_size=128), values())
updates: st.SearchStrategy[Update] = st.one_of(member_records, suspects, deads, leases, publishes)
update_lists = st.lists(updates, max_size=6).map(tuple)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, counters, node_ids, update_lists),
    st.builds(PingReq, counters, node_ids, addresses, counters, update_lists),
    st.builds(Ack, counters, node_ids, update_lists),
    st.builds(Nack, counters, node_ids),
    st.builds(Gossip, update_lists),
    st.builds(
        PushPull,
        st.lists(member_records, max_size=6).map(tuple),
        update_lists,
        st.booleans(),
        st.booleans(),
        st.one_of(st.just(0), st.integers(1, MAX_PUSH_PULL_CURSOR)),
    ),
    st.builds(ClockRequest, counters, finite),
    st.builds(ClockReply, counters, finite, finite, finite, finite.map(abs), st.booleans()),
    st.builds(Request, counters, st.text(max_size=200), st.text(max_size=128), values()),
    st.builds(
        Reply,
        counters,
        st.booleans(),
        values(),
        st.text(max_size=128),
        st.text(max_size=200),
    ),
    st.builds(Beacon, names, names, st.integers(1, 65535)),
)


def envelopes(bodies: st.SearchStrategy[Message] = messages) -> st.SearchStrategy[Envelope]:
    """Unbound envelopes (see ``bound`` for bound ones)."""
    return st.builds(Envelope, names, node_ids, counters, counters, finite, bodies)


RECEIVER = "9" * 32


def bound(env: Envelope, incarnation: int = 5, to: str = RECEIVER) -> Envelope:
    """*env* bound to node *to* at *incarnation*."""
    return attrs.evolve(env, to=to, to_incarnation=incarnation)


def _small_envelope() -> Envelope:
    return Envelope("sleo", "a" * 32, 3, 41, 1_700_000_000.5, Beacon("rbd", "cmu", 7471))


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("key", list(CODECS))
@FAST
@given(env=envelopes())
def test_every_message_type_round_trips(key: str, env: Envelope) -> None:
    codec = CODECS[key]
    data = codec.encode(env, MAX_FRAME)
    assert codec.decode(data, MAX_FRAME) == env
    to_me = bound(env, 2**40)
    assert codec.decode(codec.encode(to_me, MAX_FRAME), MAX_FRAME, RECEIVER) == to_me
    if len(data) <= MAX_DATAGRAM:
        assert codec.decode(codec.encode(env)) == env
    else:
        # Refused, never truncated; and the receiver refuses the oversized datagram too.
        with pytest.raises(MessageTooLarge):
            codec.encode(env)
        with pytest.raises(InvalidMessage, match="too large"):
            codec.decode(data)


@pytest.mark.parametrize("key", list(CODECS))
@FAST
@given(update=updates, env=envelopes(st.just(Gossip(()))))
def test_every_update_kind_round_trips(key: str, update: Update, env: Envelope) -> None:
    codec = CODECS[key]
    prefix = codec.frame_prefix_size
    for body in (Gossip((update,)), Ping(1, "b" * 32, (update,)), PushPull((), (update,))):
        sent = bound(attrs.evolve(env, body=body))
        assert codec.decode_frame(codec.encode_frame(sent)[prefix:], RECEIVER) == sent
    assert update_size(update) == len(msgpack.packb(update.to_wire()))


def test_every_message_type_and_update_kind_is_drawn() -> None:
    """Guards the strategies: a new message type or update kind must get a strategy."""
    from mesh import _wire

    drawn_types = {Ping, PingReq, Ack, Nack, Gossip, PushPull, ClockRequest, ClockReply}
    drawn_types |= {Request, Reply, Beacon}
    assert set(_wire._MESSAGE_TYPES.values()) == drawn_types
    assert set(_wire._UPDATE_KINDS.values()) == {MemberRecord, Suspect, Dead, Lease, Publish}


@pytest.mark.parametrize("key", list(CODECS))
@FAST
@given(env=envelopes())
def test_frames_round_trip_with_their_prefix(key: str, env: Envelope) -> None:
    codec = CODECS[key]
    frame = codec.encode_frame(env)
    prefix = codec.frame_prefix_size
    assert codec.frame_length(frame[:prefix]) == len(frame) - prefix
    assert codec.decode_frame(frame[prefix:]) == env


def test_header_layout() -> None:
    env = _small_envelope()
    plain = WireCodec().encode(env)
    assert plain[:HEADER_SIZE] == MAGIC + bytes((WIRE_VERSION, 0, 0))  # unbound
    signed = WireCodec(KEYRING).encode(env)
    assert signed[:HEADER_SIZE] == MAGIC + bytes((WIRE_VERSION, KEYRING.primary, 0))
    assert len(signed) == len(plain) + TAG_SIZE
    assert WireCodec(KEYRING).overhead == HEADER_SIZE + TAG_SIZE
    # Bound to node 9999... at incarnation 300: length 2, id prefix 0x9999, then 300 in 2 bytes.
    to = WireCodec().encode(bound(env, 300))
    assert to[: HEADER_SIZE + 4] == MAGIC + bytes((WIRE_VERSION, 0, 2, 0x99, 0x99, 1, 44))
    assert len(to) == len(plain) + 4
    frame = WireCodec(KEYRING).encode_frame(env)
    assert frame[:8] == FRAME_MAGIC + bytes((WIRE_VERSION, KEYRING.primary)) + (
        len(signed).to_bytes(4, "big")
    )
    assert frame[8 + TAG_SIZE :] == signed
    assert WireCodec(KEYRING).frame_prefix_size == 8 + TAG_SIZE
    assert WireCodec().frame_prefix_size == 8


def test_every_key_of_the_keyring_verifies() -> None:
    old = WireCodec(Keyring({1: b"o" * 16}, 1))
    rotated = WireCodec(Keyring({1: b"o" * 16, 2: b"n" * 16}, 2))
    env = _small_envelope()
    assert rotated.decode(old.encode(env)) == env
    with pytest.raises(InvalidMessage) as info:
        old.decode(rotated.encode(env))
    assert info.value.reason == "unknown key"


# ---------------------------------------------------------------------------------------------
# Hostile input: only ever InvalidMessage


def _decodes_or_invalid(codec: WireCodec, data: bytes, limit: int = MAX_DATAGRAM) -> None:
    try:
        env = codec.decode(data, limit)
    except InvalidMessage as exc:
        assert exc.reason
        return
    assert isinstance(env, Envelope)


def _framed(key_id: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=300).map(lambda b: MAGIC + bytes((WIRE_VERSION, key_id)) + b)


UNSIGNED_UNBOUND = MAGIC + bytes((WIRE_VERSION, 0, 0))


# msgpack data that decodes but has arbitrary shape, behind a valid unsigned header
_junk_objects = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=40),
        st.binary(max_size=10),
        node_ids,
    ),
    lambda c: st.lists(c, max_size=8) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=30,
)
_plausible_bodies = st.tuples(
    st.integers(-1, 13),
    st.one_of(names, _junk_objects),
    st.one_of(node_ids, _junk_objects),
    st.lists(_junk_objects, max_size=9),
).map(lambda t: msgpack.packb([t[0], t[1], t[2], 1, 2, 3.0, *t[3]]))


@pytest.mark.parametrize("key", list(CODECS))
@settings(max_examples=150)
@given(
    data=st.one_of(
        st.binary(max_size=1400),
        _framed(0),
        _framed(7),
        _plausible_bodies.map(lambda b: UNSIGNED_UNBOUND + b),
        _junk_objects.map(lambda o: UNSIGNED_UNBOUND + msgpack.packb(o)),
    )
)
def test_arbitrary_bytes_only_raise_invalid_message(key: str, data: bytes) -> None:
    codec = CODECS[key]
    _decodes_or_invalid(codec, data)
    _decodes_or_invalid(codec, data, MAX_FRAME)
    for me in (None, RECEIVER):
        try:
            codec.decode_frame(data, me)
        except InvalidMessage as exc:
            assert exc.reason
    try:
        codec.frame_length(data[: codec.frame_prefix_size])
    except InvalidMessage as exc:
        assert exc.reason


@FAST
@given(env=envelopes(), cut=st.integers(0, 2000), junk=st.binary(max_size=8))
def test_truncated_or_extended_datagrams_only_raise_invalid_message(
    env: Envelope, cut: int, junk: bytes
) -> None:
    for codec in CODECS.values():
        data = codec.encode(env, MAX_FRAME)
        _decodes_or_invalid(codec, data[:cut], MAX_FRAME)
        _decodes_or_invalid(codec, data + junk, MAX_FRAME)


def _prefix(length: int, key_id: int = 0) -> bytes:
    return FRAME_MAGIC + bytes((WIRE_VERSION, key_id)) + length.to_bytes(4, "big")


def test_frame_length_refuses_oversized_frames() -> None:
    assert MAX_FRAME == 1024 * 1024
    with pytest.raises(InvalidMessage, match="too large"):
        WireCodec().frame_length(_prefix(MAX_FRAME + 1))
    assert WireCodec().frame_length(_prefix(MAX_FRAME)) == MAX_FRAME


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        (_prefix(100), "unsigned"),  # no tag at all
        (_prefix(100, 7) + b"\0" * TAG_SIZE, "bad tag"),  # a made-up tag
        (_prefix(100, 3) + b"\0" * TAG_SIZE, "unknown key"),
        (b"XX" + _prefix(100, 7)[2:] + b"\0" * TAG_SIZE, "not stagemesh"),
    ],
)
def test_a_keyed_node_refuses_a_frame_prefix_it_cannot_verify(prefix: bytes, reason: str) -> None:
    """Before a byte of the message is read: only a key holder makes a keyed node buffer."""
    codec = WireCodec(KEYRING)
    with pytest.raises(InvalidMessage) as info:
        codec.frame_length(prefix[: codec.frame_prefix_size].ljust(codec.frame_prefix_size, b"\0"))
    assert info.value.reason == reason


def test_a_frame_prefix_tag_covers_the_length() -> None:
    codec = WireCodec(KEYRING)
    frame = bytearray(codec.encode_frame(_small_envelope()))
    assert codec.frame_length(bytes(frame[: codec.frame_prefix_size])) == len(frame) - 24
    frame[7] ^= 0x40  # announce a longer message under the same tag
    with pytest.raises(InvalidMessage) as info:
        codec.frame_length(bytes(frame[: codec.frame_prefix_size]))
    assert info.value.reason == "bad tag"


def test_deep_nesting_is_refused() -> None:
    deep: Any = "x"
    for _ in range(20):
        deep = [deep]
    env = Envelope("f", "a" * 32, 0, 0, 0.0, Request(1, "/o/n", "k", deep))
    data = WireCodec().encode(env, MAX_FRAME)
    with pytest.raises(InvalidMessage) as info:
        WireCodec().decode(data, MAX_FRAME)
    assert info.value.reason == "malformed"
    with pytest.raises(InvalidMessage):
        check_value(deep)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not stagemesh"),
        (b"XX\x01\x00\x90", "not stagemesh"),
        (UNSIGNED_UNBOUND + b"\xc1", "undecodable"),
        (UNSIGNED_UNBOUND + msgpack.packb([99, "f", "a" * 32, 0, 0, 0.0]), "unknown type"),
        (UNSIGNED_UNBOUND + msgpack.packb({"a": 1}), "malformed"),
        (MAGIC + bytes((WIRE_VERSION, 0, 8, 0, 0)) + b"\0" * 9 + b"\x90", "malformed"),
        (MAGIC + bytes((WIRE_VERSION, 0, 1, 0x12, 0x34, 0)) + b"\x90", "misdirected"),
    ],
)
def test_reasons_are_stable(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        WireCodec().decode(data)
    assert info.value.reason == reason


def test_a_push_pull_cursor_is_optional_and_bounded() -> None:
    """A whole state is the 4-field push-pull of earlier versions; a page's cursor is a 5th
    field, from 1 to MAX_PUSH_PULL_CURSOR; anything else is refused as malformed."""
    codec = WireCodec()
    header = [PushPull.TYPE, "f", "a" * 32, 0, 0, 0.0]
    whole = codec.encode(Envelope("f", "a" * 32, 0, 0, 0.0, PushPull(())))
    assert whole == UNSIGNED_UNBOUND + msgpack.packb([*header, [], [], False, False])
    page = codec.decode(UNSIGNED_UNBOUND + msgpack.packb([*header, [], [], False, True, 7]))
    assert page.body == PushPull((), reply=True, cursor=7)
    for bad in (0, -1, MAX_PUSH_PULL_CURSOR + 1, 1.5, "7", None):
        data = UNSIGNED_UNBOUND + msgpack.packb([*header, [], [], False, True, bad])
        with pytest.raises(InvalidMessage) as info:
            codec.decode(data)
        assert info.value.reason == "malformed"
    six = UNSIGNED_UNBOUND + msgpack.packb([*header, [], [], False, True, 7, 8])
    with pytest.raises(InvalidMessage, match="4 or 5 fields"):
        codec.decode(six)


def test_invalid_names_and_ids_are_refused() -> None:
    body = [Beacon.TYPE, "bad name!", "a" * 32, 0, 0, 0.0, "n", "o", 1]
    with pytest.raises(InvalidMessage, match="federation"):
        WireCodec().decode(UNSIGNED_UNBOUND + msgpack.packb(body))
    body = [Beacon.TYPE, "f", "A" * 32, 0, 0, 0.0, "n", "o", 1]
    with pytest.raises(InvalidMessage, match="sender"):
        WireCodec().decode(UNSIGNED_UNBOUND + msgpack.packb(body))
    assert not is_valid_name("x" * 65)


# ---------------------------------------------------------------------------------------------
# Signing and versions


@settings(max_examples=25)
@given(env=envelopes())
def test_flipping_any_bit_of_a_signed_datagram_is_rejected(env: Envelope) -> None:
    codec = WireCodec(KEYRING)
    data = codec.encode(env, MAX_FRAME)
    if len(data) > 400:  # keep the exhaustive flip loop fast; long bodies are sampled below
        positions: Any = range(0, len(data), max(1, len(data) // 200))
    else:
        positions = range(len(data))
    for i in positions:
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            with pytest.raises(InvalidMessage):
                codec.decode(bytes(flipped), MAX_FRAME)


@FAST
@given(env=envelopes(), index=st.integers(0, 10_000), value=st.integers(0, 255))
def test_changing_any_byte_of_a_signed_datagram_is_rejected(
    env: Envelope, index: int, value: int
) -> None:
    codec = WireCodec(KEYRING)
    data = bytearray(codec.encode(env, MAX_FRAME))
    index %= len(data)
    if data[index] == value:
        value ^= 0xFF
    data[index] = value
    with pytest.raises(InvalidMessage):
        codec.decode(bytes(data), MAX_FRAME)


def test_signed_and_unsigned_do_not_mix() -> None:
    env = _small_envelope()
    with pytest.raises(InvalidMessage) as info:
        WireCodec(KEYRING).decode(WireCodec().encode(env))
    assert info.value.reason == "unsigned"
    with pytest.raises(InvalidMessage) as info:
        WireCodec().decode(WireCodec(KEYRING).encode(env))
    assert info.value.reason == "signed"
    other = WireCodec(Keyring.single(b"z" * 32, key_id=7))
    with pytest.raises(InvalidMessage) as info:
        other.decode(WireCodec(KEYRING).encode(env))
    assert info.value.reason == "bad tag"


@pytest.mark.parametrize("key", list(CODECS))
@pytest.mark.parametrize("version", [0, WIRE_VERSION + 1, 255])
def test_unknown_wire_versions_are_refused(key: str, version: int) -> None:
    codec = CODECS[key]
    data = bytearray(codec.encode(_small_envelope()))
    data[2] = version
    with pytest.raises(InvalidMessage) as info:
        codec.decode(bytes(data))
    assert info.value.reason == "unsupported version"


def test_keyring_checks_its_keys() -> None:
    with pytest.raises(ValueError, match="primary"):
        Keyring({1: b"x" * 16}, 2)
    with pytest.raises(ValueError, match=r"1\.\.255"):
        Keyring({0: b"x" * 16}, 0)
    with pytest.raises(ValueError, match="shorter"):
        Keyring.single(b"short")


# ---------------------------------------------------------------------------------------------
# Size limits and splitting


def _records(n: int, meta_every: int = 7) -> list[MemberRecord]:
    out = []
    for i in range(n):
        meta: dict[str, Any] = {"roles": ["record", "stream"], "n": i} if i % meta_every else {}
        out.append(
            MemberRecord(
                f"{i:032x}",
                f"node-{i}",
                f"orchestra-{i % 13}",
                (f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", 7471 + i % 100),
                i * 3,
                meta,
                i % 4,
            )
        )
    return out


@pytest.mark.parametrize("key", list(CODECS))
@pytest.mark.parametrize("seq", [0, 120, 250, 65_530, 2**32 - 3])
def test_thousands_of_members_split_into_datagrams_that_fit(key: str, seq: int) -> None:
    codec = CODECS[key]
    members = _records(3000)
    env = Envelope("sleo", "c" * 32, 5, seq, 1_700_000_000.0, Gossip(()))
    datagrams = codec.encode_updates(env, members)
    assert len(datagrams) > 50
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)
    decoded = [codec.decode(d) for d in datagrams]
    assert [e.seq for e in decoded] == list(range(seq, seq + len(datagrams)))
    got = [u for e in decoded for u in e.body.updates]  # type: ignore[union-attr]
    assert got == members
    # nothing wasted: every datagram but the last is fairly full
    assert all(len(d) > MAX_DATAGRAM - 200 for d in datagrams[:-1])


@settings(max_examples=30)
@given(
    items=st.lists(updates, max_size=60),
    seq=st.one_of(
        st.integers(0, 300), st.integers(2**32 - 40, 2**32 + 40), st.integers(0, MAX_COUNTER - 60)
    ),
    limit=st.sampled_from([300, 600, MAX_DATAGRAM, 5000]),
    key=st.sampled_from(list(CODECS)),
)
def test_encode_updates_splits_any_update_list(
    items: list[Update], seq: int, limit: int, key: str
) -> None:
    codec = CODECS[key]
    env = Envelope("f", "d" * 32, 1, seq, 2.5, Gossip(()))
    try:
        datagrams = codec.encode_updates(env, items, limit)
    except MessageTooLarge:
        # only when one update cannot fit alone
        empty = len(codec.encode(env, MAX_FRAME))
        assert any(empty + update_size(u) + 5 > limit for u in items)
        return
    assert all(len(d) <= limit for d in datagrams)
    got = [u for d in datagrams for u in codec.decode(d, limit).body.updates]  # type: ignore[union-attr]
    assert got == items
    assert (len(datagrams) == 0) == (not items)


def test_encode_updates_allows_for_a_longer_seq_in_later_datagrams() -> None:
    """Regression: seq 2**32-1 packs in 5 bytes, 2**32 in 9; a full datagram must still fit."""
    small: Update = Publish("f" * 32, 1, "t", "x")
    big: Update = next(
        p for n in range(250, 300) if update_size(p := Publish("f" * 32, 1, "t", "x" * n)) == 318
    )
    items: list[Update] = ([small] * 20 + [big]) * 3
    env = Envelope("f", "d" * 32, 1, 2**32 - 1, 2.5, Gossip(()))
    datagrams = WireCodec().encode_updates(env, items)
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)
    assert [u for d in datagrams for u in WireCodec().decode(d).body.updates] == items  # type: ignore[union-attr]


def test_encode_updates_honours_a_limit_above_the_datagram_size() -> None:
    """Regression: every batch is checked against the caller's limit, not MAX_DATAGRAM."""
    items: list[Update] = [Publish("f" * 32, i, "t", "x" * 100) for i in range(100)]
    env = Envelope("f", "d" * 32, 1, 0, 2.5, Gossip(()))
    datagrams = WireCodec().encode_updates(env, items, 5000)
    assert len(datagrams) == 3
    assert all(MAX_DATAGRAM < len(d) <= 5000 for d in datagrams[:-1])


def test_a_huge_message_is_refused_not_truncated() -> None:
    codec = WireCodec(KEYRING)
    members = tuple(_records(500))
    env = Envelope("sleo", "e" * 32, 1, 1, 0.0, PushPull(members))
    with pytest.raises(MessageTooLarge) as info:
        codec.encode(env)
    assert isinstance(info.value, InvalidMessage)
    assert info.value.reason == "too large"
    # the same message goes as a TCP frame
    assert codec.decode_frame(codec.encode_frame(env)[codec.frame_prefix_size :]) == env


def test_an_update_that_cannot_fit_alone_is_refused() -> None:
    big = Publish("f" * 32, 1, "t", "x" * 2000)
    env = Envelope("sleo", "e" * 32, 1, 1, 0.0, Gossip(()))
    with pytest.raises(MessageTooLarge):
        WireCodec().encode_updates(env, [MemberRecord("a" * 32, "n", "o", ("h", 1), 0), big])


# ---------------------------------------------------------------------------------------------
# Replay guard


def _env(
    seq: int, incarnation: int = 1, sent_at: float = 100.0, sender: str = "a" * 32
) -> Envelope:
    return Envelope("f", sender, incarnation, seq, sent_at, Nack(1, "b" * 32))


def _accepted(guard: ReplayGuard, env: Envelope, now: float = 100.0) -> bool:
    try:
        guard.check(env, now)
    except InvalidMessage:
        return False
    return True


def test_replay_guard_rejects_duplicates() -> None:
    guard = ReplayGuard()
    assert _accepted(guard, _env(5))
    with pytest.raises(InvalidMessage) as info:
        guard.check(_env(5), 100.0)
    assert info.value.reason == "replayed"
    assert _accepted(guard, _env(6))
    assert not _accepted(guard, _env(6))
    assert not _accepted(guard, _env(5))


@settings(max_examples=50)
@given(order=st.permutations(list(range(ReplayGuard.WINDOW))))
def test_replay_guard_accepts_reordering_within_the_window(order: list[int]) -> None:
    guard = ReplayGuard()
    base = 1000
    assert _accepted(guard, _env(base + ReplayGuard.WINDOW))  # the top of the window
    for offset in order:
        seq = base + ReplayGuard.WINDOW - offset
        if offset == 0:
            assert not _accepted(guard, _env(seq))
        elif offset < ReplayGuard.WINDOW:
            assert _accepted(guard, _env(seq)), offset
    for offset in order:  # everything is a duplicate now
        assert not _accepted(guard, _env(base + ReplayGuard.WINDOW - offset))


def test_replay_guard_rejects_messages_older_than_the_window() -> None:
    guard = ReplayGuard()
    assert _accepted(guard, _env(10_000))
    assert _accepted(guard, _env(10_000 - ReplayGuard.WINDOW + 1))
    assert not _accepted(guard, _env(10_000 - ReplayGuard.WINDOW))
    assert _accepted(guard, _env(10_000 + 5 * ReplayGuard.WINDOW))  # a big jump forward
    assert not _accepted(guard, _env(10_001))


def test_replay_guard_incarnations() -> None:
    guard = ReplayGuard()
    assert _accepted(guard, _env(50, incarnation=2))
    with pytest.raises(InvalidMessage) as info:
        guard.check(_env(51, incarnation=1), 100.0)
    assert info.value.reason == "stale"
    # a newer incarnation (a restart) resets the sequence window
    assert _accepted(guard, _env(0, incarnation=3))
    assert _accepted(guard, _env(1, incarnation=3))
    assert not _accepted(guard, _env(0, incarnation=3))
    assert not _accepted(guard, _env(60, incarnation=2))


def test_replay_guard_keeps_senders_apart() -> None:
    guard = ReplayGuard()
    assert _accepted(guard, _env(1, sender="a" * 32))
    assert _accepted(guard, _env(1, sender="b" * 32))
    guard.forget("a" * 32)
    assert _accepted(guard, _env(1, sender="a" * 32))
    assert not _accepted(guard, _env(1, sender="b" * 32))


def test_replay_guard_rejects_stale_timestamps_when_max_age_is_set() -> None:
    guard = ReplayGuard(max_age=30.0)
    assert not _accepted(guard, _env(1, sent_at=60.0), now=100.0)
    assert not _accepted(guard, _env(2, sent_at=140.0), now=100.0)
    assert _accepted(guard, _env(3, sent_at=75.0), now=100.0)
    assert _accepted(guard, _env(4, sent_at=125.0), now=100.0)
    with pytest.raises(InvalidMessage) as info:
        guard.check(_env(5, sent_at=0.0), 100.0)
    assert info.value.reason == "stale"
    # without max_age, timestamps are not checked
    assert _accepted(ReplayGuard(), _env(1, sent_at=0.0), now=1e9)


def test_replay_guard_bounds_its_memory() -> None:
    guard = ReplayGuard(max_senders=10)
    ids = [f"{i:032x}" for i in range(25)]
    for sender in ids:
        assert _accepted(guard, _env(1, sender=sender))
    assert len(guard._state) <= 10
    # the newest senders are still remembered
    assert not _accepted(guard, _env(1, sender=ids[-1]))


def test_member_status_names_match_codes() -> None:
    codes = [MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD, MemberStatus.LEFT]
    assert [MemberStatus.NAMES[c] for c in codes] == ["alive", "suspect", "dead", "left"]
    assert MemberRecord("a" * 32, "rbd", "cmu", ("h", 1), 0).path == "/cmu/rbd"


# ---------------------------------------------------------------------------------------------
# Receiver binding


@pytest.mark.parametrize("key", list(CODECS))
def test_a_bound_message_is_only_for_its_receiver(key: str) -> None:
    codec = CODECS[key]
    data = codec.encode(bound(_small_envelope(), 7))
    assert codec.decode(data, me=RECEIVER).to_incarnation == 7
    for other in (None, "a" * 32):  # not bound to this node (or to any node)
        with pytest.raises(InvalidMessage) as info:
            codec.decode(data, me=other)
        assert info.value.reason == "misdirected"


def test_the_tag_covers_the_receivers_whole_id() -> None:
    """Two ids sharing the 2 bytes sent in the binding: the tag still tells them apart."""
    codec = WireCodec(KEYRING)
    twin = RECEIVER[:4] + "0" * 28
    data = codec.encode(bound(_small_envelope(), 7))
    with pytest.raises(InvalidMessage) as info:
        codec.decode(data, me=twin)
    assert info.value.reason == "bad tag"
    # and the binding's incarnation is under the tag too
    changed = bytearray(data)
    changed[HEADER_SIZE + 2] ^= 1
    with pytest.raises(InvalidMessage) as info:
        codec.decode(bytes(changed), me=RECEIVER)
    assert info.value.reason == "bad tag"


def test_bindings_cost_a_few_bytes() -> None:
    env = _small_envelope()
    plain = len(WireCodec().encode(env))
    assert [len(WireCodec().encode(bound(env, i))) - plain for i in (0, 255, 256, MAX_COUNTER)] == [
        3,
        3,
        4,
        9,
    ]
    with pytest.raises(InvalidMessage):
        WireCodec().encode(bound(env, MAX_COUNTER + 1))


# ---------------------------------------------------------------------------------------------
# Bounds at decode


def _raw(body: list[Any]) -> bytes:
    return UNSIGNED_UNBOUND + msgpack.packb(body)


def _swap(data: Any, old: int, new: int) -> Any:
    """*data* with every *old* integer (not a bool) replaced by *new*, at any depth."""
    if isinstance(data, list):
        return [_swap(x, old, new) for x in data]
    return new if type(data) is int and data == old else data


@pytest.mark.parametrize("value", [MAX_COUNTER + 1, 2**63 - 1, 2**64 - 1, -1])
def test_every_counter_is_bounded_at_decode(value: int) -> None:
    """Incarnations, terms, sequence, probe, request and publication numbers: never above
    MAX_COUNTER, never negative, wherever they are."""
    sender, target = "a" * 32, "b" * 32
    ok = [Gossip.TYPE, "f", sender, 0, 0, 0.0]
    cases = [
        [Gossip.TYPE, "f", sender, value, 0, 0.0, []],  # sender incarnation
        [Gossip.TYPE, "f", sender, 0, value, 0.0, []],  # seq
        [*ok, [[Suspect.KIND, target, value, sender]]],
        [*ok, [[Dead.KIND, target, value, sender, False]]],
        [*ok, [[MemberRecord.KIND, target, "n", "o", ["10.0.0.1", 1], value, {}, 0]]],
        [*ok, [[Lease.KIND, "conductor", target, value, 0.0]]],
        [*ok, [[Publish.KIND, target, value, "t", None]]],
        [Ping.TYPE, "f", sender, 0, 0, 0.0, value, target, []],
        [PingReq.TYPE, "f", sender, 0, 0, 0.0, 1, target, ["10.0.0.1", 1], value, []],
        [Request.TYPE, "f", sender, 0, 0, 0.0, value, "/o/n", "k", None],
    ]
    for body in cases:
        with pytest.raises(InvalidMessage) as info:
            WireCodec().decode(_raw(body), MAX_FRAME)
        assert info.value.reason == "malformed", body
        WireCodec().decode(_raw(_swap(body, value, MAX_COUNTER)), MAX_FRAME)  # the largest is fine


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "example.org",
        "10.0.0.1.example.org",
        "010.0.0.1",
        "0.0.0.0",
        "::",
        "224.0.0.251",
        "255.255.255.255",
        "ff02::1",
        "fe80::1%eth0",
        "::FFFF:10.0.0.1",
        " 10.0.0.1",
        "",
    ],
)
def test_member_addresses_are_ip_literals_only(host: str) -> None:
    """A record naming a host name (or an address no datagram should go to) is refused at
    decode: nothing that arrives is ever resolved."""
    assert not is_ip_literal(host)
    record = [MemberRecord.KIND, "b" * 32, "n", "o", [host, 7471], 0, {}, 0]
    with pytest.raises(InvalidMessage) as info:
        WireCodec().decode(_raw([Gossip.TYPE, "f", "a" * 32, 0, 0, 0.0, [record]]))
    assert info.value.reason == "malformed" and "IP address" in str(info.value)
    ping_req = [PingReq.TYPE, "f", "a" * 32, 0, 0, 0.0, 1, "b" * 32, [host, 7471], 0, []]
    with pytest.raises(InvalidMessage):
        WireCodec().decode(_raw(ping_req))


@pytest.mark.parametrize("host", ["10.0.0.1", "127.0.0.1", "192.168.1.20", "::1", "fe80::1"])
def test_ip_literals_are_addresses(host: str) -> None:
    assert is_ip_literal(host)
    record = MemberRecord("b" * 32, "n", "o", (host, 7471), 0)
    env = Envelope("f", "a" * 32, 0, 0, 0.0, Gossip((record,)))
    assert WireCodec().decode(WireCodec().encode(env)) == env
    with pytest.raises(InvalidMessage):  # port 0 is no address either
        bad = Envelope("f", "a" * 32, 0, 0, 0.0, Gossip((attrs.evolve(record, address=(host, 0)),)))
        WireCodec().decode(WireCodec().encode(bad))
