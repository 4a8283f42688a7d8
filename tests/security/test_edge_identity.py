"""Issue 18, finding 5 (the persisted half): no identity file can stop a node from starting
or from being admitted.

Before, an absurd incarnation that a node had been pushed to was saved in its identity file and
loaded again at every start (any non-negative integer was believed): the restarted node sent an
incarnation its peers refused, and was never admitted again. Now the file is validated when it is
loaded; one that fails (out of range, not a number, not an id, not JSON) is set aside with a
warning and the node starts with a fresh identity. A node that refutes a flood of suspicions does
not write its file for each: the file holds a ceiling reserved ahead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh._wire import MAX_COUNTER
from tests.harness import wait_for
from tests.livenodes import start_nodes
from tests.security.edge_live import all_alive, keyed, me

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "stored",
    [
        {"node_id": "0" * 31 + "7", "incarnation": 2**63},
        {"node_id": "0" * 31 + "7", "incarnation": MAX_COUNTER - 3},
        {"node_id": "0" * 31 + "7", "incarnation": "12"},
        {"node_id": "../../etc", "incarnation": 3},
        "not json {",
    ],
    ids=["2**63", "max-counter", "text", "bad-id", "not-json"],
)
async def test_a_bad_identity_file_never_bricks_a_restart(tmp_path: Path, stored: object) -> None:
    args, _ = keyed(tmp_path)
    identity = tmp_path / "state" / "default" / "o1" / "n2" / "identity.json"
    identity.parent.mkdir(parents=True)
    identity.write_text(stored if isinstance(stored, str) else json.dumps(stored))
    async with start_nodes(tmp_path, ["n1", "n2"], args) as nodes:
        await wait_for(lambda: all_alive(nodes, {"/o1/n1", "/o1/n2"}), 20, what="admitted")
        node_id, incarnation = await me(nodes[1])
        assert node_id != "0" * 31 + "7" and 0 <= incarnation < 1000  # a fresh identity
        assert any("identity file" in line and "new node id" in line for line in nodes[1].output)
        assert (identity.parent / "identity.json.bad").exists()
        saved = json.loads(identity.read_text())
        assert saved["node_id"] == node_id and saved["incarnation"] >= incarnation
