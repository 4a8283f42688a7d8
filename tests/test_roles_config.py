"""Role configurations: merge laws (Hypothesis), file loading and its errors, transport."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, strategies as st

from roles import (
    ConfigFileError,
    InvalidConfiguration,
    RoleConfig,
    RoleEntry,
    StationFile,
    load_role_config,
    load_station_file,
    parse_role_config,
)

option_values = st.one_of(
    st.integers(-3, 3),
    st.text("abc", max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 2), max_size=2),
)
entries = st.builds(
    lambda ts, opts, deleted: RoleEntry.tombstone(ts) if deleted else RoleEntry(ts, opts),
    st.integers(0, 3),  # few values: ties happen often
    st.dictionaries(st.sampled_from(["device", "output_dir", "x"]), option_values, max_size=2),
    st.booleans(),
)
configs = st.lists(
    st.tuples(
        st.sampled_from(["record", "encode", "upload"]), st.sampled_from(["a", "b", "c"]), entries
    ),
    max_size=6,
    unique_by=lambda e: (e[0], e[1]),
).map(lambda items: RoleConfig(tuple(items)))


@given(configs, configs)
def test_merge_is_commutative(a: RoleConfig, b: RoleConfig) -> None:
    assert a.merge(b) == b.merge(a)


@given(configs, configs, configs)
def test_merge_is_associative(a: RoleConfig, b: RoleConfig, c: RoleConfig) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(configs, configs)
def test_merge_is_idempotent(a: RoleConfig, b: RoleConfig) -> None:
    assert a.merge(a) == a
    assert a.merge(b).merge(b) == a.merge(b)


@given(configs, configs)
def test_merge_keeps_one_sided_entries_and_newest_wins(a: RoleConfig, b: RoleConfig) -> None:
    merged = a.merge(b)
    assert set(merged.keys()) == set(a.keys()) | set(b.keys())
    for role, uuid, entry in merged:
        candidates = [e for e in (a.get(role, uuid), b.get(role, uuid)) if e is not None]
        assert entry in candidates
        assert entry.timestamp == max(e.timestamp for e in candidates)


@given(configs)
def test_dict_round_trip_through_json_and_msgpack(config: RoleConfig) -> None:
    data = config.to_dict()
    assert RoleConfig.from_dict(json.loads(json.dumps(data))) == config
    assert RoleConfig.from_dict(msgpack.unpackb(msgpack.packb(data))) == config
    assert RoleConfig.from_dict(data).digest() == config.digest()


def test_tie_is_broken_the_same_way_on_every_side() -> None:
    one = RoleConfig((("record", "a", RoleEntry(5, {"device": "/dev/video0"})),))
    two = RoleConfig((("record", "a", RoleEntry(5, {"device": "/dev/video1"})),))
    assert one.merge(two) == two.merge(one)
    winner = one.merge(two).get("record", "a")
    assert winner is not None and winner.options["device"] == "/dev/video1"


def test_tombstone_wins_when_newer_and_active_drops_it() -> None:
    live = RoleConfig((("record", "a", RoleEntry(5, {"device": "d"})),))
    removed = live.with_removed("record", "a", 6)
    merged = live.merge(removed)
    entry = merged.get("record", "a")
    assert entry is not None and entry.deleted
    assert merged.active() == RoleConfig()
    assert merged.roles() == ()


def test_entries_are_frozen() -> None:
    entry = RoleEntry(1, {"args": [1, 2], "env": {"A": "b"}})
    with pytest.raises(TypeError):
        entry.options["new"] = 1  # type: ignore[index]
    plain = entry.plain_options()
    plain["args"].append(3)
    assert entry.plain_options() == {"args": [1, 2], "env": {"A": "b"}}
    assert hash(entry) == hash(RoleEntry(1, {"env": {"A": "b"}, "args": [1, 2]}))


GOOD = {
    "record": {
        "hall-a": {"timestamp": 1718000000000, "device": "/dev/video0", "output_dir": "/srv/rec"}
    },
    "upload": {"u1": {"timestamp": 1718000000001, "source_dir": "/srv/rec", "destination": "s:/a"}},
}


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "station_config.json"
    path.write_text(json.dumps(GOOD))
    config = load_role_config(path)
    assert config.roles() == ("record", "upload")
    entry = config.get("record", "hall-a")
    assert entry is not None
    assert entry.timestamp == 1718000000000
    assert entry.plain_options() == {"device": "/dev/video0", "output_dir": "/srv/rec"}
    assert config.to_dict() == GOOD


def test_the_example_station_file_loads() -> None:
    path = Path(__file__).parent.parent / "examples" / "conference" / "station.json"
    station = load_station_file(path)
    assert station.roles.roles()
    assert isinstance(station, StationFile)


def _error_for(tmp_path: Path, content: Any, raw: str | None = None) -> ConfigFileError:
    path = tmp_path / "bad.json"
    path.write_text(raw if raw is not None else json.dumps(content))
    with pytest.raises(ConfigFileError) as info:
        load_role_config(path)
    message = str(info.value)
    assert str(path) in message
    assert isinstance(info.value, InvalidConfiguration)
    return info.value


@pytest.mark.parametrize(
    ("content", "where", "problem"),
    [
        (
            {"record": {"3f2a": {"timestamp": "soon"}}},
            "$.record.3f2a.timestamp",
            "must be an integer",
        ),
        ({"record": {"3f2a": {"timestamp": -1}}}, "$.record.3f2a.timestamp", "out of range"),
        (
            {"record": {"3f2a": {"timestamp": 1, "device": {"a": float("inf")}}}},
            "$.record.3f2a.device.a",
            "not a finite",
        ),
        (
            {"record": {"3f2a": {"timestamp": 1, "bad-name": 1}}},
            "$.record.3f2a.bad-name",
            "option name",
        ),
        ({"record": {"3f2a": ["x"]}}, "$.record.3f2a", "expected an object of options"),
        ({"record": ["x"]}, "$.record", "expected an object mapping uuid"),
        ({"rec ord": {}}, '$["rec ord"]', "may hold only"),
        ({"record": {"uuid - 1": {"timestamp": 1}}}, '$.record["uuid - 1"]', "may hold only"),
        (
            {"record": {"a": {"timestamp": 1, "_deleted": True, "device": "x"}}},
            "$.record.a",
            "no options",
        ),
        ([1, 2], "$", "expected an object mapping role"),
    ],
)
def test_file_errors_name_file_path_and_problem(
    tmp_path: Path, content: Any, where: str, problem: str
) -> None:
    # json.dumps writes inf as Infinity, which the json loader accepts: a non-finite number.
    error = _error_for(tmp_path, content)
    assert error.path == where
    assert where in str(error)
    assert problem in str(error)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    error = _error_for(tmp_path, None, raw='{"record": {\n  "a": {"timestamp": 1,}\n}}')
    assert "line 2" in str(error)
    assert "invalid JSON" in str(error)


def test_missing_file_is_a_config_file_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read the file"):
        load_role_config(tmp_path / "absent.json")


def test_missing_timestamp_gets_the_default() -> None:
    config = parse_role_config(
        '{"record": {"a": {"device": "d"}}}', source="x", default_timestamp=7
    )
    entry = config.get("record", "a")
    assert entry is not None and entry.timestamp == 7


def test_station_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "station.json"
    path.write_text(json.dumps({"roles": {}, "blocked_roles": ["ok", "not ok"]}))
    with pytest.raises(ConfigFileError) as info:
        load_station_file(path)
    assert str(path) in str(info.value)
    assert "$.blocked_roles[1]" in str(info.value)
    path.write_text(json.dumps({"roles": {}, "blocked": []}))
    with pytest.raises(ConfigFileError, match=r"unknown key 'blocked'"):
        load_station_file(path)
    path.write_text(json.dumps({"roles": {"record": {"a": {"timestamp": "x"}}}}))
    with pytest.raises(ConfigFileError, match=r"\$\.roles\.record\.a\.timestamp"):
        load_station_file(path)


def test_an_eventstreamr_uuid_with_spaces_is_refused_saying_what_and_why() -> None:
    with pytest.raises(ConfigFileError) as refused:
        RoleConfig.from_dict({"record": {"uuid - 1": {"timestamp": 1, "device": "d"}}})
    message = str(refused.value)
    assert "instance uuid 'uuid - 1' holds ' '" in message
    assert "letters, digits, '-', '_' and '.'" in message
    assert "file names" in message and "write 'uuid-1'" in message
    assert refused.value.role == "record"
