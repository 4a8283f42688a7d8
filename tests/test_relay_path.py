"""The sans-IO choice between direct UDP and the registry's relay, driven by hand."""

from __future__ import annotations

import pytest

from registry_bridge._relaypath import PathConfig, RelayPaths

BOB = ("198.51.100.7", 7471)


def sends(paths: RelayPaths, start: float, end: float, every: float = 0.5) -> list[str]:
    """The routes of one datagram to BOB every *every* seconds from *start* to *end*."""
    out = []
    t = start
    while t < end:
        out.append(paths.route(t, BOB))
        t += every
    return out


def test_a_peer_that_never_acks_directly_moves_to_the_relay_after_the_budget() -> None:
    paths = RelayPaths(PathConfig(probe_budget=3.0, retry_every=2.0))
    assert set(sends(paths, 0.0, 3.0)) == {"direct"}  # within the budget
    assert not paths.relayed(BOB)
    assert paths.route(3.0, BOB) == "relay"
    assert paths.relayed(BOB)
    # relayed: one datagram in every 2 s also tries the direct path
    later = sends(paths, 3.5, 9.5)
    assert later.count("both") == 3 and set(later) == {"relay", "both"}


def test_a_direct_ack_moves_it_back_at_once_and_keeps_it_direct() -> None:
    paths = RelayPaths(PathConfig(probe_budget=3.0, retry_every=2.0))
    sends(paths, 0.0, 4.0)
    assert paths.relayed(BOB)
    paths.direct_ack(4.1, BOB)  # the direct path opened
    assert not paths.relayed(BOB)
    for t in range(5, 60):  # acked every second: never relayed again
        assert paths.route(float(t), BOB) == "direct"
        paths.direct_ack(t + 0.2, BOB)
    stats = paths.statistics()
    assert stats.routes == {BOB: "direct"}
    assert stats.switches == 2
    assert 0 < stats.relay_share < 0.2


def test_statistics_count_what_went_each_way() -> None:
    paths = RelayPaths(PathConfig(probe_budget=1.0, retry_every=10.0))
    assert paths.statistics().relay_share == 0.0
    routes = sends(paths, 0.0, 6.0)
    stats = paths.statistics()
    assert stats.relayed == routes.count("relay") + routes.count("both")
    assert stats.direct == routes.count("direct") + routes.count("both")
    assert stats.relay_share == pytest.approx(stats.relayed / (stats.direct + stats.relayed))
    paths.forget(BOB)
    assert paths.statistics().routes == {}


def test_a_failed_direct_exchange_moves_the_peer_to_the_relay_at_once() -> None:
    paths = RelayPaths(PathConfig(probe_budget=30.0, retry_every=2.0))
    assert paths.route(0.0, BOB) == "direct"
    paths.direct_failed(0.5, BOB)
    assert paths.relayed(BOB)
    assert paths.route(1.0, BOB) == "relay"
    assert paths.route(2.6, BOB) == "both"


def test_hearing_the_peer_directly_makes_the_next_datagram_try_the_direct_path() -> None:
    paths = RelayPaths(PathConfig(probe_budget=1.0, retry_every=10.0))
    sends(paths, 0.0, 2.0)
    assert paths.route(2.0, BOB) == "relay"
    paths.direct_heard(2.1, BOB)
    assert paths.route(2.2, BOB) == "both"  # e.g. the ack to what was heard
    assert paths.route(2.3, BOB) == "relay"


def test_nonsense_timing_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        PathConfig(probe_budget=0)


def test_only_a_peer_that_acked_directly_is_confirmed_direct() -> None:
    paths = RelayPaths(PathConfig(probe_budget=3.0, retry_every=2.0))
    paths.route(0.0, "a")
    paths.route(0.0, "b")
    assert paths.confirmed_direct() == []  # direct on trust only
    paths.direct_ack(0.1, "a")
    assert paths.confirmed_direct() == ["a"]
    paths.direct_failed(0.2, "a")  # moved to the relay: no longer confirmed
    assert paths.confirmed_direct() == []
    paths.direct_ack(0.3, "a")
    assert paths.confirmed_direct() == ["a"]
