"""Helpers shared by the wire-edge security tests that run real nodes on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from mesh._keys import load_keyring, write_key_file
from mesh._wire import Keyring, Message
from tests.livenodes import LiveNode
from tests.security.edge_tools import forge, send_datagrams

__all__ = ["all_alive", "attack", "holds", "keyed", "me"]


def keyed(tmp: Path) -> tuple[list[str], Keyring]:
    """Node flags for a keyed federation on loopback, and the key (the attacker has it too:
    what a member can do, anyone can in an open federation)."""
    key = tmp / "federation.key"
    write_key_file(key)
    return ["--no-mdns", "--key-file", str(key)], load_keyring(key)


async def me(node: LiveNode) -> tuple[str, int]:
    """The node's id and current incarnation, as it reports them."""
    doc = await node.status()
    own = doc["members"][0]
    assert own["id"] == doc["node"]["id"]
    return str(own["id"]), int(own["incarnation"])


async def attack(nodes: list[LiveNode], keyring: Keyring, body: Message) -> None:
    """Send *body* to each of *nodes* as a key holder would: signed, bound to the node."""
    for node in nodes:
        data = forge(body, federation="default", keyring=keyring, to=await me(node))
        send_datagrams(node.gossip, [data])


async def all_alive(nodes: list[LiveNode], paths: set[str]) -> bool:
    for node in nodes:
        states = await node.states()
        if any(states.get(p) != "alive" for p in paths):
            return False
    return True


async def holds(check: Callable[[], Awaitable[Any]], seconds: float, what: str) -> None:
    """Assert that *check* is true every time it is looked at, for *seconds*."""
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        result = await check()
        assert result, f"{what} stopped holding"
        await trio.sleep(0.1)
