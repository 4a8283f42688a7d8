"""Discovery drivers on loopback: interface choice, beacons, mDNS, seeds.

Every socket here is on loopback; mDNS runs with ``interfaces=["127.0.0.1"]`` only (the node is
bound to 127.0.0.1). Each test uses its own random federation and beacon port so tests running
in parallel on one host never see each other's nodes.
"""

from __future__ import annotations

import itertools
import secrets
import socket
import time
from functools import partial

import msgpack
import pytest
import trio
import zeroconf

from mesh._discovery import (
    SERVICE_TYPE,
    DiscoveryConfig,
    InvalidSeed,
    PeerHint,
    parse_seed,
    serve_beacons,
    serve_discovery,
    serve_mdns,
    serve_seeds,
    service_info,
)
from mesh._interfaces import (
    LOOPBACK_BROADCAST,
    InterfaceError,
    LocalAddress,
    choose_interfaces,
    local_addresses,
)
from mesh._names import InvalidName
from mesh._wire import MAGIC, WIRE_VERSION, Beacon, Envelope, Gossip, Keyring, WireCodec
from tests.harness import free_port, wait_for

HOST = [
    LocalAddress("lo", "127.0.0.1", 8),
    LocalAddress("eth0", "192.168.1.20", 24),
    LocalAddress("eth1", "10.5.0.7", 16),
    LocalAddress("tun0", "10.9.9.9", 32),
]


# ---------------------------------------------------------------------------------------------
# Which interfaces (pure)


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2"])
def test_bound_to_loopback_discovery_stays_on_loopback(bind: str) -> None:
    chosen = choose_interfaces(bind, [], HOST)
    assert chosen.loopback_only
    assert chosen.broadcast_targets == ((bind, LOOPBACK_BROADCAST),)
    assert chosen.mdns_interfaces == ["127.0.0.1"]
    assert chosen.announced_addresses == [bind]
    assert chosen.accepts("127.0.0.9")
    assert not chosen.accepts("192.168.1.30")
    assert choose_interfaces(bind, ["lo"], HOST) == chosen


def test_bound_to_loopback_refuses_other_interfaces() -> None:
    with pytest.raises(InterfaceError, match="stays on loopback"):
        choose_interfaces("127.0.0.1", ["eth0"], HOST)


def test_wildcard_means_every_interface() -> None:
    chosen = choose_interfaces("0.0.0.0", [], HOST)
    assert not chosen.loopback_only
    assert chosen.broadcast_targets == (
        ("127.0.0.1", LOOPBACK_BROADCAST),
        ("192.168.1.20", "192.168.1.255"),
        ("10.5.0.7", "10.5.255.255"),
    )  # the /32 has no broadcast address
    assert chosen.mdns_interfaces == ["127.0.0.1", "192.168.1.20", "10.5.0.7", "10.9.9.9"]
    assert chosen.announced_addresses == ["192.168.1.20", "10.5.0.7", "10.9.9.9"]
    assert chosen.accepts("192.168.1.99") and chosen.accepts("127.0.0.1")
    assert not chosen.accepts("172.16.0.1") and not chosen.accepts("not an address")


def test_interface_names_pick_interfaces() -> None:
    chosen = choose_interfaces("0.0.0.0", ["eth1"], HOST)
    assert [a.address for a in chosen.addresses] == ["10.5.0.7"]
    assert chosen.broadcast_targets == (("10.5.0.7", "10.5.255.255"),)
    assert chosen.mdns_interfaces == ["10.5.0.7"]
    assert not chosen.accepts("192.168.1.99")


def test_a_specific_bind_address_means_its_interface() -> None:
    chosen = choose_interfaces("192.168.1.20", [], HOST)
    assert chosen.broadcast_targets == (("192.168.1.20", "192.168.1.255"),)
    assert choose_interfaces("192.168.1.20", ["eth0"], HOST) == chosen
    with pytest.raises(InterfaceError, match="does not name"):
        choose_interfaces("192.168.1.20", ["eth1"], HOST)
    with pytest.raises(InterfaceError, match="not an address of this host"):
        choose_interfaces("192.168.1.21", [], HOST)


