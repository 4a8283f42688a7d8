"""A hostile guest on the venue's network, for the security tests: ``python roles_guest.py
JSON``. It runs a node of its own with the mesh library's public API only (so the same script
attacks any version of stagemesh), joins through ``seed``, waits until it sees ``target``
alive (and, with ``"conduct": true``, until it holds the conductor post itself), then sends
each request of ``"requests"`` and prints one JSON line per answer:
``{"ok": true, "payload": ...}`` or ``{"ok": false, "error_type", "error"}``.

In a payload the string ``"<TERM>"`` is replaced by the conductor lease term the guest sees.
A request whose answer is an error listed in ``"retry_on"`` is sent again (for 20 s at most),
as a patient attacker would while the others' view of the conductor catches up.

JSON fields: federation, name, seed ("host:port"), target (path), key_file (or null: open
federation), conduct (bool), state_dir, retry_on ([error types]), requests ([{"path", "kind",
"payload"}]).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

import mesh
from mesh._keys import load_keyring


def _fill(value: Any, term: int | None) -> Any:
    if value == "<TERM>":
        return term
    if isinstance(value, dict):
        return {k: _fill(v, term) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, term) for v in value]
    return value


async def main(spec: dict[str, Any]) -> None:
    host, _, port = spec["seed"].rpartition(":")
    config = mesh.NodeConfig(
        federation=spec["federation"],
        orchestra="guest",
        name=spec["name"],
        bind="0.0.0.0",
        port=0,
        port_is_default=False,
        seeds=((host, int(port)),),
        keyring=load_keyring(Path(spec["key_file"])) if spec.get("key_file") else None,
        conductor=bool(spec.get("conduct")),
        mdns=False,
        broadcast=False,
        state_dir=Path(spec["state_dir"]),
        runtime_dir=Path(spec["state_dir"]) / "run",
    )
    async with mesh.open_node(config) as node:
        with trio.fail_after(60):
            while node.member(spec["target"]) is None or (
                spec.get("conduct") and node.conductor != node.path
            ):
                await trio.sleep(0.1)
        for request in spec["requests"]:
            with trio.move_on_after(20):
                while True:
                    lease = node.core.election.lease(mesh.CONDUCTOR)
                    term = lease.term if lease is not None else None
                    answer = await _send(node, request, term)
                    if answer.get("error_type") not in spec.get("retry_on", ()):
                        break
                    await trio.sleep(0.2)
            print(json.dumps(answer), flush=True)


async def _send(node: mesh.Node, request: dict[str, Any], term: int | None) -> dict[str, Any]:
    try:
        payload = await node.request(
            request["path"], request["kind"], _fill(request["payload"], term), timeout=30
        )
    except mesh.RemoteError as exc:
        return {"ok": False, "error_type": exc.error_type, "error": exc.message}
    except mesh.RequestError as exc:
        return {"ok": False, "error_type": type(exc).__name__}
    return {"ok": True, "payload": payload}


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
