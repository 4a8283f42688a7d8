"""In a keyed federation the federation's time at the registry is signed by the federation key.

Registering needs no secret, so anyone who can reach the registry may register in a federation
and hand it an older epoch (``POST .../epoch``); the registry cannot tell (it holds no key) and
takes it. The nodes can: a keyed node signs the epoch it hands over (an HMAC tag by the
federation key over federation, epoch, lineage and key id) and takes an epoch from the registry
only with a tag that a key of its own verifies. So a stranger's older epoch (without a tag, with
a tag by another key, or with a member's tag copied onto another epoch) makes no node step:
each is refused, counted once (``clock.external.refused``) and logged, and every node keeps its
time; a member's handover still crosses the registry, to a node holding the key it was signed
with (a key being rotated in keeps the old one).

The registry keeps one handover per client address (it cannot tell which is a member's), so a
stranger's older epoch, from its own address, sits beside the member's and no longer stops the
sites from sharing the federation's time through the registry; and the tag covers the
registry's generation of the federation, replaced at every reset, so a member's handover read
from the registry's public answers and handed back after an organiser's reset verifies at no
node: the reset stands. The strangers here talk from other loopback addresses (127.0.0.2,
127.0.0.3), as someone on another network would.

Each test runs a real ``stagemesh registry`` process (on SQLite and on PostgreSQL) and real
nodes with the registry bridge on loopback, and talks to the registry over HTTP as the
stranger.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from mesh import Node, NodeConfig, open_node
from mesh._lineage import EpochSeal
from mesh._wire import Keyring
from tests.livenodes import wait_for
from tests.registries import Databases, running_registry
from tests.security.test_registry_epoch import register
from tests.test_clock_registry_live import FEDERATION, Watch, agreed, config as unkeyed_config

ELAPSED = f"/api/v1/federations/{FEDERATION}/elapsed"
EPOCH = f"/api/v1/federations/{FEDERATION}/epoch"
KEY = Keyring.single(b"the federation's key, 32 bytes.")
PASSWORD = "organiser-secret"


def config(
    tmp: Path, name: str, url: str, keyring: Keyring, seeds: tuple[tuple[str, int], ...] = ()
) -> NodeConfig:
    """The live clock tests' node (skewed, drifting, with the registry bridge), keyed."""
    return attrs.evolve(unkeyed_config(tmp, name, url, seeds), keyring=keyring)


@contextlib.asynccontextmanager
async def site(tmp: Path, url: str) -> AsyncIterator[list[Node]]:
    """One orchestra: two keyed nodes, n0 and n1 (seeded with n0)."""
    async with contextlib.AsyncExitStack() as stack:
        n0 = await stack.enter_async_context(open_node(config(tmp, "n0", url, KEY)))
        n1 = await stack.enter_async_context(open_node(config(tmp, "n1", url, KEY, (n0.address,))))
        yield [n0, n1]


