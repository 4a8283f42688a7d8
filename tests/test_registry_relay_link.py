"""The relay's trio driver between two real gossip ports and a real registry on loopback.

alice (supernode of cmu) and bob (supernode of colorado) each run a :class:`RelayLink` on
their gossip port, as their bridges do. In the first test bob stays silent on the direct
path, so after the probe budget alice's datagrams go through the registry and reach bob there
(checked and delivered by bob's port as if they came from alice's address); then bob's acks
arrive directly and alice moves off the relay at once. In the second bob is registered at an
address nothing listens on (as behind a NAT): alice's direct TCP exchange fails, and the next
one goes through the registry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from mesh._transport import Transport, open_transport
from mesh._wire import Ack, Address, Envelope, Keyring, Ping, PushPull, WireCodec
from registry_bridge import RegistryClient, RegistryStore, create_app, serve_registry
from registry_bridge._relaylink import RelayLink
from registry_bridge._relaypath import PathConfig
from tests.harness import wait_for

KEYRING = Keyring.single(b"k" * 32)
ALICE, BOB = "a" * 32, "b" * 32


@contextlib.asynccontextmanager
async def port(node_id: str) -> AsyncIterator[Transport]:
    async with open_transport(
        bind="127.0.0.1",
        port=0,
        advertise_host="127.0.0.1",
        federation="sleo",
        node_id=node_id,
        codec=WireCodec(KEYRING),
        stream_timeout=2.0,
        incarnation=1,
    ) as transport:
        yield transport


@attrs.define
class Sites:
    """alice's and bob's gossip ports and relay links, the addresses each knows the other by,
    and a nursery for more tasks."""

    a: Transport
    b: Transport
    link_a: RelayLink
    link_b: RelayLink
    bob_at: Address
    nursery: trio.Nursery
    client_b: RegistryClient


@contextlib.asynccontextmanager
async def two_sites(tmp_path: Path, *, bob_at: Address | None = None) -> AsyncIterator[Sites]:
    """A registry, alice and bob registered as supernodes of two orchestras (bob at *bob_at*
    if given, else at his gossip port), each with a running RelayLink (fast timings)."""
    store = RegistryStore(tmp_path / "r.db")
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery, port(ALICE) as a, port(BOB) as b:
            url = await nursery.start(
                lambda task_status: serve_registry(
                    create_app(store),
                    "127.0.0.1:0",
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            bob = bob_at or b.address
            async with RegistryClient(url) as client_a, RegistryClient(url) as client_b:
                reg_a = await client_a.register(
                    "sleo",
                    "cmu",
                    "alice",
                    host="127.0.0.1",
                    port=a.address[1],
                    node_id=ALICE,
                    supernode=True,
                )
                reg_b = await client_b.register(
                    "sleo", "colorado", "bob", host=bob[0], port=bob[1], node_id=BOB, supernode=True
                )
                timing = PathConfig(probe_budget=0.5, retry_every=0.5)
                link_a = RelayLink(client_a, config=timing, wait=1.0)
                link_b = RelayLink(client_b, config=timing, wait=1.0)
                link_a.set_token(reg_a.token)
                link_b.set_token(reg_b.token)
                link_a.set_peers({bob: "/colorado/bob"})
                link_b.set_peers({a.address: "/cmu/alice"})
                await nursery.start(link_a.run, a)
                await nursery.start(link_b.run, b)
                yield Sites(a, b, link_a, link_b, bob, nursery, client_b)
                stop.set()
                nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_gossip_goes_through_the_registry_until_direct_acks_come(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with two_sites(tmp_path) as s:
            heard_by_b: list[Envelope] = []
            heard_by_a: list[Envelope] = []
            await s.nursery.start(s.b.serve_datagrams, lambda src, env: heard_by_b.append(env))
            await s.nursery.start(s.a.serve_datagrams, lambda src, env: heard_by_a.append(env))
            probe = 0

            def ping() -> None:
                nonlocal probe
                probe += 1
                s.a.send_nowait(s.b.address, Ping(probe, BOB), to=(BOB, 1))

            # bob never acks: alice moves to the relay, and her pings arrive through it
            def relayed_to_bob() -> bool:
                ping()
                return s.link_a.paths.relayed(s.b.address) and s.link_b.received > 0

            await wait_for(relayed_to_bob, 15, "alice relays to bob", every=0.1)
            assert s.link_a.status()["routes"] == {"/colorado/bob": "relay"}
            assert any(isinstance(e.body, Ping) and e.sender == ALICE for e in heard_by_b)

            # the direct path works again: bob's ack arrives on the socket
            def back_to_direct() -> bool:
                ping()
                s.b.send_nowait(s.a.address, Ack(probe, BOB), to=(ALICE, 1))
                return not s.link_a.paths.relayed(s.b.address)

            await wait_for(back_to_direct, 10, "alice back on direct UDP", every=0.1)
            status = s.link_a.status()
            assert status["routes"] == {"/colorado/bob": "direct"}
            assert status["switches"] == 2
            assert 0 < status["relay_share"] < 1
            assert any(isinstance(e.body, Ack) for e in heard_by_a)


async def test_a_join_exchange_goes_through_the_relay_once_direct_tcp_failed(
    tmp_path: Path,
) -> None:
    with trio.socket.socket() as closed:  # a port nobody listens on
        await closed.bind(("127.0.0.1", 0))
        nowhere = ("127.0.0.1", closed.getsockname()[1])
    with trio.fail_after(30):
        async with two_sites(tmp_path, bob_at=nowhere) as s:
            asked: list[tuple[Address, Envelope]] = []

            async def on_stream(src: Address, env: Envelope) -> PushPull | None:
                asked.append((src, env))
                return PushPull((), reply=True)

            await s.nursery.start(s.b.serve_streams, on_stream)
            with pytest.raises(OSError):
                await s.a.exchange(nowhere, PushPull((), join=True), None, 2.0)
            assert s.link_a.paths.relayed(nowhere)
            reply = await s.a.exchange(nowhere, PushPull((), join=True), None, 10.0)
            assert isinstance(reply.body, PushPull) and reply.body.reply
            assert reply.sender == BOB
            [(src, env)] = asked
            assert src == s.a.address and env.sender == ALICE
            assert s.link_a.status()["exchanges"] == 1


async def test_a_registration_renewed_during_a_take_goes_on_taking_with_the_new_token(
    tmp_path: Path,
) -> None:
    """The bridge registers again (its conductor flag changed, a lapsed registration): the new
    registration has a new token, and the take still waiting with the old one is answered 404,
    usually just after the bridge handed the link the new token. The link takes on with the new
    token (it once waited for a change of token that had already happened, and bob heard nothing
    through the relay again: two sites behind NATs never merged)."""
    with trio.fail_after(30):
        async with two_sites(tmp_path) as s:
            await s.nursery.start(s.b.serve_datagrams, lambda src, env: None)
            await s.nursery.start(s.a.serve_datagrams, lambda src, env: None)
            probe = 0

            def ping() -> bool:
                nonlocal probe
                probe += 1
                s.a.send_nowait(s.b.address, Ping(probe, BOB), to=(BOB, 1))
                return s.link_b.received > 0

            await wait_for(ping, 15, "alice's pings reach bob through the relay", every=0.1)
            for _ in range(3):  # each time, bob's link is waiting in a take with the old token
                again = await s.client_b.register(
                    "sleo",
                    "colorado",
                    "bob",
                    host="127.0.0.1",
                    port=s.b.address[1],
                    node_id=BOB,
                    supernode=True,
                    takeover=True,
                )
                s.link_b.set_token(again.token)
                heard = s.link_b.received

                def heard_again(before: int = heard) -> bool:
                    ping()
                    return s.link_b.received > before

                await wait_for(heard_again, 10, "bob hears alice through the relay again")
