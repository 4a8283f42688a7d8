"""Issue 18, finding 8: a forged departure notice about a live node is refuted at once.

Before: ``Dead(..., left=True)`` about a running member, sent to the others, made them all drop
it; it never refuted a departure about itself, and came back only at the next full-state
exchange (up to 30 s on the LAN profile) or, where broadcast discovery runs, when its next beacon
made a peer join it again. Here the nodes know each other from seeds alone (a network that
blocks broadcast and multicast). Now every node that takes such a notice tells the member
directly (as it does a suspicion), and a running node refutes any death or departure notice
about itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh._wire import Dead, Gossip
from tests.harness import wait_for
from tests.livenodes import start_nodes
from tests.security.edge_live import all_alive, attack, keyed, me

pytestmark = pytest.mark.slow
PATHS = {"/o1/n1", "/o1/n2", "/o1/n3"}


async def test_a_forged_departure_is_refuted_at_once(tmp_path: Path) -> None:
    args, keyring = keyed(tmp_path)
    args = [*args, "--no-broadcast"]
    async with (
        start_nodes(tmp_path, ["n1"], args) as (first,),
        start_nodes(
            tmp_path, ["n2", "n3"], [*args, "--seed", "{}:{}".format(*first.gossip)]
        ) as later,
    ):
        nodes = [first, *later]
        await wait_for(lambda: all_alive(nodes, PATHS), 20, what="membership")
        victim, others = nodes[2], nodes[:2]

        async def settled() -> bool:
            # The orchestra's supernode elected and the victim's record as the others hold it:
            # a notice at an incarnation the victim has already left behind (a metadata change
            # on the way) would be stale to the others, and there would be nothing to refute.
            docs = [await node.status() for node in nodes]
            if len({json.dumps(d["supernodes"], sort_keys=True) for d in docs}) != 1:
                return False
            if not docs[0]["supernodes"]:
                return False
            _, own = await me(victim)
            held = [
                m["incarnation"] for d in docs[:2] for m in d["members"] if m["id"] == victim_id
            ]
            return held == [own, own]

        victim_id, _ = await me(victim)
        await wait_for(settled, 20, what="the election settled and the victim's record everywhere")
        victim_id, before = await me(victim)
        # Sent to everyone but the victim, as if from the victim itself.
        await attack(others, keyring, Gossip((Dead(victim_id, before, victim_id, left=True),)))

        async def back() -> bool:
            for node in others:
                view = [m for m in (await node.status())["members"] if m["id"] == victim_id]
                if not view or view[0]["state"] != "alive" or view[0]["incarnation"] <= before:
                    return False
            return True

        await wait_for(back, 3, what="the victim alive again at a new incarnation everywhere")
        refutations = (await victim.status())["statistics"]["membership"]["refutations"]
        assert refutations >= 1
        assert all(node.process.returncode is None for node in nodes)
