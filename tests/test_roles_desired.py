"""The manager's desired state: merge laws, edits, answers, transport; plus identity and exports."""

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
    RoleConfig,
    RoleEntry,
    StationAnswer,
    StationIdentity,
    read_identity,
)
from roles._identity import META_LIMIT

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
edits = st.one_of(
    st.tuples(
        st.just("set"),
        paths,
        st.sampled_from(["record", "upload"]),
        st.sampled_from(["a", "b"]),
        st.dictionaries(st.sampled_from(["device", "x"]), st.integers(0, 2), max_size=2),
        st.integers(0, 3),
    ),
    st.tuples(
        st.just("remove"),
        paths,
        st.sampled_from(["record", "upload"]),
        st.sampled_from(["a", "b"]),
        st.just({}),
        st.integers(0, 3),
    ),
    st.tuples(st.just("answer"), paths, answers),
)


def build(items: list[tuple]) -> DesiredState:  # type: ignore[type-arg]
    state = DesiredState()
    for item in items:
        if item[0] == "set":
            state = state.set_entry(item[1], item[2], item[3], item[4], item[5])
        elif item[0] == "remove":
            state = state.remove_entry(item[1], item[2], item[3], item[5])
        else:
            state = state.record_answer(item[1], item[2])
    return state


states = st.lists(edits, max_size=6).map(build)


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


def test_a_new_conductor_has_the_same_desired_config_to_push() -> None:
    old = DesiredState().set_entry("/room-a/cam1", "record", "r1", {"device": "/dev/video0"}, 10)
    replica = DesiredState().merge(old)  # what gossip gave the standby
    assert replica.config_for("/room-a/cam1") == old.config_for("/room-a/cam1")
    assert replica.config_for("/room-a/cam1").digest() == old.config_for("/room-a/cam1").digest()


def test_answers_and_sync() -> None:
    state = DesiredState().set_entry("/room-a/cam1", "record", "r1", {"device": "d"}, 10)
    digest = state.config_for("/room-a/cam1").digest()
    assert state.out_of_sync() == ("/room-a/cam1",)
    refused = state.record_answer(
        "/room-a/cam1",
        StationAnswer.refused(digest, BlockedRole("role 'record' is blocked", role="record"), 5.0),
    )
    error = refused.answer_for("/room-a/cam1").error()  # type: ignore[union-attr]
    assert type(error) is BlockedRole and "blocked" in str(error)
    assert not refused.in_sync("/room-a/cam1")
    applied = refused.record_answer("/room-a/cam1", StationAnswer.ok(digest, 6.0))
    assert applied.in_sync("/room-a/cam1")
    assert (
        applied.record_answer("/room-a/cam1", StationAnswer.ok("old", 1.0)) == applied
    )  # older loses
    changed = applied.set_entry("/room-a/cam1", "record", "r1", {"device": "e"}, 11)
    assert not changed.in_sync("/room-a/cam1")


def test_replace_config_tombstones_what_is_gone() -> None:
    state = DesiredState().set_entry("/room-a/cam1", "record", "r1", {"device": "d"}, 10)
    state = state.set_entry("/room-a/cam1", "upload", "u1", {"source_dir": "s"}, 10)
    new = RoleConfig((("record", "r1", RoleEntry(12, {"device": "x"})),))
    replaced = state.replace_config("/room-a/cam1", new, 12)
    config = replaced.config_for("/room-a/cam1")
    assert config.active() == new
    upload = config.get("upload", "u1")
    assert upload is not None and upload.deleted and upload.timestamp == 12


def test_bad_station_paths_and_documents_are_refused() -> None:
    with pytest.raises(ValueError, match="/<orchestra>/<name>"):
        DesiredState().set_entry("cam1", "record", "r1", {}, 1)
    with pytest.raises(ConfigFileError, match=r'\$\.stations\["nope"\]'):
        DesiredState.from_dict({"stations": {"nope": {}}})
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


def test_public_names_are_exported() -> None:
    exported = {name for name in dir(roles) if not name.startswith("_")}
    assert set(roles.__all__) == exported
    for name in roles.__all__:
        if not name.isupper():  # constants have no __module__
            assert getattr(roles, name).__module__.startswith("roles._")
