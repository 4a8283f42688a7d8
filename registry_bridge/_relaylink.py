"""The trio driver of the relay: carries a supernode's datagrams to other sites' supernodes
through the registry while the direct path does not work.

:class:`RelayLink` sits on the node's gossip port (``Transport.detour`` and
``Transport.observer``) and only ever touches datagrams for the supernodes of *other*
orchestras that the registry listed (:meth:`RelayLink.set_peers`): members of an orchestra keep
talking to their own site on the LAN, and only the registered supernode (holder of the
registration token, :meth:`RelayLink.set_token`) relays. Which path each datagram takes is
decided by the sans-IO :class:`~registry_bridge._relaypath.RelayPaths` from the direct acks
the observer sees; this module only moves bytes:

- outgoing: a datagram the core routes through the relay is queued (a bounded channel; a
  full one drops, as UDP would) and sent in batches (``relay_queue``, at most 64 frames a
  call per destination);
- incoming: a long poll (``relay_take``, ``wait`` seconds) brings what other sites queued
  for this supernode; each frame is handed to the transport as a datagram from the sender's
  registered address (``Transport.inject_datagram``), which checks it like any datagram
  (signature, binding to this node, replay window).

The registry only ever sees signed datagrams; the federation key never leaves the node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import trio

from mesh._transport import Transport
from mesh._wire import Ack, Address, Envelope
from registry_bridge._client import RegistryClient, RegistryError, RegistryNotFound
from registry_bridge._relaypath import PathConfig, RelayPaths
from registry_bridge._relaystore import BATCH_LIMIT

__all__ = ["RelayLink"]

logger = logging.getLogger(__name__)

_OUTBOX = 512
"""Datagrams waiting to be relayed at most (more are dropped and counted)."""
_RETRY = 1.0
"""Seconds before a failed relay call is tried again."""


class RelayLink:
    """Relays this supernode's gossip to other sites' supernodes (see the module docstring).

    *wait* is the long poll's length (seconds); *config* the core's timing.
    """

    def __init__(
        self,
        client: RegistryClient,
        *,
        config: PathConfig | None = None,
        wait: float = 20.0,
    ) -> None:
        self.client = client
        self.paths = RelayPaths(config)
        self.wait = wait
        self._peers: dict[Address, str] = {}
        self._addresses: dict[str, Address] = {}
        self._token: str | None = None
        self._token_changed = trio.Event()
        self._send, self._outbox = trio.open_memory_channel[tuple[str, bytes]](_OUTBOX)
        self.dropped = 0
        """Datagrams not relayed: the outbox was full, or the registry refused them."""
        self.received = 0
        """Relayed datagrams handed to the node."""
        self.unknown_senders = 0
        """Relayed datagrams from a path that is not a known supernode (dropped)."""

    # -- what the bridge tells it -------------------------------------------------------------

    def set_token(self, token: str | None) -> None:
        """This node's registration token while it is a registered supernode, else ``None``
        (nothing is relayed then)."""
        if token != self._token:
            self._token = token
            self._token_changed.set()
            self._token_changed = trio.Event()

    def set_peers(self, peers: Mapping[Address, str]) -> None:
        """The supernodes of other orchestras: gossip address -> registered path."""
        for gone in set(self._peers) - set(peers):
            self.paths.forget(gone)
        self._peers = dict(peers)
        self._addresses = {path: address for address, path in peers.items()}

    # -- the transport's hooks ----------------------------------------------------------------

    def _detour(self, dest: Address, data: bytes) -> bool:
        path = self._peers.get(dest)
        if path is None or self._token is None:
            return False
        route = self.paths.route(trio.current_time(), dest)
        if route == "direct":
            return False
        try:
            self._send.send_nowait((path, data))
        except trio.WouldBlock:
            self.dropped += 1
        return route == "relay"

    def _observe(self, src: Address, env: Envelope) -> None:
        if src in self._peers and isinstance(env.body, Ack):
            self.paths.direct_ack(trio.current_time(), src)

    # -- running ------------------------------------------------------------------------------

    async def run(
        self, transport: Transport, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hook into *transport* and relay until cancelled (then unhook)."""
        transport.detour = self._detour
        transport.observer = self._observe
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._take_loop, transport)
                task_status.started()
        finally:
            transport.detour = None
            transport.observer = None

    async def _send_loop(self) -> None:
        async for path, data in self._outbox:
            batches: dict[str, list[bytes]] = {path: [data]}
            while True:  # whatever else is waiting goes in the same calls
                try:
                    more_path, more = self._outbox.receive_nowait()
                except trio.WouldBlock:
                    break
                batches.setdefault(more_path, []).append(more)
            for to, frames in batches.items():
                for start in range(0, len(frames), BATCH_LIMIT):
                    await self._queue(to, frames[start : start + BATCH_LIMIT])

    async def _queue(self, to: str, frames: list[bytes]) -> None:
        token = self._token
        if token is None:
            self.dropped += len(frames)
            return
        try:
            self.dropped += await self.client.relay_queue(token, to, frames)
        except RegistryError as exc:
            logger.debug("relay to %s failed: %s", to, exc)
            self.dropped += len(frames)

    async def _take_loop(self, transport: Transport) -> None:
        while True:
            token = self._token
            if token is None:
                await self._token_changed.wait()
                continue
            try:
                frames = await self.client.relay_take(token, self.wait)
            except RegistryNotFound:
                await self._token_changed.wait()  # the bridge registers again
                continue
            except RegistryError as exc:
                logger.debug("relay take failed: %s", exc)
                await trio.sleep(_RETRY)
                continue
            for item in frames:
                address = self._addresses.get(item.sender)
                if address is None:
                    self.unknown_senders += 1
                    continue
                self.received += 1
                transport.inject_datagram(address, item.frame)

    def status(self) -> dict[str, Any]:
        """For ``/api/status`` (the bridge's ``relay`` field): each peer's path, datagrams sent
        directly and relayed, the relay's share, relayed datagrams received and dropped."""
        stats = self.paths.statistics()
        return {
            "routes": stats.routes,
            "direct": stats.direct,
            "relayed": stats.relayed,
            "relay_share": round(stats.relay_share, 4),
            "switches": stats.switches,
            "received": self.received,
            "dropped": self.dropped,
            "unknown_senders": self.unknown_senders,
        }
