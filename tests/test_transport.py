"""The gossip port (mesh/_transport.py) and its receiving edge (mesh/_inbound.py), on loopback:
receiver binding, first contact, the TCP limits, frame prefixes, and what is never resolved.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from mesh._discovery import resolve_seeds
from mesh._inbound import Inbound, SourceBudget
from mesh._node import NodeConfig, open_node
from mesh._transport import MAX_STREAMS_PER_SOURCE, Transport, open_transport
from mesh._wire import (
    FRAME_MAGIC,
    WIRE_VERSION,
    Envelope,
    Gossip,
    InvalidMessage,
    Keyring,
    MemberRecord,
    Nack,
    PushPull,
    Request,
    WireCodec,
)
from tests.livenodes import loopback_config

KEYRING = Keyring.single(b"t" * 32)
A, B, C = ("a" * 32, "b" * 32, "c" * 32)


@contextlib.asynccontextmanager
async def transport(node_id: str, incarnation: int = 0) -> AsyncIterator[Transport]:
    async with open_transport(
        bind="127.0.0.1",
        port=0,
        advertise_host="127.0.0.1",
        federation="t",
        node_id=node_id,
        codec=WireCodec(KEYRING),
        stream_timeout=2.0,
        incarnation=incarnation,
    ) as t:
        yield t


async def serve(nursery: trio.Nursery, t: Transport, inbox: list[Envelope] | None = None) -> None:
    async def on_stream(src: tuple[str, int], env: Envelope) -> PushPull | None:
        return PushPull(()) if isinstance(env.body, PushPull) else None

    got = [] if inbox is None else inbox
    await nursery.start(t.serve_datagrams, lambda src, env: got.append(env))
    await nursery.start(t.serve_streams, on_stream)


async def until(check: object, what: str) -> None:
    with trio.fail_after(5):
        while not check():  # type: ignore[operator]
            await trio.sleep(0.01)


def test_a_source_budget_limits_one_address_and_not_the_others() -> None:
    """A flood from one address is cut to the budget's rate; another address, and the same
    one after a quiet time, are not touched; the table of addresses stays bounded."""
    budget = SourceBudget(rate=100.0, burst=10.0, max_sources=4)
    assert sum(budget.allow("10.0.0.9", 0.0) for _ in range(1000)) == 10
    assert budget.allow("10.0.0.1", 0.0)
    assert sum(budget.allow("10.0.0.9", 0.05) for _ in range(1000)) == 5  # 100/s x 0.05 s
    assert sum(budget.allow("10.0.0.9", 10.0) for _ in range(1000)) == 10  # burst, not more
    for i in range(100):  # spoofed sources: forgotten least recent first, never more than 4
        assert budget.allow(f"10.1.0.{i}", 10.0)
    assert len(budget._buckets) == 4


def test_inbound_accepts_a_binding_only_within_this_run() -> None:
    """Bound below the incarnation the node started with: an earlier run (a capture replayed
    after a restart); above its current one: an incarnation it never announced."""
    codec = WireCodec(KEYRING)
    inbound = Inbound(codec, "t", B, boot_incarnation=5)
    inbound.incarnation = 7
    for seq, (bound, reason) in enumerate(
        [(4, "stale receiver"), (5, None), (7, None), (8, "future receiver")], start=1
    ):
        env = Envelope("t", A, 0, seq, 100.0, Nack(1, C), B, bound)
        assert (inbound.datagram(codec.encode(env), 100.0) is None) == (reason is not None)
        if reason:
            assert inbound.rejected[reason] == 1
    unbound = Envelope("t", A, 0, 9, 100.0, Nack(1, C))
    assert inbound.datagram(codec.encode(unbound), 100.0) is None
    assert inbound.rejected["unbound"] == 1


async def test_a_datagram_reaches_only_the_node_it_is_bound_to() -> None:
    inbox: list[Envelope] = []
    async with transport(A) as a, transport(B, 3) as b, trio.open_nursery() as nursery:
        await serve(nursery, b, inbox)
        a.send_nowait(b.address, Gossip(()), (B, 3))
        await until(lambda: len(inbox) == 1, "delivered")
        assert inbox[0].to == B and inbox[0].to_incarnation == 3
        a.send_nowait(b.address, Gossip(()), (C, 3))  # bound to another node
        a.send_nowait(b.address, Gossip(()), None)  # bound to nobody
        await until(lambda: sum(b.statistics().rejected.values()) == 2, "refused")
        assert b.statistics().rejected == {"misdirected": 1, "unbound": 1}
        assert len(inbox) == 1
        nursery.cancel_scope.cancel()


async def test_a_join_is_the_one_exchange_accepted_unbound() -> None:
    async with transport(A) as a, transport(B, 2) as b, trio.open_nursery() as nursery:
        await serve(nursery, b)
        reply = await a.exchange(b.address, PushPull((), join=True), None)
        assert reply.to == A and isinstance(reply.body, PushPull)  # the answer is bound to us
        with pytest.raises(InvalidMessage):  # refused: no answer
            await a.exchange(b.address, Request(1, "/o/n", "k", None), None)
        assert b.statistics().rejected == {"unbound": 1}
        reply = await a.exchange(b.address, PushPull(()), (B, 2))
        assert isinstance(reply.body, PushPull)
        nursery.cancel_scope.cancel()


async def test_one_source_gets_a_few_connections_and_a_second_to_start() -> None:
    async with transport(A) as a, transport(B) as b, trio.open_nursery() as nursery:
        await serve(nursery, b)
        held = []
        for _ in range(MAX_STREAMS_PER_SOURCE + 20):  # idle, from another loopback address
            s = trio.socket.socket()
            await s.bind(("127.0.0.2", 0))
            await s.connect(b.address)
            held.append(s)
        await until(
            lambda: b.statistics().rejected.get("source stream limit") == 20, "excess closed"
        )
        # Others are served meanwhile (another source address).
        reply = await a.exchange(b.address, PushPull(()), (B, 0))
        assert isinstance(reply.body, PushPull)
        # The held ones are closed once the handshake time is up.
        await until(
            lambda: b.statistics().rejected.get("handshake timeout") == MAX_STREAMS_PER_SOURCE,
            "held connections closed",
        )
        for s in held:
            s.close()
        nursery.cancel_scope.cancel()


def _prefix(key_id: int, length: int) -> bytes:
    return FRAME_MAGIC + bytes((WIRE_VERSION, key_id)) + struct.pack("!I", length)


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        (
            FRAME_MAGIC + bytes((WIRE_VERSION, 1)) + struct.pack("!I", 1 << 20) + b"\0" * 16,
            "bad tag",
        ),
        (FRAME_MAGIC + bytes((WIRE_VERSION, 0)) + struct.pack("!I", 100) + b"\0" * 16, "unsigned"),
        (struct.pack("!I", 16 << 20) + b"\0" * 20, "not stagemesh"),  # a version-1 frame
    ],
)
async def test_a_frame_prefix_is_checked_before_its_message_is_read(
    prefix: bytes, reason: str
) -> None:
    async with transport(B) as b, trio.open_nursery() as nursery:
        await serve(nursery, b)
        async with await trio.open_tcp_stream(*b.address) as stream:
            await stream.send_all(prefix)
            with trio.fail_after(2):  # closed at once, not after reading a message
                while await stream.receive_some(1024):
                    pass
        assert b.statistics().rejected == {reason: 1}
        nursery.cancel_scope.cancel()


async def test_an_address_is_never_resolved(tmp_path: Path) -> None:
    """An IPv6 member on this IPv4 socket is a counted send error (Python would otherwise look
    the text up); a hint naming a host is refused; a seed name is looked up once, off the event
    loop, and IP literals are taken as they are."""
    async with transport(A) as a:
        a.send_nowait(("::1", 7471), Gossip(()), (B, 0))
        assert a.statistics().send_errors == 1
    config = loopback_config(tmp_path, "/o1/n1", federation="t")
    async with open_node(config) as node:
        node.add_peer(("localhost", 7471))
        assert node.transport.statistics().rejected == {"hint address": 1}
    seeds = (("127.0.0.1", 1), ("localhost", 2), ("127.0.0.1", 1))
    assert await resolve_seeds(seeds) == [("127.0.0.1", 1), ("127.0.0.1", 2)]


def test_a_node_binds_an_ipv4_address_only() -> None:
    for bad in ("localhost", "::1", "10.0.0.256", "127.000.0.1"):
        with pytest.raises(ValueError, match="bind"):
            NodeConfig(bind=bad)
    assert NodeConfig(bind="0.0.0.0").bind == "0.0.0.0"


def test_member_records_of_ipv6_members_still_travel() -> None:
    record = MemberRecord(B, "n", "o", ("fe80::1", 7471), 0)
    env = Envelope("t", A, 0, 1, 0.0, Gossip((record,)))
    assert WireCodec().decode(WireCodec().encode(env)) == env
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert s.family == socket.AF_INET  # what the gossip port is


async def test_a_node_may_ask_itself_over_tcp(tmp_path: Path) -> None:
    """A datagram "from" this node is refused (``own``), but a request to its own path (a tool
    talking to the conductor through the conductor's API) goes through."""

    async def echo(sender: str | None, payload: object) -> object:
        return {"from": sender, "payload": payload}

    config = loopback_config(tmp_path, "/o1/n1", federation="t")
    async with open_node(config) as node:
        node.handle("echo", echo)
        answer = await node.request(node.path, "echo", 7)
        assert answer == {"from": node.path, "payload": 7}
        assert node.transport.statistics().rejected == {}


async def test_a_peer_that_resets_the_connection_is_an_os_error() -> None:
    """A peer that drops the connection mid-exchange gives the caller the one error family it
    handles (OSError, so Node.request says PeerUnreachable); nothing escapes to crash a node."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    dest = listener.getsockname()

    async def reset_the_first_caller() -> None:
        conn, _ = await listener.accept()
        # SO_LINGER 0: close sends RST instead of FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    async with transport(A) as a, trio.open_nursery() as nursery:
        nursery.start_soon(reset_the_first_caller)
        with pytest.raises(OSError):
            await a.exchange(dest, PushPull(()), (B, 0), timeout=5)
    listener.close()
