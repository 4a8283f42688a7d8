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
  (signature, binding to this node, replay window);
- TCP exchanges (a join's state sync) with a relayed peer, or with one whose direct TCP
  connection failed, go through the relay too (``Transport.exchange_detour``): the request
  message and its reply each travel as one frame, matched by an id, and are checked by the
  transports like a TCP frame's message.

What the registry carries is one byte of kind (datagram, exchange request, exchange reply),
for exchanges an 8-byte id, then the signed message.

The registry only ever sees signed datagrams; the federation key never leaves the node.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
from collections.abc import Hashable, Mapping
from typing import Any

import trio

from mesh._transport import Transport
from mesh._wire import Ack, Address, Envelope
from registry_bridge._client import RegistryClient, RegistryError, RegistryNotFound
from registry_bridge._relaypath import PathConfig, RelayPaths
from registry_bridge._relaystore import BATCH_LIMIT, FRAME_MAX

__all__ = ["RelayLink"]

logger = logging.getLogger(__name__)

_OUTBOX = 512
"""Datagrams waiting to be relayed at most (more are dropped and counted)."""
_RETRY = 1.0
"""Seconds before a failed relay call is tried again."""
_BATCH_BYTES = 46 * 1024
"""Frame bytes in one relay call at most: their base64 stays within the registry's 64 KiB
body limit."""
_DATAGRAM, _REQUEST, _REPLY = 0, 1, 2
_ID = struct.Struct("!Q")


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
        self.exchanges = 0
        """TCP exchanges this node made through the relay."""
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[bytes]] = {}
        self._nursery: trio.Nursery | None = None

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
        self._put(path, bytes((_DATAGRAM,)) + data)
        return route == "relay"

    def _put(self, path: str, frame: bytes) -> None:
        try:
            self._send.send_nowait((path, frame))
        except trio.WouldBlock:
            self.dropped += 1

    async def _exchange(self, dest: Address, message: bytes, allowed: float) -> bytes | None:
        path = self._peers.get(dest)
        if path is None or self._token is None or not self.paths.relayed(dest):
            return None
        if len(message) + 1 + _ID.size > FRAME_MAX:
            raise OSError(f"a {len(message)}-byte exchange is too large for the relay")
        ident = next(self._ids)
        send, receive = trio.open_memory_channel[bytes](1)
        self._waiting[ident] = send
        self.exchanges += 1
        try:
            self._put(path, bytes((_REQUEST,)) + _ID.pack(ident) + message)
            with trio.fail_after(allowed):
                return await receive.receive()
        finally:
            del self._waiting[ident]

    def _exchange_failed(self, dest: Address) -> None:
        if dest in self._peers:
            self.paths.direct_failed(trio.current_time(), dest)

    def _observe(self, src: Address, env: Envelope) -> None:
        if src in self._peers:
            if isinstance(env.body, Ack):
                self.paths.direct_ack(trio.current_time(), src)
            else:
                self.paths.direct_heard(trio.current_time(), src)

    # -- running ------------------------------------------------------------------------------

    async def run(
        self, transport: Transport, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hook into *transport* and relay until cancelled (then unhook)."""
        transport.detour = self._detour
        transport.observer = self._observe
        transport.exchange_detour = self._exchange
        transport.exchange_failed = self._exchange_failed
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._take_loop, transport)
                task_status.started()
        finally:
            self._nursery = None
            transport.detour = None
            transport.observer = None
            transport.exchange_detour = None
            transport.exchange_failed = None

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
                batch: list[bytes] = []
                size = 0
                for frame in frames:
                    if batch and (len(batch) == BATCH_LIMIT or size + len(frame) > _BATCH_BYTES):
                        await self._queue(to, batch)
                        batch, size = [], 0
                    batch.append(frame)
                    size += len(frame)
                await self._queue(to, batch)

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
            # The event of this token: a re-registration during the take (a new token, and the
            # old one's take answered 404) has set it already, so the loop never waits for it.
            token, changed = self._token, self._token_changed
            if token is None:
                await changed.wait()
                continue
            try:
                frames = await self.client.relay_take(token, self.wait)
            except RegistryNotFound:
                await changed.wait()  # the bridge registers again
                continue
            except RegistryError as exc:
                logger.debug("relay take failed: %s", exc)
                await trio.sleep(_RETRY)
                continue
            for item in frames:
                address = self._addresses.get(item.sender)
                if address is None or not item.frame:
                    self.unknown_senders += 1
                    continue
                self._deliver(transport, item.sender, address, item.frame)

    def _deliver(self, transport: Transport, sender: str, address: Address, frame: bytes) -> None:
        kind, body = frame[0], frame[1:]
        if kind == _DATAGRAM:
            self.received += 1
            transport.inject_datagram(address, body)
        elif kind in (_REQUEST, _REPLY) and len(body) > _ID.size:
            (ident,) = _ID.unpack(body[: _ID.size])
            message = body[_ID.size :]
            if kind == _REPLY:
                waiting = self._waiting.get(ident)
                if waiting is not None:
                    with contextlib.suppress(trio.WouldBlock):  # a duplicate reply
                        waiting.send_nowait(message)
            elif self._nursery is not None:
                self._nursery.start_soon(self._answer, transport, sender, address, ident, message)
        else:
            transport.reject("relay frame")

    async def _answer(
        self, transport: Transport, sender: str, address: Address, ident: int, message: bytes
    ) -> None:
        reply = await transport.answer_relayed(address, message)
        if reply is not None and len(reply) + 1 + _ID.size <= FRAME_MAX:
            self._put(sender, bytes((_REPLY,)) + _ID.pack(ident) + reply)

    def status(self) -> dict[str, Any]:
        """For ``/api/status`` (the bridge's ``relay`` field): ``routes`` (each other site's
        supernode by path: ``direct`` or ``relay``), datagrams sent directly and relayed, the
        relay's share, relayed datagrams received and dropped, exchanges made through it."""
        stats = self.paths.statistics()
        names: dict[Hashable, str] = dict(self._peers.items())
        return {
            "routes": {names.get(peer, str(peer)): route for peer, route in stats.routes.items()},
            "direct": stats.direct,
            "relayed": stats.relayed,
            "relay_share": round(stats.relay_share, 4),
            "switches": stats.switches,
            "received": self.received,
            "exchanges": self.exchanges,
            "dropped": self.dropped,
            "unknown_senders": self.unknown_senders,
        }
