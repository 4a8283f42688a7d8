"""The manager's desired state (chains of operator orders): merge laws, folding, answers,
signature filtering, transport; plus identity and exports."""

from __future__ import annotations

import json
import socket

import msgpack
import pytest
from hypothesis import given, strategies as st

import roles
from roles import (
    BlockedRole,
    ConfigFileError,
    DesiredState,
    OperatorKey,
    OperatorKeyring,
    Order,
    RoleConfig,
    RoleEntry,
    StationAnswer,
    StationIdentity,
    read_identity,
)
from roles._identity import META_LIMIT

FED = "fed"
paths = st.sampled_from(["/room-a/cam1", "/room-a/cam2", "/room-b/cam1"])
answers = st.builds(
    lambda digest, applied, t: (
        StationAnswer.ok(digest, t)
        if applied
        else StationAnswer.refused(digest, BlockedRole("role 'x' is blocked", role="x"), t)
    ),
    st.sampled_from(["d1", "d2"]),
    st.booleans(),
    st.integers(0, 3).map(float),
)
configs = st.dictionaries(
    st.tuples(st.sampled_from(["record", "upload"]), st.sampled_from(["a", "b"])),
    st.tuples(st.integers(0, 3), st.integers(0, 2), st.booleans()),
    max_size=3,
).map(
    lambda d: RoleConfig(
        tuple(
            (r, u, RoleEntry.tombstone(ts) if gone else RoleEntry(ts, {"device": str(v)}))
            for (r, u), (ts, v, gone) in d.items()
        )
    )
)
edits = st.one_of(
    st.builds(
        lambda path, config, merge, issued: Order.for_config(
            FED, path, config, merge=merge, issued=issued
        ),
        paths,
        configs,
        st.booleans(),
        st.integers(0, 4),
    ),
    st.tuples(paths, answers),
)


def build(items: list[Order | tuple[str, StationAnswer]]) -> DesiredState:
    state = DesiredState()
    for item in items:
        if isinstance(item, Order):
            state = state.with_order(item)
        else:
            state = state.record_answer(*item)
    return state


states = st.lists(edits, max_size=6).map(build)


def push(config: RoleConfig, issued: int, merge: bool = False, path: str = "/room-a/cam1") -> Order:
    return Order.for_config(FED, path, config, merge=merge, issued=issued)


def entry(ts: int, device: str) -> RoleEntry:
    return RoleEntry(ts, {"device": device})


@given(states, states)
def test_desired_merge_is_commutative(a: DesiredState, b: DesiredState) -> None:
    assert a.merge(b) == b.merge(a)


@given(states, states, states)
def test_desired_merge_is_associative(a: DesiredState, b: DesiredState, c: DesiredState) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(states, states)
def test_desired_merge_is_idempotent(a: DesiredState, b: DesiredState) -> None:
    assert a.merge(a) == a
    assert a.merge(b).merge(b) == a.merge(b)


@given(states)
def test_desired_round_trips_through_msgpack_and_json(state: DesiredState) -> None:
    assert DesiredState.from_dict(msgpack.unpackb(msgpack.packb(state.to_dict()))) == state
    assert DesiredState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_a_full_push_replaces_and_merge_pushes_fold_in_by_timestamp() -> None:
    first = RoleConfig((("record", "a", entry(1, "x")), ("upload", "u", entry(1, "y"))))
    state = DesiredState().with_order(push(first, 10))
    assert state.config_for("/room-a/cam1") == first
    merged = RoleConfig((("record", "a", entry(5, "z")), ("record", "b", entry(0, "w"))))
    state = state.with_order(push(merged, 11, merge=True))
    config = state.config_for("/room-a/cam1")
    assert config.get("record", "a") == entry(5, "z") and config.get("record", "b") is not None
    # A newer full push replaces everything before it: the chain starts again.
    only = RoleConfig((("upload", "u", entry(2, "v")),))
    state = state.with_order(push(only, 12))
    assert state.config_for("/room-a/cam1") == only
    assert len(state.chain_for("/room-a/cam1")) == 1
    # An order older than the last full push changes nothing.
    assert state.with_order(push(first, 9, merge=True)) == state


