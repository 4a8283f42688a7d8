"""The impairing hub (tests/impair.py): its decisions by hand, then the real hub between
namespaces, measured from both ends with the probes of tests/netprobe.py."""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.impair import Hub, ImpairError, Link, Plan, Switch, _Hub
from tests.netns import Host, Lan, NetnsError, Spawned

PROBE = str(Path(__file__).with_name("netprobe.py"))

# ------------------------------------------------------------------ the decisions, by hand


def frame(src: int, dst: bytes = b"\xff" * 6) -> bytes:
    return dst + bytes([2, 0, 0, 0, 0, src]) + b"\x08\x00" + b"\0" * 50


def test_a_link_refuses_what_is_not_a_network() -> None:
    for bad in ({"loss": 1.5}, {"delay": -1}, {"jitter": float("nan")}, {"rate": 0},
                {"limit": 0}, {"duplicate": -0.1}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            Link(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown link fields"):
        Link.from_json({"los": 0.1})
    with pytest.raises(ValueError, match="must be a number"):
        Link.from_json({"loss": "0.1"})
    link = Link(loss=0.1, delay=0.2, jitter=0.01, rate=1e6)
    assert Link.from_json(json.loads(json.dumps(link.to_json()))) == link


def test_the_switch_learns_and_floods_the_rest() -> None:
    switch = Switch(4)
    mac1 = bytes([2, 0, 0, 0, 0, 1])
    assert switch.targets(0, frame(0, mac1)) == [1, 2, 3]  # unknown: flooded
    assert switch.targets(1, frame(1)) == [0, 2, 3]  # broadcast: flooded; port 1 learned
    assert switch.targets(0, frame(0, mac1)) == [1]  # known now
    assert switch.targets(1, frame(1, mac1)) == []  # never back out of its own port
    assert switch.targets(2, frame(2, b"\x01\x00\x5e\x00\x00\xfb")) == [0, 1, 3]  # multicast
    assert switch.targets(0, b"short") == []


def plan(**link: Any) -> Plan:
    made = Plan(4, random.Random(7))
    made.default = Link(**link)
    return made


def route(p: Plan, src: int, dst: int, now: float) -> list[float]:
    """Route a frame and let it leave at once (so the queue limits do not fill)."""
    out = p.route(src, dst, 100, now)
    for _ in out:
        p.departed(src, dst)
    return out


def test_loss_delay_and_jitter_are_drawn_as_set() -> None:
    p = plan(loss=0.1, delay=0.02, jitter=0.01)
    departures = [route(p, 0, 1, now=float(i)) for i in range(20_000)]
    sent = [d[0] - i for i, d in enumerate(departures) if d]
    assert 0.09 < 1 - len(sent) / 20_000 < 0.11
    assert 0.01 <= min(sent) < 0.0101 and 0.0299 < max(sent) <= 0.03
    assert abs(statistics.mean(sent) - 0.02) < 0.0005
    assert p.dropped["loss"] == 20_000 - len(sent)


def test_jitter_reorders_and_is_counted() -> None:
    p = plan(delay=0.02, jitter=0.01)
    times = [route(p, 0, 1, now=i * 0.001)[0] for i in range(1000)]
    out_of_order = sum(1 for i, t in enumerate(times) if t < max(times[:i], default=0))
    assert out_of_order == p.reordered > 100


def test_reorder_sends_a_share_at_once_and_duplicate_a_second_copy() -> None:
    p = plan(delay=0.05, reorder=0.25, duplicate=0.5)
    routed = [route(p, 0, 1, now=0.0) for _ in range(4000)]
    copies = [len(r) for r in routed]
    assert 0.45 < copies.count(2) / 4000 < 0.55 and p.duplicated == copies.count(2)
    flat = [t for r in routed for t in r]
    assert 0.22 < flat.count(0.0) / len(flat) < 0.28
    assert set(flat) == {0.0, 0.05}


def test_a_rate_spaces_frames_by_their_size() -> None:
    p = plan(rate=8000.0)  # 1000 bytes a second
    assert [p.route(0, 1, 100, now=0.0) for _ in range(3)] == [[0.1], [0.2], [0.30000000000000004]]
    assert p.route(0, 2, 100, now=0.0) == [0.1]  # each direction has its own wire


def test_rules_are_per_direction_and_pair() -> None:
    p = plan()
    p.set_link([0], [1], Link(loss=1.0))
    assert p.route(0, 1, 100, 0.0) == [] and p.route(1, 0, 100, 0.0) == [0.0]
    assert p.route(0, 2, 100, 0.0) == [0.0]
    p.set_link([0], [1], None)
    assert p.route(0, 1, 100, 0.0) == [0.0]
    assert p.pairs[(0, 1)] == [2, 1, 1]


def test_partitions_and_unplugged_ports_drop_between_sides_only() -> None:
    p = plan()
    p.partition([[0, 1], [2]])  # port 3 unnamed: a group of its own
    assert p.route(0, 1, 100, 0.0) == [0.0]
    assert p.route(0, 2, 100, 0.0) == [] and p.route(3, 0, 100, 0.0) == []
    p.heal()
    assert p.route(0, 2, 100, 0.0) == [0.0]
    p.down.add(1)
    assert p.route(0, 1, 100, 0.0) == [] and p.route(1, 2, 100, 0.0) == []
    assert p.dropped == {"loss": 0, "partition": 2, "down": 2, "overflow": 0}
    with pytest.raises(ValueError, match="two groups"):
        p.partition([[0], [0, 1]])
    with pytest.raises(ValueError, match="port must be"):
        p.partition([[9]])


def test_queues_are_bounded() -> None:
    p = plan(delay=1.0, limit=5)
    assert sum(len(p.route(0, 1, 100, 0.0)) for _ in range(8)) == 5
    assert p.dropped["overflow"] == 3
    p.departed(0, 1)
    assert p.route(0, 1, 100, 0.0) == [1.0]
    small = Plan(4, random.Random(1), max_queued=3)
    small.default = Link(delay=1.0)
    assert sum(len(small.route(s, 1 + s % 3, 100, 0.0)) for s in range(3) for _ in range(3)) == 3


def test_bad_commands_are_answered_never_fatal() -> None:
    out: list[dict[str, Any]] = []
    hub = _Hub([], Plan(2, random.Random(0)), lambda text: out.append(json.loads(text)))
    for line in ("nonsense", "[1]", '{"id": 1, "op": "fly"}', '{"id": 2, "op": "down"}',
                 '{"id": 3, "op": "link", "src": [0], "dst": [1], "link": {"loss": 2}}',
                 '{"id": 4, "op": "partition", "groups": "all"}'):  # fmt: skip
        assert hub.command(line)
    assert [o["ok"] for o in out] == [False] * 6
    assert "unknown op 'fly'" in out[2]["error"] and "port must be" in out[3]["error"]
    assert hub.command('{"id": 5, "op": "stats"}') and out[-1]["ok"]
    assert not hub.command('{"id": 6, "op": "stop"}')


# ------------------------------------------------------------------ the real hub


def probe(lan: Lan, host: Host, *args: object, timeout: float = 60) -> dict[str, Any]:
    """Run a probe to its end in *host*; its last JSON line."""
    out = lan.run(host, sys.executable, PROBE, *map(str, args), timeout=timeout).stdout
    doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return doc


def start_probe(lan: Lan, host: Host, *args: object) -> Spawned:
    proc = lan.spawn(host, sys.executable, PROBE, *map(str, args))
    proc.wait_for(lambda line: '"ready"' in line, timeout=20)
    return proc


def all_lines(proc: Spawned, timeout: float = 60) -> list[dict[str, Any]]:
    """Every JSON line *proc* printed, once it has ended by itself."""
    with contextlib.suppress(NetnsError):
        proc.wait_for(lambda line: False, timeout)
    return [json.loads(line) for line in proc.lines]


@pytest.mark.netns
def test_the_hub_carries_broadcast_udp_and_tcp() -> None:
    with Lan(3, impair=Link()) as lan:
        h0, h1, h2 = lan.hosts
        sinks = [start_probe(lan, h, "count", 7000, 3) for h in (h1, h2)]
        probe(lan, h0, "send", "10.77.0.255", 7000, 20, 0.01)  # broadcast
        for sink in sinks:
            sink.wait_for(lambda line: "received" in line, timeout=20)
            assert json.loads(sink.lines[-1])["received"] == 20
        server = start_probe(lan, h1, "tcp-serve", 7001)
        assert probe(lan, h0, "tcp-ask", h1.address, 7001)["answer_bytes"] == 100_006
        server.process.wait(timeout=10)
        stats = lan.hub.stats()
        assert stats["frames_in"] > 60 and stats["write_errors"] == 0
        assert stats["dropped"] == {"loss": 0, "partition": 0, "down": 0, "overflow": 0}
        print("hub lateness", stats["lateness_ms"])


@pytest.mark.netns
def test_loss_and_delay_are_what_the_rule_says_one_way_only() -> None:
    with Lan(2, impair=Link(), seed=3) as lan:
        h0, h1 = lan.hosts
        echo = start_probe(lan, h1, "echo", 7002, 60)
        assert probe(lan, h0, "ping", h1.address, 7002, 5)["lost"] == 0  # ARP is resolved
        lan.hub.set_link(0, 1, Link(loss=0.2, delay=0.03, jitter=0.01), both_ways=False)
        sink = start_probe(lan, h1, "sink", 7003, 4)
        probe(lan, h0, "send", h1.address, 7003, 500, 0.002)
        got = [doc for doc in all_lines(sink) if "seq" in doc]
        delays = sorted(d["delay"] for d in got)
        assert 0.72 < len(got) / 500 < 0.88, len(got)
        assert delays[0] >= 0.0195 and 0.025 < statistics.median(delays) < 0.040, delays[:3]
        seqs = [d["seq"] for d in got]
        assert seqs != sorted(seqs)  # jitter reordered them
        back = lan.hub.stats()["pairs"]
        assert back["0>1"]["dropped"] > 0 and back["1>0"]["dropped"] == 0
        echo.kill()


@pytest.mark.netns
def test_partition_heal_and_unplug() -> None:
    with Lan(3, impair=Link()) as lan:
        h0, h1, h2 = lan.hosts
        for h in (h1, h2):
            start_probe(lan, h, "echo", 7004, 60)
        assert probe(lan, h0, "ping", h1.address, 7004, 3)["lost"] == 0
        assert probe(lan, h0, "ping", h2.address, 7004, 3)["lost"] == 0
        lan.hub.partition([0], [1, 2])
        assert probe(lan, h0, "ping", h1.address, 7004, 3)["lost"] == 3
        assert probe(lan, h1, "ping", h2.address, 7004, 3)["lost"] == 0
        lan.hub.heal()
        assert probe(lan, h0, "ping", h1.address, 7004, 3)["lost"] == 0
        lan.link_down(h2)
        assert probe(lan, h0, "ping", h2.address, 7004, 3)["lost"] == 3
        lan.link_up(h2)
        assert probe(lan, h0, "ping", h2.address, 7004, 3)["lost"] == 0
        with pytest.raises(ImpairError, match="port must be"):
            lan.hub.down(7)
        assert lan.hub.stats()["dropped"]["partition"] > 0


@pytest.mark.netns
def test_the_hub_stops_by_itself_and_takes_the_hosts_cables() -> None:
    with Lan(2, impair=Link(), hub_seconds=1.5) as lan:
        hub = lan.hub.process
        assert isinstance(hub, Spawned)
        started = time.monotonic()
        line = hub.wait_for(lambda text: '"stopped"' in text, timeout=15)
        assert json.loads(line)["stopped"] == "time limit of 1.5 s"
        assert time.monotonic() - started < 10
        hub.process.wait(timeout=10)
        links = lan.run(lan.hosts[0], "ip", "-o", "link").stdout
        assert "eth0" not in links  # the TAP went with the hub
        assert isinstance(lan.hub, Hub)
        with pytest.raises(ImpairError):
            lan.hub.stats()


@pytest.mark.netns
def test_get_json_reads_a_hosts_loopback(tmp_path: Path) -> None:
    (tmp_path / "doc.json").write_text('{"from": "inside"}')
    with Lan(1) as lan:
        host = lan.hosts[0]
        server = lan.spawn(
            host, sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "7005",
            "--directory", str(tmp_path),
        )  # fmt: skip
        server.wait_for(lambda line: line.startswith("Serving HTTP"), timeout=20)
        assert lan.get_json(host, "http://127.0.0.1:7005/doc.json") == {"from": "inside"}
        with pytest.raises(NetnsError, match="404"):
            lan.get_json(host, "http://127.0.0.1:7005/nothing-here.json")
