"""LAN discovery: mDNS, broadcast beacons and static seeds, all saying "maybe a peer here".

Every source turns what it hears into a :class:`PeerHint` and hands it to a sink (a trio
``MemorySendChannel`` or a plain callable). Discovery never decides liveness: membership probes
the hinted address and decides. Where each source runs follows the bind address
(:mod:`mesh._interfaces`).

Drivers, each started with ``nursery.start`` and reporting a handle with ``statistics()``:

* :func:`serve_beacons`: a small (signed, when a key is set) :class:`~mesh._wire.Beacon` on a
  shared UDP port, every 100 ms for the first second, then every second, to every chosen
  interface's broadcast address; beacons heard become hints.
* :func:`serve_mdns`: python-zeroconf (sync API in its own threads), service
  ``_stagemesh._udp.local.``, instance named after the node id, registered as a cooperating
  responder (no 1.2 s probing), browsed with multicast (QM) questions.
* :func:`serve_seeds`: ``--seed HOST:PORT`` addresses, resolved and hinted now and then
  (:func:`resolve_seeds` looks names up in a worker thread, with a time limit: a slow resolver
  never stalls the event loop).
* :func:`serve_discovery`: all of the enabled ones.

Exceptions: :class:`InvalidSeed` (a ``--seed`` that does not parse) and
:class:`~mesh._interfaces.InterfaceError` (no usable interface); both are ``ValueError``\\ s whose
message is fit for a usage error.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket as stdsocket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs
import trio
import zeroconf

from mesh._errors import MeshError
from mesh._inbound import SourceBudget
from mesh._interfaces import DiscoveryInterfaces, choose_interfaces, local_addresses
from mesh._names import check_name, is_valid_name
from mesh._ports import DEFAULT_BEACON_PORT, DEFAULT_GOSSIP_PORT
from mesh._wire import (
    MAX_DATAGRAM,
    NODE_ID_LENGTH,
    WIRE_VERSION,
    Address,
    Beacon,
    Envelope,
    InvalidMessage,
    Keyring,
    WireCodec,
    is_ip_literal,
)

__all__ = [
    "ANSWER_GAP",
    "BEACON_MAX_AGE",
    "BEACON_SOURCE_BURST",
    "BEACON_SOURCE_RATE",
    "DEFAULT_BEACON_PORT",
    "DEFAULT_GOSSIP_PORT",
    "SEED_RESOLVE_TIMEOUT",
    "SERVICE_TYPE",
    "BeaconService",
    "BeaconStatistics",
    "Discovery",
    "DiscoveryConfig",
    "HintSink",
    "InvalidSeed",
    "MdnsService",
    "MdnsStatistics",
    "PeerHint",
    "SeedService",
    "SeedStatistics",
    "parse_seed",
    "resolve_seeds",
    "serve_beacons",
    "serve_discovery",
    "serve_mdns",
    "serve_seeds",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_stagemesh._udp.local."
BEACON_MAX_AGE = 30.0
"""Signed beacons whose ``sent_at`` is further than this from our wall clock are dropped."""
BEACON_SOURCE_RATE = 500.0
"""Datagrams a second looked at on the beacon port from one IP address: a node beacons 10 a
second in its first second, then 1, so a hundred nodes on one host (tests, demos) starting
together stay under it; a stranger flooding from any number of ports is cut to this."""
BEACON_SOURCE_BURST = 1000.0
"""How many datagrams one address may have looked at at once after a quiet time."""
ANSWER_GAP = 0.05
"""A beacon from a node not heard before is answered with an early beacon, at most this often."""
SEED_RESOLVE_TIMEOUT = 5.0
"""How long a ``--seed`` name may take to resolve before it is given up (seconds)."""

_HEX_ID = re.compile(rf"[0-9a-f]{{{NODE_ID_LENGTH}}}\Z")
SOURCES = ("mdns", "beacon", "seed", "registry")


# ---------------------------------------------------------------------------------------------
# Values


@attrs.frozen
class PeerHint:
    """ "Maybe a peer at this address": what every discovery source produces.

    ``address`` is the peer's gossip address; ``source`` is ``"mdns"``, ``"beacon"``,
    ``"seed"`` or ``"registry"``; ``node_id``, ``name`` and ``orchestra`` are what the source
    claims (``None`` when it does not know, as for seeds). A hint is never proof of life.
    """

    address: Address
    source: str
    node_id: str | None = None
    name: str | None = None
    orchestra: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown hint source {self.source!r}")


HintSink: TypeAlias = "trio.MemorySendChannel[PeerHint] | Callable[[PeerHint], object]"
"""Where hints go: a memory channel (``send_nowait``; a full channel drops the hint and counts
it) or a callable run in the trio thread."""


def _check_node_id(instance: Any, attribute: Any, value: str) -> None:
    if not _HEX_ID.match(value):
        raise ValueError(f"node id must be {NODE_ID_LENGTH} lowercase hex characters")


def _check_names(instance: Any, attribute: Any, value: str) -> None:
    check_name(value, attribute.name)


def _check_port(instance: Any, attribute: Any, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} {value} is not a port number")


@attrs.frozen
class DiscoveryConfig:
    """What the discovery drivers need to know about this node.

    ``bind`` is the gossip bind address (it decides the interfaces, see
    :func:`~mesh._interfaces.choose_interfaces`); ``interfaces`` the ``--interface`` names;
    ``gossip_port`` the port peers should contact (the one announced); ``beacon_port`` the
    shared beacon port; ``seeds`` parsed ``--seed`` addresses; ``mdns``/``broadcast`` switch
    those sources on or off. The beacon intervals are knobs for tests.
    """

    federation: str = attrs.field(validator=_check_names)
    node_id: str = attrs.field(validator=_check_node_id)
    name: str = attrs.field(validator=_check_names)
    orchestra: str = attrs.field(validator=_check_names)
    gossip_port: int = attrs.field(validator=_check_port)
    bind: str = "0.0.0.0"
    interfaces: tuple[str, ...] = ()
    beacon_port: int = attrs.field(default=DEFAULT_BEACON_PORT, validator=_check_port)
    keyring: Keyring | None = None
    incarnation: int = 0
    mdns: bool = True
    broadcast: bool = True
    seeds: tuple[Address, ...] = ()
    beacon_fast_interval: float = 0.1
    beacon_fast_period: float = 1.0
    beacon_interval: float = 1.0
    seed_interval: float = 10.0

    def choose_interfaces(self) -> DiscoveryInterfaces:
        """The interfaces this node's discovery uses (reads the host's addresses)."""
        return choose_interfaces(self.bind, self.interfaces, local_addresses())


def _emit(sink: HintSink, hint: PeerHint) -> bool:
    if isinstance(sink, trio.MemorySendChannel):
        try:
            sink.send_nowait(hint)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True
    sink(hint)
    return True


class _Repeats:
    """Suppresses a hint identical to one emitted less than ``after`` seconds ago."""

    def __init__(self, after: float) -> None:
        self.after = after
        self._last: dict[PeerHint, float] = {}

    def fresh(self, hint: PeerHint, now: float) -> bool:
        last = self._last.get(hint)
        if last is not None and now - last < self.after:
            return False
        if len(self._last) > 10_000:
            self._last = {h: t for h, t in self._last.items() if now - t < self.after}
        self._last[hint] = now
        return True


# ---------------------------------------------------------------------------------------------
# Broadcast beacons


@attrs.frozen
class BeaconStatistics:
    """Counters of one beacon driver (a snapshot).

    ``answers`` counts early beacons sent because a new node was heard; ``rejected`` counts
    datagrams that were not valid beacons, by
    :attr:`~mesh._wire.InvalidMessage.reason`, and (``source limit``) those dropped unread
    because their source address spent its budget (:data:`BEACON_SOURCE_RATE` a second,
    bursts of :data:`BEACON_SOURCE_BURST`); ``ignored_*`` count valid beacons that are not
    for us (our own, another federation, a sender not reachable through our interfaces).
    """

    sent: int
    send_errors: int
    answers: int
    received: int
    hints: int
    hints_repeated: int
    hints_dropped: int
    ignored_self: int
    ignored_federation: int
    ignored_network: int
    rejected: Mapping[str, int]


class BeaconService:
    """Handle of a running :func:`serve_beacons` (what ``nursery.start`` returns)."""

    def __init__(self, config: DiscoveryConfig, interfaces: DiscoveryInterfaces) -> None:
        self.config = config
        self.interfaces = interfaces
        self.port = config.beacon_port
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    def statistics(self) -> BeaconStatistics:
        """A snapshot of the counters."""
        c = self._counts
        return BeaconStatistics(
            sent=c["sent"],
            send_errors=c["send_errors"],
            answers=c["answers"],
            received=c["received"],
            hints=c["hints"],
            hints_repeated=c["hints_repeated"],
            hints_dropped=c["hints_dropped"],
            ignored_self=c["ignored_self"],
            ignored_federation=c["ignored_federation"],
            ignored_network=c["ignored_network"],
            rejected=MappingProxyType(dict(self._rejected)),
        )


class _Wake:
    def __init__(self) -> None:
        self.event = trio.Event()


def _beacon_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_BROADCAST, 1)
    return sock


async def serve_beacons(
    config: DiscoveryConfig,
    hints: HintSink,
    *,
    repeat_after: float = 2.0,
    codec: WireCodec | None = None,
    task_status: trio.TaskStatus[BeaconService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send and hear broadcast beacons until cancelled; hint every peer heard.

    Beacons are signed and checked with *codec* (default: one of ``config.keyring``); a node
    passes its gossip codec, whose keys change when the federation key is rotated.

    Binds ``config.beacon_port`` shared (SO_REUSEADDR + SO_REUSEPORT, so every node on a host
    hears every broadcast), and sends from each chosen address to its broadcast address. A
    beacon heard becomes ``PeerHint((source ip, beacon port field), "beacon", sender, name,
    orchestra)``; identical hints are repeated at most every *repeat_after* seconds. A node not
    heard before gets an early beacon in answer (at most every :data:`ANSWER_GAP` seconds), so
    a newcomer hears everyone at once rather than within a second. Invalid datagrams are
    counted by reason and dropped; each source address has a budget of datagrams looked at
    (beyond it they are dropped unread, counted as ``source limit``), so a flood costs a
    ``recvfrom`` per datagram, not a decode and a hint. Reports a :class:`BeaconService`.
    """
    interfaces = config.choose_interfaces()
    service = BeaconService(config, interfaces)
    codec = codec or WireCodec(config.keyring)
    repeats = _Repeats(repeat_after)
    counts, rejected = service._counts, service._rejected
    known: set[str] = set()  # senders heard; a new one is answered with an early beacon
    budget = SourceBudget(BEACON_SOURCE_RATE, BEACON_SOURCE_BURST)
    wake = _Wake()

    with _beacon_socket() as listener:
        await listener.bind(("0.0.0.0", config.beacon_port))
        senders: list[tuple[trio.socket.SocketType, str]] = []
        try:
            for source, broadcast in interfaces.broadcast_targets:
                sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
                senders.append((sock, broadcast))
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_BROADCAST, 1)
                await sock.bind((source, 0))

            async def send_loop() -> None:
                seq = 0
                started = trio.current_time()
                beacon = Beacon(config.name, config.orchestra, config.gossip_port)
                while True:
                    env = Envelope(
                        config.federation,
                        config.node_id,
                        config.incarnation,
                        seq,
                        time.time(),
                        beacon,
                    )
                    seq += 1
                    data = codec.encode(env)
                    for sock, broadcast in senders:
                        try:
                            await sock.sendto(data, (broadcast, config.beacon_port))
                            counts["sent"] += 1
                        except OSError as exc:
                            counts["send_errors"] += 1
                            log.debug("beacon to %s failed: %s", broadcast, exc)
                    fast = trio.current_time() - started < config.beacon_fast_period
                    delay = config.beacon_fast_interval if fast else config.beacon_interval
                    with trio.move_on_after(delay):
                        await trio.sleep(min(ANSWER_GAP, delay))
                        await wake.event.wait()  # a newcomer: answer it early
                        counts["answers"] += 1
                    wake.event = trio.Event()

            async def receive_loop() -> None:
                while True:
                    data, (host, _port) = await listener.recvfrom(65536)
                    counts["received"] += 1
                    if not budget.allow(host, trio.current_time()):
                        rejected["source limit"] += 1
                        continue
                    try:
                        env = codec.decode(data, MAX_DATAGRAM)
                        if not isinstance(env.body, Beacon):
                            raise InvalidMessage("not a beacon", type(env.body).__name__)
                        if codec.keyring is not None and (
                            abs(env.sent_at - time.time()) > BEACON_MAX_AGE
                        ):
                            raise InvalidMessage("stale", f"sent_at {env.sent_at}")
                    except InvalidMessage as exc:
                        rejected[exc.reason] += 1
                        log.debug("dropped datagram from %s: %s", host, exc)
                        continue
                    if env.sender == config.node_id:
                        counts["ignored_self"] += 1
                    elif env.federation != config.federation:
                        counts["ignored_federation"] += 1
                    elif not interfaces.accepts(host):
                        counts["ignored_network"] += 1
                    else:
                        body = env.body
                        hint = PeerHint(
                            (host, body.port), "beacon", env.sender, body.name, body.orchestra
                        )
                        if env.sender not in known:
                            if len(known) > 10_000:
                                known.clear()
                            known.add(env.sender)
                            wake.event.set()
                        if not repeats.fresh(hint, trio.current_time()):
                            counts["hints_repeated"] += 1
                        elif _emit(hints, hint):
                            counts["hints"] += 1
                        else:
                            counts["hints_dropped"] += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_loop)
                nursery.start_soon(send_loop)
                task_status.started(service)
        finally:
            for sock, _ in senders:
                sock.close()


