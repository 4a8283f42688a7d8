"""Issue #16, item 1, in the manager/station model: for every order of pushes (full and
merge), local changes, station-file edits and restarts (with no manager), the station runs
the newest desired state.

The model is stated independently of the implementation: every event is a *statement* at its
own time about role instances. A full push or a local replacement at ``t`` states every
instance (present with its options, or absent); a merge push states the instances it names;
a file edit at ``t`` states the instances it changes, but the station learns of it only at its
next start. The station must run, per instance, its newest statement it knows of. The
implementation is the manager's chain of orders (:class:`roles.DesiredState`) and the station's
:class:`roles.StationState`, persisted to JSON and read back at every restart; the conductor
pushing its chain again at any moment must change nothing.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st

from roles import DesiredState, Order, RoleConfig, RoleEntry, StaleOrder, StationState

STATION = "/room/cam"
KEYS = [("record", "a"), ("record", "b"), ("upload", "u"), ("command", "c")]
T0 = 1_800_000_000_000
Statement = tuple[int, Any]  # (time, options or None for absent)

values = st.integers(0, 3)
entries = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
events = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.booleans(), entries, st.sets(st.sampled_from(KEYS))),
        st.tuples(st.just("local"), st.booleans(), entries, st.just(frozenset())),
        st.tuples(st.just("edit"), st.just(False), entries, st.just(frozenset())),
        st.tuples(st.just("restart"), st.just(False), st.just({}), st.just(frozenset())),
    ),
    max_size=12,
)


def config_of(items: dict[tuple[str, str], Any], removed: Any, t: int) -> RoleConfig:
    """The configuration stating *items* (and removing *removed*) at time *t*."""
    out = [(r, u, RoleEntry(t, {"v": v})) for (r, u), v in items.items()]
    out += [(r, u, RoleEntry.tombstone(t)) for r, u in removed if (r, u) not in items]
    return RoleConfig(tuple(out))


def running(state: StationState) -> dict[tuple[str, str], Any]:
    return {(r, u): e.options["v"] for r, u, e in state.config.active()}


def restart(saved: str, station_file: RoleConfig) -> StationState:
    """The station starting again: its saved state read back, then its station file."""
    state = StationState.from_dict(json.loads(saved), source="roles.json")
    return state.started_with(station_file)[0]


@settings(max_examples=400)
@given(initial=entries, history=events)
def test_the_station_runs_the_newest_statement_after_any_history(
    initial: dict[tuple[str, str], Any], history: list[tuple[str, bool, Any, Any]]
) -> None:
    # The model: per instance, its newest known statement.
    known: dict[tuple[str, str], Statement] = {k: (T0 - 1, v) for k, v in initial.items()}
    pending_file: dict[tuple[str, str], Statement] = {}

    def state_all(t: int, items: dict[tuple[str, str], Any]) -> None:
        for key in KEYS:
            known[key] = (t, items.get(key))

    # The implementation: the manager's chain, the station's state and its saved file.
    station_file = config_of(initial, (), T0 - 1)
    desired = DesiredState()
    state = StationState.from_file(station_file)
    saved = json.dumps(state.to_dict())

    for step, (kind, merge, items, removed) in enumerate(history):
        t = T0 + 1000 * (step + 1)
        if kind == "push":
            order = Order.for_config(
                "fed", STATION, config_of(items, removed if merge else (), t), merge=merge, issued=t
            )
            desired = desired.with_order(order)
            state = state.with_orders(desired.chain_for(STATION))
            if merge:
                for key in {*items, *removed}:
                    known[key] = (t, items.get(key))
            else:
                state_all(t, items)
        elif kind == "local":
            state = state.with_local(config_of(items, (), t), t, merge=merge)
            if merge:
                known.update({key: (t, v) for key, v in items.items()})
            else:
                state_all(t, items)
        elif kind == "edit":
            station_file = station_file.merge(config_of(items, (), t))
            pending_file.update({key: (t, v) for key, v in items.items()})
        else:  # a restart, with no manager around
            state = restart(saved, station_file)
            for key, statement in pending_file.items():
                if statement[0] > known.get(key, (-1, None))[0]:
                    known[key] = statement
            pending_file.clear()
        saved = json.dumps(state.to_dict())

        expected = {key: v for key, (_, v) in known.items() if v is not None}
        assert running(state) == expected, (step, kind)
        # The conductor pushing its chain again (a new conductor, a re-sync) changes nothing.
        chain = desired.chain_for(STATION)
        if chain:
            try:
                again = state.with_orders(chain)
            except StaleOrder:
                again = state
            assert running(again) == expected


def test_a_role_removed_by_a_push_stays_removed_after_a_restart_with_an_older_file() -> None:
    """The case the issue found, spelled out: the file's timestamp is older than the push."""
    station_file = RoleConfig.from_dict(
        {
            "record": {"cam": {"timestamp": 1718000000000, "device": "/dev/video0"}},
            "upload": {"sync": {"timestamp": 1718000000000, "source_dir": "r"}},
        }
    )
    state = StationState.from_file(station_file)
    only_record = RoleConfig.from_dict({"record": {"cam": {"device": "/dev/video0"}}})
    push = Order.for_config("fed", STATION, only_record, issued=1718000100000)
    state = state.with_orders([push])
    assert [u for _, u, _ in state.config.active()] == ["cam"]
    saved = StationState.from_dict(json.loads(json.dumps(state.to_dict())), source="saved")
    again, older = saved.started_with(station_file)
    assert [u for _, u, _ in again.config.active()] == ["cam"]
    assert older == ("record/cam", "upload/sync")
