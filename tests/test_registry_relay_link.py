"""The relay's trio driver between two real gossip ports and a real registry on loopback.

alice probes bob; bob stays silent on the direct path, so after the probe budget alice's
datagrams go through the registry and reach bob there (checked and delivered by bob's port as
if they came from alice's address); then bob's acks arrive directly and alice moves off the
relay at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from mesh._transport import Transport, open_transport
from mesh._wire import Ack, Envelope, Keyring, Ping, PushPull, WireCodec
from registry_bridge import RegistryClient, RegistryStore, create_app, serve_registry
from registry_bridge._relaylink import RelayLink
from registry_bridge._relaypath import PathConfig
from tests.livenodes import wait_for

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


async def test_gossip_goes_through_the_registry_until_direct_acks_come(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "r.db")
    stop = trio.Event()
    with trio.fail_after(30):
        async with (
            trio.open_nursery() as nursery,
            port(ALICE) as a,
            port(BOB) as b,
        ):
            url = await nursery.start(
                lambda task_status: serve_registry(
                    create_app(store),
                    "127.0.0.1:0",
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
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
                    "sleo",
                    "colorado",
                    "bob",
                    host="127.0.0.1",
                    port=b.address[1],
                    node_id=BOB,
                    supernode=True,
                )
                timing = PathConfig(probe_budget=0.5, retry_every=0.5)
                link_a = RelayLink(client_a, config=timing, wait=1.0)
                link_b = RelayLink(client_b, config=timing, wait=1.0)
                link_a.set_token(reg_a.token)
                link_b.set_token(reg_b.token)
                link_a.set_peers({b.address: "/colorado/bob"})
                link_b.set_peers({a.address: "/cmu/alice"})
                heard_by_b: list[Envelope] = []
                heard_by_a: list[Envelope] = []
                await nursery.start(b.serve_datagrams, lambda src, env: heard_by_b.append(env))
                await nursery.start(a.serve_datagrams, lambda src, env: heard_by_a.append(env))
                await nursery.start(link_a.run, a)
                await nursery.start(link_b.run, b)

                probe = 0

                async def ping() -> None:
                    nonlocal probe
                    probe += 1
                    a.send_nowait(b.address, Ping(probe, BOB), to=(BOB, 1))

                # bob never acks: alice moves to the relay, and her pings arrive through it
                async def relayed_to_bob() -> bool:
                    await ping()
                    return link_a.paths.relayed(b.address) and link_b.received > 0

                await wait_for(relayed_to_bob, 15, "alice relays to bob", every=0.1)
                assert link_a.status()["routes"] == {"/colorado/bob": "relay"}
                assert any(isinstance(e.body, Ping) and e.sender == ALICE for e in heard_by_b)

                # the direct path works again: bob's ack arrives on the socket
                async def back_to_direct() -> bool:
                    await ping()
                    b.send_nowait(a.address, Ack(probe, BOB), to=(ALICE, 1))
                    return not link_a.paths.relayed(b.address)

                await wait_for(back_to_direct, 10, "alice back on direct UDP", every=0.1)
                status = link_a.status()
                assert status["routes"] == {"/colorado/bob": "direct"}
                assert status["switches"] == 2
                assert 0 < status["relay_share"] < 1
                assert any(isinstance(e.body, Ack) for e in heard_by_a)
                stop.set()
                nursery.cancel_scope.cancel()
    store.close()


async def test_a_join_exchange_goes_through_the_relay_once_direct_tcp_failed(
    tmp_path: Path,
) -> None:
    """bob is registered at an address nothing listens on (as behind a NAT): alice's direct
    TCP exchange is refused, and her next one reaches bob through the registry, answered by
    bob's port and checked by hers."""
    store = RegistryStore(tmp_path / "r.db")
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, port(ALICE) as a, port(BOB) as b:
            url = await nursery.start(
                lambda task_status: serve_registry(
                    create_app(store),
                    "127.0.0.1:0",
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            with trio.socket.socket() as closed:  # a port nobody listens on
                await closed.bind(("127.0.0.1", 0))
                nowhere = ("127.0.0.1", closed.getsockname()[1])
            async with RegistryClient(url) as client_a, RegistryClient(url) as client_b:
                reg_a = await client_a.register(
                    "sleo", "cmu", "alice", host="127.0.0.1", port=a.address[1], supernode=True
                )
                reg_b = await client_b.register(
                    "sleo", "colorado", "bob", host="127.0.0.1", port=nowhere[1], supernode=True
                )
                link_a = RelayLink(client_a, wait=1.0)
                link_b = RelayLink(client_b, wait=1.0)
                link_a.set_token(reg_a.token)
                link_b.set_token(reg_b.token)
                link_a.set_peers({nowhere: "/colorado/bob"})
                link_b.set_peers({a.address: "/cmu/alice"})
                asked: list[tuple[tuple[str, int], Envelope]] = []

                async def on_stream(src: tuple[str, int], env: Envelope) -> PushPull | None:
                    asked.append((src, env))
                    return PushPull((), reply=True)

                await nursery.start(b.serve_streams, on_stream)
                await nursery.start(link_a.run, a)
                await nursery.start(link_b.run, b)

                with pytest.raises(OSError):
                    await a.exchange(nowhere, PushPull((), join=True), None, 2.0)
                assert link_a.paths.relayed(nowhere)
                reply = await a.exchange(nowhere, PushPull((), join=True), None, 10.0)
                assert isinstance(reply.body, PushPull) and reply.body.reply
                assert reply.sender == BOB
                [(src, env)] = asked
                assert src == a.address and env.sender == ALICE
                assert link_a.status()["exchanges"] == 1
                stop.set()
                nursery.cancel_scope.cancel()
    store.close()