# ---------------------------------------------------------------------------------------------
# mDNS


@attrs.frozen
class MdnsStatistics:
    """Counters of one mDNS driver (a snapshot).

    ``events`` counts browser add/update callbacks; ``unresolved`` those whose service record
    could not be read in time; ``rejected`` services with unusable TXT/SRV data, by reason.
    """

    registered: bool
    events: int
    unresolved: int
    hints: int
    hints_dropped: int
    ignored_self: int
    ignored_federation: int
    ignored_network: int
    rejected: Mapping[str, int]


class MdnsService:
    """Handle of a running :func:`serve_mdns` (what ``nursery.start`` returns)."""

    def __init__(self, config: DiscoveryConfig, interfaces: DiscoveryInterfaces) -> None:
        self.config = config
        self.interfaces = interfaces
        self.instance = f"{config.node_id}.{SERVICE_TYPE}"
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self.registered = trio.Event()

    def statistics(self) -> MdnsStatistics:
        """A snapshot of the counters."""
        c = self._counts
        return MdnsStatistics(
            registered=self.registered.is_set(),
            events=c["events"],
            unresolved=c["unresolved"],
            hints=c["hints"],
            hints_dropped=c["hints_dropped"],
            ignored_self=c["ignored_self"],
            ignored_federation=c["ignored_federation"],
            ignored_network=c["ignored_network"],
            rejected=MappingProxyType(dict(self._rejected)),
        )


