"""Issue 13, item 4: the federation key is rotated while the nodes run, and a node that holds
only the retired key is refused.

The crew adds a key (``stagemesh keygen --add``: accepted at once, signing after the overlap)
and copies the file to every node; the nodes read it again by themselves, switch to the new key
when its time comes, and nobody is suspected on the way (each node switches at its own next
look at the file, so for a moment some sign with the new key and some with the old: both are
accepted). Then the old key is retired (``keygen --retire``) and the file copied again: the
members keep talking (they all sign with the new key), and a laptop that kept the old file
(it missed the rotation, or the old key leaked) is refused and counted as ``retired key``.
A broken copy of the file on the way is reported in the node's status and changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.security.edge_live import all_alive, holds

pytestmark = pytest.mark.slow

NAMES = ["n0", "n1", "n2"]
PATHS = {f"/o1/{n}" for n in NAMES}


def keygen(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEMESH_")}
    argv = [sys.executable, "-m", "mesh", "keygen", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr


def copy(master: Path, copies: list[Path]) -> None:
    """Put the master file on every node the way ``install``/``rsync`` do: a new file renamed
    over the old one (a node never reads half a file)."""
    for target in copies:
        temporary = target.with_suffix(".new")
        shutil.copy(master, temporary)
        os.replace(temporary, target)


async def keys(nodes: list[LiveNode]) -> list[dict[str, object]]:
    return [(await n.status())["keys"] for n in nodes]


async def deaths(nodes: list[LiveNode]) -> int:
    return sum([(await n.status())["statistics"]["membership"]["deaths_declared"] for n in nodes])


async def retired_refused(nodes: list[LiveNode]) -> int:
    """'retired key' refusals on the gossip port and the beacon port of every node."""
    total = 0
    for n in nodes:
        stats = (await n.status())["statistics"]
        total += stats["transport"]["rejected"].get("retired key", 0)
        beacons = stats["discovery"].get("beacons", {})
        total += beacons.get("rejected", {}).get("retired key", 0)
    return total


async def test_a_key_is_rotated_while_nodes_run_and_the_retired_key_is_refused(
    tmp_path: Path,
) -> None:
    master = tmp_path / "federation.key"
    keygen(str(master))
    stale = tmp_path / "laptop.key"  # a laptop that never gets the new file
    shutil.copy(master, stale)
    copies = [tmp_path / f"{name}.key" for name in NAMES]
    copy(master, copies)

    def args(index: int, name: str) -> list[str]:
        return ["--no-mdns", "--key-file", str(copies[index])]

    async with start_nodes(tmp_path, NAMES, args) as nodes:
        await wait_for(lambda: all_alive(nodes, PATHS), 30, "membership")
        deaths_before = await deaths(nodes)
        assert all(
            k == {"signing": 1, "accepted": [1], "retired": [], "file": str(c), "error": None}
            for k, c in zip(await keys(nodes), copies, strict=True)
        )

        # The new key: accepted at once everywhere, signing 4 s later.
        keygen("--add", "--overlap", "4", str(master))
        copy(master, copies)

        async def accepted() -> bool:
            return all(k["accepted"] == [1, 2] for k in await keys(nodes))

        await wait_for(accepted, 10, "the new key accepted on every node")

        async def signing_new() -> bool:
            return all(k["signing"] == 2 for k in await keys(nodes))

        await wait_for(signing_new, 20, "every node signing with the new key")
        await holds(lambda: all_alive(nodes, PATHS), 2, "membership across the switch")

        # The old key retired: the members go on (they all sign with the new one).
        keygen("--retire", "1", str(master))
        copy(master, copies)

        async def retired() -> bool:
            return all(k["retired"] == [1] and k["accepted"] == [2] for k in await keys(nodes))

        await wait_for(retired, 10, "the old key retired on every node")
        await holds(lambda: all_alive(nodes, PATHS), 3, "membership after the retirement")
        assert await deaths(nodes) == deaths_before
        # A broken copy (a typo, half a file) is reported and changes nothing.
        broken = tmp_path / "broken.key"
        broken.write_text("2 not-a-key\n")
        copy(broken, copies[:1])

        async def reported() -> bool:
            return "the key is not hexadecimal" in str((await keys(nodes[:1]))[0]["error"])

        await wait_for(reported, 10, "the broken key file reported")
        assert (await keys(nodes[:1]))[0]["accepted"] == [2]
        copy(master, copies[:1])

        async def repaired() -> bool:
            return (await keys(nodes[:1]))[0]["error"] is None

        await wait_for(repaired, 10, "the key file read again")
        old_secret = stale.read_text().split()[-1]
        assert old_secret not in master.read_text()  # the file keeps no retired secret

        # A laptop with only the old key: its beacons and its join are refused and counted,
        # it never becomes a member, and it hears nobody.
        refused_before = await retired_refused(nodes)
        laptop_args = ["--no-mdns", "--key-file", str(stale)]
        laptop_args += ["--seed", "{}:{}".format(*nodes[0].gossip)]
        async with start_nodes(
            tmp_path, ["laptop"], laptop_args, beacon_port=nodes[0].beacon_port
        ) as (laptop,):

            async def counted() -> bool:
                return await retired_refused(nodes) > refused_before

            await wait_for(counted, 15, "the retired key refused and counted")
            # the seed's gossip port refused its join
            doc = await nodes[0].status()
            assert doc["statistics"]["transport"]["rejected"].get("retired key", 0) > 0

            async def shut_out() -> bool:
                for node in nodes:
                    if "/o1/laptop" in await node.states():
                        return False
                return set(await laptop.states()) == {"/o1/laptop"}

            await holds(shut_out, 3, "the laptop shut out")
        assert await all_alive(nodes, PATHS)
        assert await deaths(nodes) == deaths_before