@pytest.mark.parametrize(
    ("bind", "names", "message"),
    [
        ("0.0.0.0", ["wlan9"], "no interface named 'wlan9'.*eth0, eth1, lo, tun0"),
        ("localhost", [], "not an IPv4 address"),
        ("::1", [], "not an IPv4 address"),
    ],
)
def test_impossible_choices_are_usage_errors(bind: str, names: list[str], message: str) -> None:
    with pytest.raises(InterfaceError, match=message):
        choose_interfaces(bind, names, HOST)


def test_local_addresses_include_loopback() -> None:
    assert LocalAddress("lo", "127.0.0.1", 8) in local_addresses()


# ---------------------------------------------------------------------------------------------
# Values and seeds


def _config(**kw: object) -> DiscoveryConfig:
    args: dict[str, object] = {
        "federation": f"t-{secrets.token_hex(4)}",
        "node_id": secrets.token_hex(16),
        "name": "n",
        "orchestra": "o",
        "gossip_port": 7471,
        "bind": "127.0.0.1",
    }
    args.update(kw)
    return DiscoveryConfig(**args)  # type: ignore[arg-type]


def test_config_checks_names_and_ids() -> None:
    with pytest.raises(InvalidName, match="orchestra"):
        _config(orchestra="bad name")
    with pytest.raises(ValueError, match="node id"):
        _config(node_id="A" * 32)
    with pytest.raises(ValueError, match="port"):
        _config(beacon_port=70000)
    with pytest.raises(ValueError, match="source"):
        PeerHint(("127.0.0.1", 1), "rumour")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:7000", ("10.0.0.5", 7000)),
        ("host.example:1", ("host.example", 1)),
        ("host.example", ("host.example", 7471)),
        ("[fe80::1]:7471", ("fe80::1", 7471)),
        ("[::1]", ("::1", 7471)),
        (" 127.0.0.1:65535 ", ("127.0.0.1", 65535)),
    ],
)
def test_parse_seed(text: str, expected: tuple[str, int]) -> None:
    assert parse_seed(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected HOST:PORT"),
        (":7471", "expected HOST:PORT"),
        ("host:", "port '' is not a number"),
        ("host:http", "port 'http' is not a number"),
        ("host:0", "1..65535"),
        ("host:65536", "1..65535"),
        ("fe80::1", r"\[ADDRESS\]:PORT"),
        ("[fe80::1", "missing"),
        ("[fe80::1]7471", "expected ':PORT'"),
        ("a b:1", "expected HOST:PORT"),
    ],
)
def test_bad_seeds_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidSeed, match=message):
        parse_seed(text)


async def test_seeds_are_resolved_and_hinted(monkeypatch: pytest.MonkeyPatch) -> None:
    hints: list[PeerHint] = []
    config = _config(seeds=(("127.0.0.1", 7000), ("localhost", 7001), ("nowhere", 1)))

    real = trio.socket.getaddrinfo

    async def fake_getaddrinfo(host: str, *args: object, **kw: object) -> object:
        if host == "nowhere":  # never ask a real resolver from a test
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trio.socket, "getaddrinfo", fake_getaddrinfo)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(serve_seeds, config, hints.append)
            nursery.cancel_scope.cancel()
    assert PeerHint(("127.0.0.1", 7000), "seed") in hints
    assert any(h.address[1] == 7001 and h.address[0] in ("127.0.0.1", "::1") for h in hints)
    assert all(h.source == "seed" and h.node_id is None for h in hints)
    stats = service.statistics()
    assert stats.unresolved == 1 and stats.hints == len(hints) and stats.rounds == 1


# ---------------------------------------------------------------------------------------------
# Beacons


class Collector:
    """A hint sink remembering hints per node id."""

    def __init__(self) -> None:
        self.hints: list[PeerHint] = []

    def __call__(self, hint: PeerHint) -> None:
        self.hints.append(hint)

    def ids(self) -> set[str | None]:
        return {h.node_id for h in self.hints}


async def test_beacons_on_loopback_find_each_other() -> None:
    port = free_port("udp")
    federation = f"t-{secrets.token_hex(4)}"
    configs = [
        _config(federation=federation, name=f"n{i}", gossip_port=9000 + i, beacon_port=port)
        for i in range(3)
    ]
    sinks = [Collector() for _ in configs]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            services = [
                await nursery.start(serve_beacons, c, s)
                for c, s in zip(configs, sinks, strict=True)
            ]
            everyone = {c.node_id for c in configs}
            await wait_for(
                lambda: all(
                    s.ids() == everyone - {c.node_id} for c, s in zip(configs, sinks, strict=True)
                )
            )
            nursery.cancel_scope.cancel()
    for config, sink in zip(configs, sinks, strict=True):
        for other in configs:
            if other is not config:
                assert (
                    PeerHint(
                        ("127.0.0.1", other.gossip_port), "beacon", other.node_id, other.name, "o"
                    )
                    in sink.hints
                )
    for service in services:
        stats = service.statistics()
        assert stats.sent >= 1 and stats.ignored_self >= 1 and not stats.rejected
        assert service.interfaces.loopback_only


