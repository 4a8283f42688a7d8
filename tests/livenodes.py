"""Start real ``stagemesh node`` processes on loopback and watch them through their status API.

Every node binds 127.0.0.1 (so discovery stays on loopback), a free gossip port, its own state
directory, and the beacon port the test picked (so tests running side by side never meet).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from mesh._node import NodeConfig
from tests.harness import free_port, wait_for  # wait_for: still importable from here

__all__ = ["LiveNode", "loopback_config", "start_nodes", "wait_for"]


def loopback_config(
    tmp: Path,
    path: str,
    *,
    federation: str,
    seeds: Sequence[tuple[str, int]] = (),
    **overrides: Any,
) -> NodeConfig:
    """The config of an in-process node at *path* (``/orchestra/name``) that stays on
    loopback: no mDNS, no broadcast (peers come from *seeds*), the loopback timing profile,
    state under *tmp*. *overrides* set any other :class:`NodeConfig` field."""
    _, orchestra, name = path.split("/")
    return NodeConfig(
        federation=federation,
        orchestra=orchestra,
        name=name,
        bind="127.0.0.1",
        port=0,
        port_is_default=False,
        mdns=False,
        broadcast=False,
        seeds=tuple(seeds),
        profile="loopback",
        state_dir=tmp / "state",
        runtime_dir=tmp / "run",
        **overrides,
    )


class LiveNode:
    """One ``stagemesh node`` process."""

    def __init__(self, name: str, process: trio.Process, tmp: Path, beacon_port: int) -> None:
        self.name = name
        self.beacon_port = beacon_port
        self.process = process
        self.tmp = tmp
        self.ready: dict[str, str] = {}
        self.client: httpx.AsyncClient | None = None
        self.output: list[str] = []

    @property
    def status_url(self) -> str:
        return self.ready["status"]

    @property
    def node_id(self) -> str:
        return self.ready["id"]

    @property
    def gossip(self) -> tuple[str, int]:
        host, _, port = self.ready["gossip"].rpartition(":")
        return host, int(port)

    async def status(self) -> dict[str, Any]:
        # One client per group: creating one costs tens of milliseconds (its TLS context),
        # which would dominate the timings the tests measure.
        assert self.client is not None, "use the node inside start_nodes"
        response = await self.client.get(self.status_url + "/api/status")
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    async def states(self) -> dict[str, str]:
        """path -> state, as this node sees its members."""
        doc = await self.status()
        return {m["path"]: m["state"] for m in doc["members"]}

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


async def _read_ready(node: LiveNode, stream: trio.abc.ReceiveStream) -> None:
    buf = b""
    while True:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise RuntimeError(f"{node.name} exited before it was ready: {node.output}")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            node.output.append(text)
            if text.startswith("ready "):
                node.ready = dict(part.split("=", 1) for part in text.split()[1:])
                return


async def _drain(stream: trio.abc.ReceiveStream, sink: list[str]) -> None:
    while chunk := await stream.receive_some(4096):
        sink.append(chunk.decode(errors="replace"))


@asynccontextmanager
async def start_nodes(
    tmp: Path,
    names: Sequence[str],
    args: Callable[[int, str], Sequence[str]] | Sequence[str] = (),
    *,
    orchestra: str = "o1",
    beacon_port: int | None = None,
    env: dict[str, str] | None = None,
    bind: str | None = "127.0.0.1",
) -> AsyncIterator[list[LiveNode]]:
    """Start one node per name (all at once), yield them when every one printed ``ready``,
    and kill whatever is left at the end. ``bind=None`` leaves ``--bind`` out (the test sets
    the address another way, ``STAGEMESH_NODE_BIND`` in *env*)."""
    beacon = beacon_port or free_port("udp", "0.0.0.0")
    nodes: list[LiveNode] = []
    async with httpx.AsyncClient(timeout=5.0) as client, trio.open_nursery() as nursery:
        try:
            for index, name in enumerate(names):
                nodes.append(await start_node(tmp, name, args, index, orchestra, beacon, env, bind))
                nodes[-1].client = client
            with trio.fail_after(30):
                async with trio.open_nursery() as ready:
                    for node in nodes:
                        ready.start_soon(_read_ready, node, node.process.stdout)
            for node in nodes:
                assert node.process.stdout is not None
                nursery.start_soon(_drain, node.process.stdout, node.output)
            yield nodes
        finally:
            for node in nodes:
                if node.process.returncode is None:
                    node.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                for node in nodes:
                    await node.process.wait()
            nursery.cancel_scope.cancel()


async def start_node(
    tmp: Path,
    name: str,
    args: Callable[[int, str], Sequence[str]] | Sequence[str],
    index: int,
    orchestra: str,
    beacon_port: int,
    env: dict[str, str] | None,
    bind: str | None = "127.0.0.1",
) -> LiveNode:
    """Spawn one node process (not waiting for it to be ready)."""
    extra = list(args(index, name) if callable(args) else args)
    command = [
        sys.executable,
        "-m",
        "mesh",
        "node",
        *(("--bind", bind) if bind is not None else ()),
        "--port",
        "0",
        "--orchestra",
        orchestra,
        "--name",
        name,
        "--broadcast-port",
        str(beacon_port),
        "--state-dir",
        str(tmp / "state"),
        *extra,
    ]
    full_env = {**os.environ, "STAGEMESH_RUNTIME_DIR": str(tmp / "run"), **(env or {})}
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env
    )
    return LiveNode(name, process, tmp, beacon_port)
