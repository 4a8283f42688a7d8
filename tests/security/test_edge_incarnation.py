"""Issue 18, finding 5: a gossiped suspicion with an absurd incarnation neither kills nor
bricks a node.

Before: a ``Suspect`` at incarnation 2**63-1 made the victim refute at 2**63, which every peer
then refused as malformed, so it was declared dead; the value was persisted, so every restart
stayed dead. Now every counter is bounded at decode (2**63-1 is refused and counted), a notice
at an incarnation nobody saw from the member is applied at the one seen (counted), and a node
refutes at its own incarnation + 1, never at a number someone sent it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh._wire import MAX_COUNTER, Gossip, MemberRecord, Suspect
from tests.harness import wait_for
from tests.livenodes import start_nodes
from tests.security.edge_live import all_alive, attack, holds, keyed, me
from tests.security.edge_tools import STRANGER

pytestmark = pytest.mark.slow
PATHS = {"/o1/n1", "/o1/n2", "/o1/n3"}


async def test_an_absurd_incarnation_neither_kills_nor_bricks_a_node(tmp_path: Path) -> None:
    args, keyring = keyed(tmp_path)
    async with start_nodes(tmp_path, ["n1", "n2", "n3"], args) as nodes:
        await wait_for(lambda: all_alive(nodes, PATHS), 20, what="membership")
        victim = nodes[2]
        victim_id, before = await me(victim)
        for value in (2**63 - 1, MAX_COUNTER, 2**62):
            await attack(nodes, keyring, Gossip((Suspect(victim_id, value, STRANGER),)))
        # A record of the victim at an absurd incarnation, sent to the victim itself.
        record = MemberRecord(victim_id, "n3", "o1", victim.gossip, MAX_COUNTER, {})
        await attack([victim], keyring, Gossip((record,)))

        async def victim_fine() -> bool:
            if not await all_alive(nodes, PATHS):
                return False
            views = [
                m["incarnation"]
                for node in nodes
                for m in (await node.status())["members"]
                if m["id"] == victim_id
            ]
            return all(before <= i <= before + 1000 for i in views)

        await holds(victim_fine, 6.0, "the victim alive everywhere at a small incarnation")

        async def counted() -> bool:
            stats = (await nodes[0].status())["statistics"]
            return (
                stats["transport"]["rejected"].get("malformed", 0) >= 1
                and stats["membership"]["refused"].get("incarnation ahead", 0) >= 1
            )

        await wait_for(counted, 5, what="the out-of-range and the unseen incarnation counted")
        refused = (await victim.status())["statistics"]["membership"]["refused"]
        assert refused.get("ahead of self", 0) >= 1
        _, after_attack = await me(victim)
        victim.terminate()
        await victim.process.wait()

        # A restart starts above every incarnation the node announced, and is admitted.
        async with start_nodes(tmp_path, ["n3"], args, beacon_port=victim.beacon_port) as (
            restarted,
        ):
            _, again = await me(restarted)
            assert after_attack < again <= after_attack + 1000
            everyone = [*nodes[:2], restarted]
            await wait_for(lambda: all_alive(everyone, PATHS), 20, what="the restart admitted")