async def test_beacons_start_fast_then_slow_down() -> None:
    port = free_port("udp")
    config = _config(
        beacon_port=port, beacon_fast_interval=0.02, beacon_fast_period=0.3, beacon_interval=0.4
    )
    arrivals: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        raw.bind(("0.0.0.0", port))
        raw.setblocking(False)
        listener = trio.socket.from_stdlib_socket(raw)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                started = trio.current_time()
                await nursery.start(serve_beacons, config, Collector())
                while not arrivals or arrivals[-1] - started < 1.6:
                    data, _ = await listener.recvfrom(2048)
                    env = WireCodec().decode(data)
                    assert env.body == Beacon("n", "o", 7471)
                    assert env.sender == config.node_id
                    arrivals.append(trio.current_time())
                nursery.cancel_scope.cancel()
    assert arrivals[0] - started < 0.2  # the first beacon goes out at once
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    first_slow = next(i for i, g in enumerate(gaps) if g > 0.2)
    # fast (every 20 ms) for 0.3 s; loose bounds, CI machines are busy
    assert first_slow >= 4, gaps
    assert arrivals[first_slow] - started >= 0.3 - 0.05, gaps
    # then slow, every 0.4 s
    slow = gaps[first_slow:]
    assert len(slow) >= 2 and all(0.3 < g < 1.0 for g in slow), gaps


async def test_a_newcomer_is_answered_at_once() -> None:
    """An established node beacons rarely; hearing a new node makes it beacon early."""
    port = free_port("udp")
    federation = f"t-{secrets.token_hex(4)}"
    slow = {"beacon_fast_period": 0.0, "beacon_interval": 60.0}
    old = _config(federation=federation, beacon_port=port, **slow)
    new = _config(federation=federation, beacon_port=port, **slow)
    old_sink, new_sink = Collector(), Collector()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            old_service = await nursery.start(serve_beacons, old, old_sink)
            await trio.sleep(0.2)  # let the old node's one start-up beacon pass unheard
            started = trio.current_time()
            await nursery.start(serve_beacons, new, new_sink)
            await wait_for(lambda: old.node_id in new_sink.ids(), timeout=5)
            assert trio.current_time() - started < 1.0  # not after the 60 s interval
            assert new.node_id in old_sink.ids()
            assert old_service.statistics().answers == 1
            nursery.cancel_scope.cancel()


async def _send_to(port: int, *datagrams: bytes) -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_BROADCAST, 1)
        await sock.bind(("127.0.0.1", 0))
        for data in datagrams:
            await sock.sendto(data, (LOOPBACK_BROADCAST, port))


def _beacon(config: DiscoveryConfig, **kw: object) -> Envelope:
    fields: dict[str, object] = {
        "federation": config.federation,
        "sender": secrets.token_hex(16),
        "incarnation": 0,
        "seq": 1,
        "sent_at": time.time(),
        "body": Beacon("x", "y", 7000),
    }
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