def test_a_new_conductor_has_the_same_orders_to_push() -> None:
    old = DesiredState().with_order(push(RoleConfig((("record", "r1", entry(1, "d")),)), 10))
    replica = DesiredState().merge(old)  # what the sync gave the standby
    assert replica.chain_for("/room-a/cam1") == old.chain_for("/room-a/cam1")
    assert replica.config_for("/room-a/cam1").digest() == old.config_for("/room-a/cam1").digest()


def test_answers_and_sync() -> None:
    state = DesiredState().with_order(push(RoleConfig((("record", "r1", entry(1, "d")),)), 10))
    digest = state.config_for("/room-a/cam1").digest()
    assert state.out_of_sync() == ("/room-a/cam1",)
    refused = state.record_answer(
        "/room-a/cam1",
        StationAnswer.refused(digest, BlockedRole("role 'record' is blocked", role="record"), 5.0),
    )
    answer = refused.answer_for("/room-a/cam1")
    assert answer is not None and answer.to_dict()["error_family"] == "BlockedRole"
    error = answer.error()
    assert type(error) is BlockedRole and "blocked" in str(error)
    assert not refused.in_sync("/room-a/cam1")
    applied = refused.record_answer("/room-a/cam1", StationAnswer.ok(digest, 6.0))
    assert applied.in_sync("/room-a/cam1")
    assert (
        applied.record_answer("/room-a/cam1", StationAnswer.ok("old", 1.0)) == applied
    )  # older loses
    changed = applied.with_order(push(RoleConfig((("record", "r1", entry(2, "e")),)), 11))
    assert not changed.in_sync("/room-a/cam1")


def test_only_orders_a_trusted_key_signed_survive_filtering() -> None:
    key, other = OperatorKey.generate(), OperatorKey.generate()
    keyring = OperatorKeyring((key.public(),))
    config = RoleConfig((("record", "r1", entry(1, "d")),))
    good = key.sign(push(config, 10))
    forged = other.sign(push(config, 11, path="/room-a/cam2"))
    unsigned = push(config, 12, path="/room-b/cam1")
    state = DesiredState().with_order(good).with_order(forged).with_order(unsigned)

    def accept(order: Order) -> bool:
        try:
            keyring.verify(order)
        except roles.Unauthorized:
            return False
        return True

    kept, dropped = state.filtered(accept)
    assert dropped == 2 and kept.station_paths() == ("/room-a/cam1",)
    # An altered order no longer matches its signature.
    tampered = Order.from_dict({**good.to_dict(), "config": {"command": {"x": {"command": "sh"}}}})
    assert not accept(tampered)


def test_bad_station_paths_and_documents_are_refused() -> None:
    with pytest.raises(ConfigFileError, match=r"\$\.station"):
        Order.from_dict({**push(RoleConfig(), 1).to_dict(), "station": "cam1"})
    with pytest.raises(ConfigFileError, match=r'\$\.stations\["nope"\]'):
        DesiredState.from_dict({"stations": {"nope": []}})
    with pytest.raises(ConfigFileError, match="not for /a/b"):
        DesiredState.from_dict({"stations": {"/a/b": [push(RoleConfig(), 1).to_text()]}})
    with pytest.raises(ConfigFileError, match="applied"):
        DesiredState.from_dict({"answers": {"/a/b": {"digest": "d", "applied": "yes", "time": 1}}})


# --- identity ---------------------------------------------------------------------------------


def test_identity_is_read_from_the_os_and_fits_gossip_metadata() -> None:
    identity = read_identity()
    assert identity.hostname == socket.gethostname()
    if identity.mac is not None:
        assert len(identity.mac.split(":")) == 6
    assert len(identity.addresses) <= 4
    meta = identity.to_meta()
    assert len(json.dumps(meta, separators=(",", ":"))) <= META_LIMIT
    assert StationIdentity.from_meta(meta) == identity


def test_identity_meta_drops_addresses_to_fit() -> None:
    identity = StationIdentity(
        hostname="h" * 80,
        mac="aa:bb:cc:dd:ee:ff",
        addresses=tuple(f"2001:db8::{i:x}:ffff:ffff:ffff" for i in range(4)),
    )
    meta = identity.to_meta()
    assert len(json.dumps(meta, separators=(",", ":"))) <= META_LIMIT
    assert len(meta["h"]) == 64
    assert 0 < len(meta["a"]) < 4
    assert StationIdentity.from_meta({"h": 3, "a": "x"}) == StationIdentity("", None, ())