def service_info(config: DiscoveryConfig, addresses: list[str]) -> zeroconf.ServiceInfo:
    """The mDNS record of this node: instance ``<node id>._stagemesh._udp.local.``, SRV port
    the gossip port, TXT ``federation``, ``orchestra``, ``name``, ``id``, ``port``, ``wire``
    (the wire version) and ``incarnation``."""
    return zeroconf.ServiceInfo(
        SERVICE_TYPE,
        f"{config.node_id}.{SERVICE_TYPE}",
        port=config.gossip_port,
        properties={
            "federation": config.federation,
            "orchestra": config.orchestra,
            "name": config.name,
            "id": config.node_id,
            "port": str(config.gossip_port),
            "wire": str(WIRE_VERSION),
            "incarnation": str(config.incarnation),
        },
        server=f"stagemesh-{config.node_id}.local.",
        parsed_addresses=addresses,
    )


def _read_service(
    config: DiscoveryConfig, interfaces: DiscoveryInterfaces, info: zeroconf.ServiceInfo
) -> tuple[str, list[PeerHint]]:
    """Turn a resolved service into hints, or say why not (``("ok", hints)`` or a reason)."""
    props = info.decoded_properties
    node_id = props.get("id") or ""
    if not _HEX_ID.match(node_id) or info.name != f"{node_id}.{SERVICE_TYPE}":
        return "bad id", []
    if node_id == config.node_id:
        return "self", []
    if props.get("federation") != config.federation:
        return "federation", []
    name, orchestra = props.get("name"), props.get("orchestra")
    if not (is_valid_name(name) and is_valid_name(orchestra)):
        return "bad name", []
    if props.get("wire") != str(WIRE_VERSION):
        return "unsupported version", []
    port = info.port
    if port is None or not 1 <= port <= 65535:
        return "bad port", []
    announced = info.parsed_addresses(zeroconf.IPVersion.V4Only)
    outside = [a for a in announced if not ipaddress.IPv4Address(a).is_loopback]
    # A loopback address is only believed from a peer that has nothing else (a loopback-only
    # node, necessarily on this host).
    usable = [a for a in (outside or announced) if interfaces.accepts(a)]
    if not usable:
        return "network", []
    assert name is not None and orchestra is not None
    return "ok", [PeerHint((a, port), "mdns", node_id, name, orchestra) for a in usable]