async def test_bad_datagrams_are_counted_and_dropped() -> None:
    port = free_port("udp")
    config = _config(beacon_port=port)
    sink = Collector()
    codec = WireCodec()
    good = _beacon(config)
    bad = [
        b"",
        b"hello, world",
        secrets.token_bytes(300),
        MAGIC + bytes((WIRE_VERSION + 1, 0)) + b"\x90",
        MAGIC + bytes((WIRE_VERSION, 0)) + msgpack.packb([11, config.federation, "zz", 0]),
        codec.encode(_beacon(config, body=Gossip(()))),
        WireCodec(Keyring.single(b"k" * 16)).encode(_beacon(config)),
        b"SM" + bytes((WIRE_VERSION, 0)) + b"\x00" * 1300,
    ]
    foreign = codec.encode(_beacon(config, federation="someone-else"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(serve_beacons, config, sink)
            await _send_to(port, *bad, foreign, codec.encode(good))
            await wait_for(lambda: good.sender in sink.ids())
            nursery.cancel_scope.cancel()
    stats = service.statistics()
    assert dict(stats.rejected) == {
        "not stagemesh": 3,
        "unsupported version": 1,
        "malformed": 1,
        "not a beacon": 1,
        "signed": 1,
        "too large": 1,
    }
    assert stats.ignored_federation == 1
    assert sink.ids() == {good.sender}
    assert sink.hints == [PeerHint(("127.0.0.1", 7000), "beacon", good.sender, "x", "y")]


async def test_signed_beacons() -> None:
    port = free_port("udp")
    keyring = Keyring.single(b"federation secret key")
    federation = f"t-{secrets.token_hex(4)}"
    keyed = [_config(federation=federation, beacon_port=port, keyring=keyring) for _ in range(2)]
    open_ = _config(federation=federation, beacon_port=port)
    sinks = [Collector() for _ in range(3)]
    stale = WireCodec(keyring).encode(_beacon(keyed[0], sent_at=time.time() - 100))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            services = [
                await nursery.start(serve_beacons, c, s)
                for c, s in zip([*keyed, open_], sinks, strict=True)
            ]
            await _send_to(port, stale)
            await wait_for(
                lambda: (
                    sinks[0].ids() == {keyed[1].node_id}
                    and sinks[1].ids() == {keyed[0].node_id}
                    and services[0].statistics().rejected.get("unsigned", 0) >= 1
                    and services[0].statistics().rejected.get("stale", 0) >= 1
                    and services[2].statistics().rejected.get("signed", 0) >= 2
                )
            )
            nursery.cancel_scope.cancel()
    assert sinks[2].hints == []  # an open node never hears a keyed federation
    assert open_.node_id not in sinks[0].ids() | sinks[1].ids()


async def test_a_full_channel_drops_hints_and_counts_them() -> None:
    port = free_port("udp")
    config = _config(beacon_port=port)
    send, receive = trio.open_memory_channel[PeerHint](1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(serve_beacons, config, send)
            await _send_to(port, *(WireCodec().encode(_beacon(config)) for _ in range(3)))
            await wait_for(lambda: service.statistics().hints_dropped == 2)
            nursery.cancel_scope.cancel()
    assert service.statistics().hints == 1
    assert receive.receive_nowait().source == "beacon"


async def test_repeated_beacons_are_hinted_again_only_after_a_while() -> None:
    port = free_port("udp")
    config = _config(beacon_port=port)
    sink = Collector()
    env = _beacon(config)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(partial(serve_beacons, config, sink, repeat_after=0.3))
            await _send_to(port, *(WireCodec().encode(env) for _ in range(5)))
            await wait_for(lambda: service.statistics().hints_repeated == 4, every=0.01)
            assert len(sink.hints) == 1
            first = trio.current_time()
            while len(sink.hints) < 2:  # keep repeating it: hinted again after 0.3 s
                await _send_to(port, WireCodec().encode(env))
                await trio.sleep(0.02)
            assert trio.current_time() - first >= 0.3
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# mDNS (loopback only: interfaces=["127.0.0.1"])


async def test_mdns_on_loopback_finds_each_other() -> None:
    federation = f"t-{secrets.token_hex(4)}"
    configs = [
        _config(federation=federation, name=f"m{i}", gossip_port=9100 + i, broadcast=False)
        for i in range(3)
    ]
    sinks = [Collector() for _ in configs]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            services = [
                await nursery.start(serve_mdns, c, s) for c, s in zip(configs, sinks, strict=True)
            ]
            everyone = {c.node_id for c in configs}
            await wait_for(
                lambda: all(
                    s.ids() == everyone - {c.node_id} for c, s in zip(configs, sinks, strict=True)
                ),
                timeout=15,
            )
            nursery.cancel_scope.cancel()
    for config, sink in zip(configs, sinks, strict=True):
        for other in configs:
            if other is not config:
                assert (
                    PeerHint(
                        ("127.0.0.1", other.gossip_port), "mdns", other.node_id, other.name, "o"
                    )
                    in sink.hints
                )
    for service in services:
        assert service.interfaces.mdns_interfaces == ["127.0.0.1"]
        assert not service.statistics().rejected


async def test_mdns_ignores_other_federations_and_rejects_bad_records() -> None:
    config = _config(broadcast=False)
    sink = Collector()
    foreign = _config(orchestra="elsewhere")
    bogus = _config(federation=config.federation)
    good_info = service_info(bogus, ["127.0.0.1"])
    bad_info = zeroconf.ServiceInfo(
        SERVICE_TYPE,
        good_info.name,
        port=7471,
        properties={**good_info.decoded_properties, "wire": "99"},
        server=good_info.server,
        parsed_addresses=["127.0.0.1"],
    )
    zc = await trio.to_thread.run_sync(
        lambda: zeroconf.Zeroconf(interfaces=["127.0.0.1"], ip_version=zeroconf.IPVersion.V4Only)
    )
    try:
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                service = await nursery.start(serve_mdns, config, sink)
                for info in (service_info(foreign, ["127.0.0.1"]), bad_info):
                    await trio.to_thread.run_sync(
                        partial(zc.register_service, info, cooperating_responders=True)
                    )
                await wait_for(
                    lambda: (
                        service.statistics().ignored_federation >= 1
                        and service.statistics().rejected.get("unsupported version", 0) >= 1
                    )
                )
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(zc.close)
    assert sink.hints == []
    assert service.instance == f"{config.node_id}.{SERVICE_TYPE}"


async def test_serve_discovery_runs_the_enabled_sources() -> None:
    port = free_port("udp")
    federation = f"t-{secrets.token_hex(4)}"
    a = _config(federation=federation, beacon_port=port, seeds=(("127.0.0.1", 7999),))
    b = _config(federation=federation, beacon_port=port, mdns=False, gossip_port=7472)
    sink = Collector()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            discovery = await nursery.start(serve_discovery, a, sink)
            other = await nursery.start(serve_discovery, b, Collector())
            assert other.mdns is None and other.seeds is None and other.beacons is not None
            await wait_for(lambda: {h.source for h in sink.hints} >= {"seed", "beacon"}, timeout=15)
            nursery.cancel_scope.cancel()
    assert set(discovery.statistics()) == {"beacons", "mdns", "seeds"}
    assert PeerHint(("127.0.0.1", 7999), "seed") in sink.hints
    assert PeerHint(("127.0.0.1", 7472), "beacon", b.node_id, "n", "o") in sink.hints


async def test_discovery_refuses_an_impossible_interface_choice() -> None:
    config = _config(bind="127.0.0.1", interfaces=("no-such-if0",))
    with trio.fail_after(5), pytest.raises(InterfaceError, match="no-such-if0"):
        await serve_discovery(config, Collector())  # raises before anything starts


async def test_a_stranger_flooding_beacons_is_limited_and_a_peer_still_gets_through() -> None:
    # Someone else on the LAN sends 5,000 valid-looking beacons, each from a new sender id
    # and spread over 50 source ports: the node looks at no more than its budget for that
    # address (the rest are dropped unread, counted), and a real peer's beacon from another
    # address is still heard.
    from mesh._discovery import BEACON_SOURCE_BURST, BEACON_SOURCE_RATE

    port = free_port("udp")
    config = _config(beacon_port=port)
    sink = Collector()
    codec = WireCodec()
    flood = [codec.encode(_beacon(config)) for _ in range(5000)]
    peer = _beacon(config)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(serve_beacons, config, sink)
            started = trio.current_time()
            socks = [
                trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) for _ in range(50)
            ]
            try:
                for sock in socks:
                    await sock.bind(("127.0.0.1", 0))
                for k, data in enumerate(flood):
                    await socks[k % len(socks)].sendto(data, ("127.0.0.1", port))
            finally:
                for sock in socks:
                    sock.close()
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.2", 0))
                await sock.sendto(codec.encode(peer), ("127.0.0.1", port))
            await wait_for(lambda: peer.sender in sink.ids())
            # Everything sent has been read (the peer's beacon came last).
            await wait_for(lambda: service.statistics().received >= len(flood) + 1)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    stats = service.statistics()
    allowed = BEACON_SOURCE_BURST + BEACON_SOURCE_RATE * elapsed
    limited = stats.rejected.get("source limit", 0)
    assert limited >= len(flood) - allowed, (limited, elapsed)
    strangers = sink.ids() - {peer.sender}
    assert 0 < len(strangers) <= allowed
    assert len(strangers) + limited >= len(flood)  # (the node's own beacons share the address)
    assert PeerHint(("127.0.0.2", 7000), "beacon", peer.sender, "x", "y") in sink.hints