async def registry_time(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get(ELAPSED)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def handed_over(http: httpx.AsyncClient, node: Node) -> bool:
    """The registry's time is the node's lineage, with a tag by the federation key."""
    time = await registry_time(http)
    return time["lineage"] == node.status()["clock"]["lineage"] and time["tag"] is not None


def stranger(url: str, address: str) -> httpx.AsyncClient:
    """An HTTP client of the registry talking from another loopback *address*."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=url, timeout=10, transport=transport)


def refused(node: Node) -> int:
    external = node.status()["clock"]["external"]
    assert external is not None
    count: int = external["refused"]
    return count


async def test_a_stranger_cannot_jump_a_keyed_federations_time(
    databases: Databases, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        async with (
            running_registry(databases.new()) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            site(tmp_path, url) as nodes,
        ):
            await wait_for(lambda: agreed(nodes), 15, "the orchestra synced")
            # the member's handover works: the registry has the site's time, signed
            await wait_for(lambda: handed_over(http, nodes[0]), 15, "the registry has our time")
            ours = await registry_time(http)
            assert isinstance(ours["epoch"], float) and isinstance(ours["tag"], str)
            lineage = nodes[0].status()["clock"]["lineage"]
            assert [refused(n) for n in nodes] == [0, 0]  # (the registry's own epoch: silent)
            watch = Watch(nodes)
            steps = watch.steps  # (n1 stepped once to n0's time when it joined)

            # someone else registers in the federation (no secret needed) ...
            answer = await http.post(
                f"/api/v1/federations/{FEDERATION}/registrations",
                json={"orchestra": "mallory", "name": "m", "create": True},
            )
            assert answer.status_code == 201, answer.text
            token = answer.json()["token"]
            other_key = EpochSeal(FEDERATION, Keyring.single(secrets.token_bytes(32)))
            forgeries = [
                # an hour older, unsigned
                {"epoch": ours["epoch"] - 3600.0, "lineage": "mallory"},
                # two hours older, in the site's own lineage, signed with another key
                {
                    "epoch": ours["epoch"] - 7200.0,
                    "lineage": lineage,
                    "tag": other_key.tag(ours["generation"], ours["epoch"] - 7200.0, lineage),
                },
                # three hours older, in the site's lineage, with the member's own tag copied
                {"epoch": ours["epoch"] - 10800.0, "lineage": lineage, "tag": ours["tag"]},
            ]
            for number, forged in enumerate(forgeries, 1):
                # ... and hands the registry an older epoch, which it takes (it has no key)
                taken = await http.post(EPOCH, json={**forged, "token": token})
                assert taken.status_code == 200 and taken.json()["accepted"], taken.text
                # the site's reference sees it, and refuses it
                await wait_for(
                    lambda n=number: refused(nodes[0]) >= n,
                    10,
                    f"forgery {number} refused",
                )
                await watch.run(1.0)

            # no node stepped: every node kept its time (never back, at 1 +- 0.5%, no step),
            # in its lineage, seconds old (not hours), and the site still agrees
            watch.check()
            assert [n.status()["clock"]["steps"] for n in nodes] == steps
            for node in nodes:
                clock = node.status()["clock"]
                assert clock["lineage"] == lineage, clock
                assert node.now() < 600.0
            assert agreed(nodes)
            assert refused(nodes[0]) == len(forgeries)  # each counted once


async def test_a_members_handover_still_crosses_the_registry_with_a_rotated_key(
    databases: Databases, tmp_path: Path
) -> None:
    """Site a hands the registry its time and stops; node b0 starts alone later (a younger
    lineage), holding the federation key beside a new one it signs with (a key rotation in
    progress): it verifies the tag with the old key and steps once, forward, to site a's
    time, then signs that same epoch again with the new key."""
    rotated = Keyring({1: KEY.keys[1], 2: b"the next federation key, rotated"}, primary=2)
    with trio.fail_after(90):
        async with (
            running_registry(databases.new()) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            async with site(tmp_path / "a", url) as nodes:
                await wait_for(lambda: agreed(nodes), 15, "the orchestra synced")
                await wait_for(lambda: handed_over(http, nodes[0]), 15, "the registry has a's time")
                lineage = nodes[0].status()["clock"]["lineage"]
            async with open_node(config(tmp_path / "b", "n2", url, rotated)) as b0:

                async def stepped() -> bool:
                    return b0.status()["clock"]["lineage"] == lineage

                await wait_for(stepped, 15, "b0 took a's time from the registry")
                clock = b0.status()["clock"]
                assert clock["steps"] == 1 and clock["last_step"]["new_lineage"] == lineage
                assert clock["external"]["refused"] == 0
                time = await registry_time(http)
                assert time["lineage"] == lineage  # b0 took it, it did not replace it

                # b0 signs the federation's time again with the key it signs with (key 2), the
                # same epoch: the old key can then be retired
                async def signed_again() -> bool:
                    now = await registry_time(http)
                    return str(now["tag"]).startswith("2.") and now["epoch"] == time["epoch"]

                await wait_for(signed_again, 10, "the registry's epoch signed with key 2")
                before = b0.now()
                theirs = await registry_time(http)
                after = b0.now()
                assert before - 0.05 <= float(str(theirs["elapsed"])) <= after + 0.05


async def test_a_strangers_older_epoch_does_not_stop_keyed_sites_sharing_time(
    databases: Databases, tmp_path: Path
) -> None:
    """Site a hands the registry its time; two strangers, each from its own address, hand the
    registry older epochs (one unsigned, one in a's lineage signed with another key): the
    registry keeps them beside a's (its epoch, and 2012 clients' ``Elapsed:``, is now the
    oldest), site a keeps its time, and node b0, started alone after site a stopped, still
    takes a's time from the registry (the oldest handover its key verifies), refusing both."""
    other_key = EpochSeal(FEDERATION, Keyring.single(secrets.token_bytes(32)))
    with trio.fail_after(90):
        async with (
            running_registry(databases.new()) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            stranger(url, "127.0.0.2") as mallory,
            stranger(url, "127.0.0.3") as trudy,
        ):
            async with site(tmp_path / "a", url) as nodes:
                await wait_for(lambda: agreed(nodes), 15, "the orchestra synced")
                await wait_for(lambda: handed_over(http, nodes[0]), 15, "the registry has a's time")
                ours = await registry_time(http)
                assert isinstance(ours["epoch"], float) and isinstance(ours["generation"], str)
                lineage = nodes[0].status()["clock"]["lineage"]
                steps = [n.status()["clock"]["steps"] for n in nodes]
                forgeries = [
                    (mallory, {"epoch": ours["epoch"] - 3600.0, "lineage": "mallory"}),
                    (
                        trudy,
                        {
                            "epoch": ours["epoch"] - 7200.0,
                            "lineage": lineage,
                            "tag": other_key.tag(
                                ours["generation"], ours["epoch"] - 7200.0, lineage
                            ),
                            "generation": ours["generation"],
                        },
                    ),
                ]
                for number, (client, forged) in enumerate(forgeries):
                    token = await register(client, FEDERATION, f"m{number}")
                    taken = await client.post(EPOCH, json={**forged, "token": token})
                    assert taken.status_code == 200 and taken.json()["accepted"], taken.text
                await wait_for(lambda: refused(nodes[0]) >= 2, 10, "site a refused both")
                time = await registry_time(http)
                # the registry's epoch is the oldest (it cannot tell), a's handover is kept
                assert time["epoch"] == ours["epoch"] - 7200.0
                assert float(str(time["elapsed"])) > 7200.0
                kept = [(h["lineage"], h["tag"]) for h in time["handovers"]]
                assert (lineage, ours["tag"]) in kept and len(kept) == 4, kept
                # site a kept its time: no step, its lineage
                assert [n.status()["clock"]["steps"] for n in nodes] == steps
                assert all(n.status()["clock"]["lineage"] == lineage for n in nodes)
            # site a stopped; b0 starts alone (a younger lineage) with the federation key
            async with open_node(config(tmp_path / "b", "n2", url, KEY)) as b0:

                async def stepped() -> bool:
                    return b0.status()["clock"]["lineage"] == lineage

                await wait_for(stepped, 15, "b0 took a's time from the registry")
                clock = b0.status()["clock"]
                assert clock["steps"] == 1 and clock["last_step"]["new_lineage"] == lineage
                assert clock["external"]["refused"] == 2  # the strangers', each counted once
                # b0 is hours behind the strangers' epochs, seconds from a's: a's time
                assert b0.now() < 600.0


async def test_a_handover_replayed_after_a_reset_is_refused_and_the_reset_stands(
    databases: Databases, tmp_path: Path
) -> None:
    """Site a hands the registry its time (signed); someone reads that handover from the
    registry's public answers. The organiser resets the federation (the next event) and node
    b0 starts: a new time. The stranger hands a's earlier handover back (epoch, lineage and
    tag as read, with the registry's new generation): the registry keeps it (it cannot tell),
    but its tag was made for the generation before the reset, so b0 refuses it and keeps its
    time; node c0, started after b0, takes b0's time from the registry, not a's."""
    env = {"STAGEMESH_ADMIN_PASSWORD": PASSWORD}
    with trio.fail_after(100):
        async with (
            running_registry(databases.new(), env=env) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            stranger(url, "127.0.0.2") as mallory,
        ):
            async with site(tmp_path / "a", url) as nodes:
                await wait_for(lambda: agreed(nodes), 15, "the orchestra synced")
                await wait_for(lambda: handed_over(http, nodes[0]), 15, "the registry has a's time")
                captured = await registry_time(http)  # public: anyone may read it
                a_lineage = nodes[0].status()["clock"]["lineage"]
            answer = await http.post(
                f"/api/v1/federations/{FEDERATION}/reset", json={}, auth=("admin", PASSWORD)
            )
            assert answer.status_code == 200, answer.text
            assert (await registry_time(http))["generation"] != captured["generation"]
            async with open_node(config(tmp_path / "b", "n1", url, KEY)) as b0:
                await wait_for(lambda: handed_over(http, b0), 15, "the registry has b0's time")
                b_lineage = b0.status()["clock"]["lineage"]
                assert b_lineage != a_lineage and b0.status()["clock"]["steps"] == 0
                now = await registry_time(http)
                token = await register(mallory, FEDERATION, "m")
                replay = {
                    "token": token,
                    "epoch": captured["epoch"],
                    "lineage": captured["lineage"],
                    "tag": captured["tag"],
                    "generation": now["generation"],
                }
                taken = await mallory.post(EPOCH, json=replay)
                assert taken.status_code == 200 and taken.json()["accepted"], taken.text
                assert (await registry_time(http))["lineage"] == a_lineage  # the oldest
                await wait_for(lambda: refused(b0) >= 1, 10, "b0 refused the replay")
                watch = Watch([b0])
                await watch.run(1.0)
                watch.check()
                clock = b0.status()["clock"]
                assert clock["lineage"] == b_lineage and clock["steps"] == 0, clock
                assert refused(b0) == 1
                assert b0.now() < 600.0
                b_time = b0.now()
            # b0 stopped; c0 starts alone later: it takes b0's time, the reset stands
            async with open_node(config(tmp_path / "c", "n2", url, KEY)) as c0:

                async def stepped() -> bool:
                    return c0.status()["clock"]["lineage"] == b_lineage

                await wait_for(stepped, 15, "c0 took b0's time from the registry")
                clock = c0.status()["clock"]
                assert clock["steps"] == 1 and clock["external"]["refused"] == 1
                assert b_time <= c0.now() < b_time + 60.0