class _Listener(zeroconf.ServiceListener):
    """Browser callbacks (in zeroconf's browser thread): resolve, then enter trio."""

    def __init__(
        self,
        service: MdnsService,
        deliver: Callable[[str, list[PeerHint]], None],
        token: trio.lowlevel.TrioToken,
    ) -> None:
        self._service = service
        self._deliver = deliver
        self._token = token

    def _handle(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        try:
            info = zc.get_service_info(
                type_, name, timeout=1500, question_type=zeroconf.DNSQuestionType.QM
            )
        except Exception as exc:  # never let a bad record kill the browser thread
            log.debug("resolving %s failed: %r", name, exc)
            info = None
        if info is None:
            result: tuple[str, list[PeerHint]] = ("unresolved", [])
        else:
            try:
                result = _read_service(self._service.config, self._service.interfaces, info)
            except Exception as exc:
                log.debug("unusable service %s: %r", name, exc)
                result = ("malformed", [])
        try:
            trio.from_thread.run_sync(self._deliver, *result, trio_token=self._token)
        except trio.RunFinishedError:
            pass  # trio is gone; nobody is listening
        except Exception:  # a failing hint callback must not kill the browser thread
            log.exception("delivering an mDNS hint failed")

    def add_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        self._handle(zc, type_, name)

    def update_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        self._handle(zc, type_, name)

    def remove_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        pass  # mDNS is never a liveness signal


async def serve_mdns(
    config: DiscoveryConfig,
    hints: HintSink,
    *,
    cooperating_responders: bool = True,
    task_status: trio.TaskStatus[MdnsService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce this node and browse for others over mDNS until cancelled.

    Runs python-zeroconf's sync API in worker threads, restricted to the chosen interfaces
    (``["127.0.0.1"]`` for a loopback-bound node). The service is registered as a cooperating
    responder (the instance name holds the node id, so it is unique by construction and the
    1.2 s probing is skipped); *cooperating_responders* ``False`` is zeroconf's default, kept
    for the benchmark's baseline. The browser asks multicast (QM) questions so every node on a
    host hears the answers. Each service found or updated becomes one hint per usable address.
    On exit, goodbyes are sent and the threads are stopped, even when cancelled. Reports an
    :class:`MdnsService` as soon as the browser runs; ``service.registered`` is set once the
    announcements are sent.
    """
    interfaces = config.choose_interfaces()
    service = MdnsService(config, interfaces)
    counts, rejected = service._counts, service._rejected

    def deliver(reason: str, found: list[PeerHint]) -> None:
        counts["events"] += 1
        if reason == "ok":
            for hint in found:
                counts["hints" if _emit(hints, hint) else "hints_dropped"] += 1
        elif reason == "unresolved":
            counts["unresolved"] += 1
        elif reason in ("self", "federation", "network"):
            counts[f"ignored_{reason}"] += 1
        else:
            rejected[reason] += 1

    zc = await trio.to_thread.run_sync(
        partial(
            zeroconf.Zeroconf,
            interfaces=interfaces.mdns_interfaces,
            ip_version=zeroconf.IPVersion.V4Only,
        )
    )
    browser: zeroconf.ServiceBrowser | None = None
    try:
        listener = _Listener(service, deliver, trio.lowlevel.current_trio_token())
        browser = await trio.to_thread.run_sync(
            partial(
                zeroconf.ServiceBrowser,
                zc,
                SERVICE_TYPE,
                listener=listener,
                question_type=zeroconf.DNSQuestionType.QM,
            )
        )
        info = service_info(config, interfaces.announced_addresses)
        async with trio.open_nursery() as nursery:

            async def register() -> None:
                await trio.to_thread.run_sync(
                    partial(
                        zc.register_service,
                        info,
                        cooperating_responders=cooperating_responders,
                    )
                )
                service.registered.set()

            nursery.start_soon(register)
            task_status.started(service)
            await trio.sleep_forever()  # until cancelled; then goodbyes below
    finally:
        with trio.CancelScope(shield=True):
            if browser is not None:
                await trio.to_thread.run_sync(browser.cancel)
            await trio.to_thread.run_sync(zc.close)


# ---------------------------------------------------------------------------------------------
# Static seeds


class InvalidSeed(MeshError, ValueError):
    """Raised by :func:`parse_seed` for a ``--seed`` that is not ``HOST:PORT`` (``HOST``
    alone means the default gossip port; IPv6 literals go in brackets)."""


def parse_seed(text: str, default_port: int = DEFAULT_GOSSIP_PORT) -> Address:
    """Parse ``HOST:PORT``, ``HOST`` or ``[V6]:PORT`` into ``(host, port)``.

    The host is not resolved here: a name is looked up by :func:`resolve_seeds` when the node
    starts, in a worker thread with a time limit. Raises :class:`InvalidSeed`.
    """
    original = text
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidSeed(f"seed {original!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidSeed(f"seed {original!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise InvalidSeed(f"seed {original!r}: write IPv6 addresses as [ADDRESS]:PORT")
    else:
        host = text
    if not host or any(c.isspace() for c in host):
        raise InvalidSeed(f"seed {original!r}: expected HOST:PORT")
    if port_text is None:
        return (host, default_port)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InvalidSeed(f"seed {original!r}: port {port_text!r} is not a number in 1..65535")
    return (host, int(port_text))


@attrs.frozen
class SeedStatistics:
    """Counters of the seed source: rounds of resolution, hints given, names not resolved."""

    rounds: int
    hints: int
    hints_dropped: int
    unresolved: int


class SeedService:
    """Handle of a running :func:`serve_seeds`."""

    def __init__(self, seeds: tuple[Address, ...]) -> None:
        self.seeds = seeds
        self._counts: Counter[str] = Counter()

    def statistics(self) -> SeedStatistics:
        """A snapshot of the counters."""
        c = self._counts
        return SeedStatistics(c["rounds"], c["hints"], c["hints_dropped"], c["unresolved"])


async def _resolve(host: str, port: int, within: float = SEED_RESOLVE_TIMEOUT) -> list[Address]:
    """*host*'s IPv4 addresses (a literal as it is): looked up in trio's worker thread, given
    up after *within* seconds (``OSError``), so the event loop never waits on a resolver."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [(str(ip), port)]
    with trio.move_on_after(within):
        infos = await trio.socket.getaddrinfo(
            host, port, family=stdsocket.AF_INET, type=stdsocket.SOCK_DGRAM
        )
        out: dict[Address, None] = {}
        for _family, _type, _proto, _canon, sockaddr in infos:
            if is_ip_literal(str(sockaddr[0])):
                out[(str(sockaddr[0]), int(sockaddr[1]))] = None
        return list(out)
    raise OSError(f"no answer within {within:g} s")


async def resolve_seeds(
    seeds: tuple[Address, ...],
    within: float = SEED_RESOLVE_TIMEOUT,
    counts: Counter[str] | None = None,
) -> list[Address]:
    """The addresses of *seeds*, in order: IP literals as they are, names looked up once, all
    at the same time, each within *within* seconds; a name that does not resolve is logged,
    counted in ``counts["unresolved"]`` and left out (a node never resolves a name later, nor
    on its event loop)."""
    found: list[list[Address]] = [[] for _ in seeds]

    async def one(index: int, host: str, port: int) -> None:
        try:
            found[index] = await _resolve(host, port, within)
        except OSError as exc:
            if counts is not None:
                counts["unresolved"] += 1
            log.warning("seed %s does not resolve, ignored: %s", host, exc)

    async with trio.open_nursery() as nursery:
        for index, (host, port) in enumerate(seeds):
            nursery.start_soon(one, index, host, port)
    return list(dict.fromkeys(a for addresses in found for a in addresses))


def _always() -> bool:
    return True


async def serve_seeds(
    config: DiscoveryConfig,
    hints: HintSink,
    *,
    needed: Callable[[], bool] = _always,
    task_status: trio.TaskStatus[SeedService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Resolve ``config.seeds`` once (:func:`resolve_seeds`), hint every address now, then
    again every ``config.seed_interval`` seconds while *needed()* says so (a node that knows
    nobody yet: its seeds may start after it)."""
    service = SeedService(config.seeds)
    counts = service._counts
    addresses = await resolve_seeds(config.seeds, counts=counts)
    started = False
    while True:
        if needed():
            counts["rounds"] += 1
            for address in addresses:
                hint = PeerHint(address, "seed")
                counts["hints" if _emit(hints, hint) else "hints_dropped"] += 1
        if not started:
            started = True
            task_status.started(service)
        await trio.sleep(config.seed_interval)


# ---------------------------------------------------------------------------------------------
# All of them


class Discovery:
    """Handle of a running :func:`serve_discovery`: the sources that run (``None`` if off)."""

    def __init__(self) -> None:
        self.beacons: BeaconService | None = None
        self.mdns: MdnsService | None = None
        self.seeds: SeedService | None = None

    def statistics(self) -> dict[str, Any]:
        """Each running source's statistics snapshot, by source name."""
        out: dict[str, Any] = {}
        for name in ("beacons", "mdns", "seeds"):
            source = getattr(self, name)
            if source is not None:
                out[name] = source.statistics()
        return out


async def serve_discovery(
    config: DiscoveryConfig,
    hints: HintSink,
    *,
    seeds_needed: Callable[[], bool] = _always,
    codec: WireCodec | None = None,
    task_status: trio.TaskStatus[Discovery] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every enabled source (seeds, beacons, mDNS) until cancelled; report a
    :class:`Discovery` once all of them have started. Seeds are hinted again only while
    *seeds_needed()* (see :func:`serve_seeds`); beacons are signed and checked with *codec*
    (see :func:`serve_beacons`)."""
    discovery = Discovery()
    if config.mdns or config.broadcast:
        interfaces = config.choose_interfaces()  # fail early, before anything starts
        log.debug("discovery on %s", [a.address for a in interfaces.addresses])
    async with trio.open_nursery() as nursery:
        if config.seeds:
            discovery.seeds = await nursery.start(
                partial(serve_seeds, needed=seeds_needed), config, hints
            )
        if config.broadcast:
            discovery.beacons = await nursery.start(
                partial(serve_beacons, codec=codec), config, hints
            )
        if config.mdns:
            discovery.mdns = await nursery.start(serve_mdns, config, hints)
        task_status.started(discovery)
