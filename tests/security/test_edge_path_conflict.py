"""Issue 18, finding 7: a record announcing a live node's path with another id never makes a
node exit.

Before: the node whose path was claimed by a record with an earlier start time stopped ("path
is already held"). Now both stay members (ids tell them apart), the rule that says which one
keeps the path (earliest start, then lowest id) is applied the same way everywhere, the conflict
is counted, and the node that does not keep the path says so in its log and its status.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from mesh._wire import Gossip, MemberRecord
from tests.harness import free_port, wait_for
from tests.livenodes import start_nodes
from tests.security.edge_live import all_alive, attack, keyed

pytestmark = pytest.mark.slow


async def test_a_record_claiming_a_live_nodes_path_never_stops_it(tmp_path: Path) -> None:
    args, keyring = keyed(tmp_path)
    async with start_nodes(tmp_path, ["n1", "n2", "n3"], args) as nodes:
        paths = {"/o1/n1", "/o1/n2", "/o1/n3"}
        await wait_for(lambda: all_alive(nodes, paths), 20, what="membership")
        victim = nodes[1]
        claimant = secrets.token_hex(16)
        # "Started" long before anyone: under the old rule the victim gave its path up by exiting.
        record = MemberRecord(claimant, "n2", "o1", ("127.0.0.1", free_port("udp")), 0, {"j": 1.0})
        await attack(nodes, keyring, Gossip((record,)))

        async def conflict_shown() -> bool:
            return (await victim.status())["node"]["path_conflict"] is not None

        await wait_for(conflict_shown, 5, what="the conflict in the victim's status")
        doc = await victim.status()
        conflict = doc["node"]["path_conflict"]
        assert conflict["holder"] == claimant and conflict["this_node_holds"] is False
        assert [c["id"] for c in conflict["claimed_by"]] == [claimant]
        assert doc["statistics"]["membership"]["path_conflicts"] >= 1
        assert any(f"also announced by node {claimant}" in line for line in victim.output)

        # The claim goes away when its node turns out to be dead; the victim never stopped.
        async def over() -> bool:
            # (by id: the claimant's tombstone has the same path)
            for node in nodes:
                states = {m["id"]: m["state"] for m in (await node.status())["members"]}
                if states.get(doc["node"]["id"]) != "alive" or states.get(claimant) == "alive":
                    return False
            return not await conflict_shown()

        await wait_for(over, 20, what="the claim over")
        assert all(node.process.returncode is None for node in nodes)
