"""The gossip port: one UDP socket and one TCP listener on the same port, and the edge where
bytes become typed envelopes.

Every datagram and frame is decoded, verified and replay-checked here (by the sans-IO
:class:`~mesh._inbound.Inbound`); whatever fails is counted by reason in
:meth:`Transport.statistics` and dropped, never raised into the node. Every message sent is
bound to its receiver when the node knows who that is (``to``: node id and incarnation).

Datagrams are read in batches straight from the socket (one scheduler round per batch, not
per datagram), and each source address has a budget of datagrams checked per second
(:class:`~mesh._inbound.SourceBudget`): beyond it, a datagram is dropped unread and counted
(``source limit``), so a flood from one host costs a ``recvfrom`` per datagram.

TCP is where a stranger could tie a node up, so the listener is guarded:

- at most :data:`MAX_STREAMS` connections at once, and :data:`MAX_STREAMS_PER_SOURCE` from any
  one IP address; a connection over either limit is closed at once (counted), so one host
  holding a thousand idle connections takes a handful of slots, not all of them;
- a connection must deliver its frame's prefix within the handshake timeout (a second, or the
  stream timeout if shorter) and the whole exchange within the stream timeout;
- a frame's prefix is checked (its tag, when keyed, and its length against
  :data:`~mesh._wire.MAX_FRAME`, 1 MiB) before a byte of the message is read, so forged or
  oversized frames cost nothing: memory held for frames is bounded by the connection limits
  times 1 MiB, and only key holders can make a node buffer at all.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from mesh._inbound import Binding, Inbound, SourceBudget
from mesh._ports import gossip_port_candidates
from mesh._wire import (
    MAX_DATAGRAM,
    MAX_FRAME,
    Address,
    Envelope,
    InvalidMessage,
    Message,
    WireCodec,
)

__all__ = [
    "MAX_STREAMS",
    "MAX_STREAMS_PER_SOURCE",
    "DatagramHandler",
    "ExchangeDetour",
    "StreamHandler",
    "Transport",
    "TransportStatistics",
    "open_transport",
]

logger = logging.getLogger(__name__)

DatagramHandler = Callable[[Address, Envelope], None]
StreamHandler = Callable[[Address, Envelope], Awaitable[Message | None]]
ExchangeDetour = Callable[[Address, bytes, float], Awaitable[bytes | None]]

_SEND_QUEUE = 4096
MAX_STREAMS = 256
"""TCP connections served at once."""
MAX_STREAMS_PER_SOURCE = 8
"""TCP connections served at once from one IP address."""
_HANDSHAKE_TIMEOUT = 1.0
_BATCH = 128
"""Datagrams read (and handled) per wake-up of the receiving task."""
_RECEIVE_BUFFER = 1 << 20
"""Bytes of the UDP socket's receive buffer asked of the kernel (it grants at most
``net.core.rmem_max``): room for a few milliseconds of flood while the node is not scheduled,
so its peers' datagrams are not dropped behind the junk."""


@attrs.frozen
class TransportStatistics:
    """What crossed the gossip port, and what was refused and why."""

    datagrams_received: int
    datagrams_sent: int
    bytes_received: int
    bytes_sent: int
    send_errors: int
    send_dropped: int
    streams_accepted: int
    streams_opened: int
    stream_errors: int
    rejected: dict[str, int]
    """Refused input by reason (``bad tag``, ``replayed``, ``malformed``, ``federation``...)."""
    receive_drops: int | None = None
    """Datagrams the kernel dropped because the socket's receive queue was full (a flood, or
    a node that was not scheduled), before the node could read them; ``None`` where the system
    does not say (read from ``/proc/net/udp`` on Linux)."""


class Transport:
    """The node's gossip port. Create with :func:`open_transport`."""

    def __init__(
        self,
        udp: socket.socket,
        listener: trio.SocketListener,
        advertised: Address,
        federation: str,
        node_id: str,
        codec: WireCodec,
        stream_timeout: float,
        incarnation: int = 0,
    ) -> None:
        self._raw = udp  # non-blocking; every datagram is sent by _try_send and read here
        self.budget = SourceBudget()
        self._listener = listener
        self.address = advertised
        self.federation = federation
        self.node_id = node_id
        self.codec = codec
        self.stream_timeout = stream_timeout
        self.handshake_timeout = min(_HANDSHAKE_TIMEOUT, stream_timeout)
        self.inbound = Inbound(codec, federation, node_id, incarnation)
        self._seq = 0
        self._send, self._outbox = trio.open_memory_channel[tuple[Address, bytes]](_SEND_QUEUE)
        self._streams_open = 0
        self._streams_from: Counter[str] = Counter()
        self._drained = trio.Event()
        self._pending = 0
        self._counts: Counter[str] = Counter()
        self._handler: DatagramHandler | None = None
        self.detour: Callable[[Address, bytes], bool] | None = None
        """A path for datagrams besides the socket (the registry's relay, set by its bridge):
        called with each encoded datagram and its destination before it is sent; ``True``
        means it carried the datagram itself and the socket is skipped."""
        self.observer: DatagramHandler | None = None
        """Called with every valid envelope that arrived on the UDP socket (not injected), so
        a detour can tell which peers answer directly."""
        self.exchange_detour: ExchangeDetour | None = None
        """The same for TCP exchanges: called with the destination, the encoded request
        message and the time allowed; returns the reply message it carried, or ``None`` for
        the direct TCP connection."""
        self.exchange_failed: Callable[[Address], None] | None = None
        """Called with the destination of a direct TCP exchange that could not be made
        (refused, unreachable, timed out)."""
        self._stream_handler: StreamHandler | None = None

    @property
    def incarnation(self) -> int:
        """This node's current incarnation: sent in every envelope, and the upper bound of
        the bindings it accepts. The driver sets it (after persisting it) before anything is
        sent at a new incarnation."""
        return self.inbound.incarnation

    @incarnation.setter
    def incarnation(self, value: int) -> None:
        self.inbound.incarnation = value

    def heard_incarnation(self, node_id: str) -> int:
        """The highest incarnation *node_id* has sent us messages with (-1 if none): what a
        binding to it may use when the membership view lags behind."""
        return self.inbound.guard.incarnation_of(node_id)

    # -- statistics ---------------------------------------------------------------------------

    def statistics(self) -> TransportStatistics:
        """A frozen snapshot of the counters."""
        c = self._counts
        return TransportStatistics(
            datagrams_received=c["datagrams_received"],
            datagrams_sent=c["datagrams_sent"],
            bytes_received=c["bytes_received"],
            bytes_sent=c["bytes_sent"],
            send_errors=c["send_errors"],
            send_dropped=c["send_dropped"],
            streams_accepted=c["streams_accepted"],
            streams_opened=c["streams_opened"],
            stream_errors=c["stream_errors"],
            rejected=dict(self.inbound.rejected),
            receive_drops=_receive_drops(self._raw),
        )

    def reject(self, reason: str) -> None:
        """Count one refused input under *reason*."""
        self.inbound.reject(reason)

    # -- sending ------------------------------------------------------------------------------

    def envelope(self, body: Message, to: Binding = None) -> Envelope:
        """Wrap *body* with this node's identity, the next sequence number and its binding."""
        self._seq += 1
        return Envelope(
            self.federation,
            self.node_id,
            self.incarnation,
            self._seq,
            time.time(),
            body,
            None if to is None else to[0],
            0 if to is None else to[1],
        )

    def send_nowait(self, dest: Address, body: Message, to: Binding = None) -> None:
        """Send one datagram now, or queue it if the socket would block (or others wait
        before it); if the queue is full (the network is stuck) it is dropped and counted, as
        UDP would.

        Sending at once matters for the clock: an NTP-style exchange assumes the time stamped
        in a request or reply is the time it leaves, and a queue adds a scheduling delay that
        differs between the two directions.
        """
        try:
            data = self.codec.encode(self.envelope(body, to))
        except InvalidMessage as exc:
            logger.error("not sending %s to %s: %s", type(body).__name__, dest, exc)
            self._counts["send_errors"] += 1
            return
        if self.detour is not None and self.detour(dest, data):
            return
        if not self._pending and self._try_send(dest, data):
            return
        try:
            self._send.send_nowait((dest, data))
            self._pending += 1
        except trio.WouldBlock:
            self._counts["send_dropped"] += 1

    def _try_send(self, dest: Address, data: bytes) -> bool:
        """Hand one datagram to the kernel and count it; ``False`` (nothing sent) if the
        socket buffer is full."""
        if ":" in dest[0]:  # an IPv6 member; this socket is IPv4 (and never resolves names)
            self._counts["send_errors"] += 1
            return True
        try:
            self._raw.sendto(data, dest)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._counts["send_errors"] += 1
            logger.debug("sendto %s failed: %s", dest, exc)
            return True
        self._counts["datagrams_sent"] += 1
        self._counts["bytes_sent"] += len(data)
        return True

    async def _serve_sender(self) -> None:
        async for dest, data in self._outbox:
            while not self._try_send(dest, data):
                await trio.lowlevel.wait_writable(self._raw)
            # Counted here, not by the channel's buffer: a datagram handed straight to this
            # waiting task is in no buffer, yet not sent.
            self._pending -= 1
            if not self._pending:
                self._drained.set()

    async def flush(self) -> None:
        """Wait until the datagrams queued so far have been handed to the kernel (bound it
        with a cancel scope)."""
        if self._pending:
            self._drained = trio.Event()
            await self._drained.wait()

    async def exchange(
        self,
        dest: Address,
        body: Message,
        to: Binding = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Envelope:
        """Send *body* in a TCP frame to *dest* (bound to *to*) and return the checked reply.

        Raises :class:`OSError` (also when the peer resets the connection),
        :class:`trio.TooSlowError` or :class:`InvalidMessage` (also counted).
        """
        self._counts["streams_opened"] += 1
        allowed = timeout or self.stream_timeout
        try:
            if self.exchange_detour is not None:
                request = self.codec.encode(self.envelope(body, to), MAX_FRAME)
                carried = await self.exchange_detour(dest, request, allowed)
                if carried is not None:
                    return self.inbound.check_frame(carried, time.time(), request=False)
            try:
                with trio.fail_after(allowed):
                    stream = await trio.open_tcp_stream(*dest)
                    async with stream:
                        await stream.send_all(self.codec.encode_frame(self.envelope(body, to)))
                        payload = await self._read_frame(stream)
            except (OSError, trio.TooSlowError):
                if self.exchange_failed is not None:
                    self.exchange_failed(dest)
                raise
            return self.inbound.check_frame(payload, time.time(), request=False)
        except InvalidMessage as exc:
            self.reject(exc.reason)
            raise
        except trio.BrokenResourceError as exc:
            # trio reports a reset as a broken stream; callers handle one family: OSError.
            raise ConnectionResetError(f"connection to {dest[0]}:{dest[1]} broken: {exc}") from None

    async def answer_relayed(self, src: Address, message: bytes) -> bytes | None:
        """Answer a TCP exchange's request that arrived another way (the registry's relay)
        as if *src* had connected: the request is checked exactly like a frame's message,
        handled by the stream handler, and the reply returned as a frame's message (``None``:
        no reply, or the request was refused and counted)."""
        handler = self._stream_handler
        if handler is None:
            return None
        try:
            env = self.inbound.check_frame(message, time.time(), request=True)
            reply = await handler(src, env)
            if reply is None:
                return None
            to = (env.sender, env.incarnation)
            return self.codec.encode(self.envelope(reply, to), MAX_FRAME)
        except InvalidMessage as exc:
            self.reject(exc.reason)
            return None

    # -- receiving ----------------------------------------------------------------------------

    def decode_datagram(self, data: bytes) -> Envelope | None:
        """Decode, verify and replay-check one datagram; count and drop it if it is bad."""
        return self.inbound.datagram(data, time.time())

    def inject_datagram(self, src: Address, data: bytes) -> None:
        """Handle a datagram that arrived another way (the registry's relay) as if it came
        from *src* on the socket: checked exactly like one (signature, binding, replay),
        counted and dropped if bad. Ignored before :meth:`serve_datagrams` runs."""
        env = self.decode_datagram(data)
        if env is not None and self._handler is not None:
            self._handler(src, env)

    async def serve_datagrams(
        self, handler: DatagramHandler, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive datagrams forever, handing each valid envelope to *handler*."""
        self._handler = handler
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_sender)
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(self._raw)
                self._receive_batch(handler)

    def _receive_batch(self, handler: DatagramHandler) -> None:
        """Read and handle up to :data:`_BATCH` datagrams that are waiting."""
        counts, budget, now = self._counts, self.budget, time.monotonic()
        for _ in range(_BATCH):
            try:
                data, src = self._raw.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                return
            except OSError as exc:
                # ICMP port unreachable from an earlier send surfaces here on Linux.
                if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                    logger.debug("recvfrom: %s", exc)
                continue
            counts["datagrams_received"] += 1
            counts["bytes_received"] += len(data)
            if not budget.allow(src[0], now):
                self.reject("source limit")
                continue
            env = self.decode_datagram(data)
            if env is not None:
                if self.observer is not None:
                    self.observer((src[0], src[1]), env)
                handler((src[0], src[1]), env)

    async def serve_streams(
        self, handler: StreamHandler, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept TCP connections forever: one request frame in, one reply frame out (see the
        module docstring for the limits)."""

        async def serve_one(stream: trio.SocketStream) -> None:
            try:
                peer = stream.socket.getpeername()
            except OSError:
                await trio.aclose_forcefully(stream)
                return
            source = str(peer[0])
            if self._streams_open >= MAX_STREAMS:
                self.reject("stream limit")
                await trio.aclose_forcefully(stream)
                return
            if self._streams_from[source] >= MAX_STREAMS_PER_SOURCE:
                self.reject("source stream limit")
                await trio.aclose_forcefully(stream)
                return
            self._streams_open += 1
            self._streams_from[source] += 1
            self._counts["streams_accepted"] += 1
            try:
                async with stream:
                    await self._serve_exchange(stream, (source, int(peer[1])), handler)
            finally:
                self._streams_open -= 1
                self._streams_from[source] -= 1
                if not self._streams_from[source]:
                    del self._streams_from[source]

        self._stream_handler = handler
        await trio.serve_listeners(serve_one, [self._listener], task_status=task_status)

    async def _serve_exchange(
        self, stream: trio.SocketStream, peer: Address, handler: StreamHandler
    ) -> None:
        try:
            with trio.fail_after(self.stream_timeout):
                payload = await self._read_frame(stream, self.handshake_timeout)
                env = self.inbound.check_frame(payload, time.time(), request=True)
                reply = await handler(peer, env)
                if reply is not None:
                    to = (env.sender, env.incarnation)
                    await stream.send_all(self.codec.encode_frame(self.envelope(reply, to)))
        except InvalidMessage as exc:
            self.reject(exc.reason)
        except trio.TooSlowError:
            self.reject("stream timeout")
        except (OSError, trio.BrokenResourceError) as exc:
            self._counts["stream_errors"] += 1
            logger.debug("stream from %s: %s", peer[0], exc)

    async def _read_frame(
        self,
        stream: trio.SocketStream,
        prefix_timeout: float = math.inf,
    ) -> bytes:
        """Read one frame's message: its prefix first (within *prefix_timeout*), checked
        before a byte of the message is read."""
        try:
            with trio.fail_after(prefix_timeout):
                prefix = await _receive_exactly(stream, self.codec.frame_prefix_size)
        except trio.TooSlowError:
            raise InvalidMessage("handshake timeout", "no frame prefix in time") from None
        return await _receive_exactly(stream, self.codec.frame_length(prefix))


def _receive_drops(sock: socket.socket) -> int | None:
    """The kernel's count of datagrams dropped for *sock* (Linux ``/proc/net/udp``: the last
    column of the line whose inode is the socket's), or ``None`` if it cannot be read."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
        with open("/proc/net/udp") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 12 and fields[9] == inode:
                    return int(fields[-1])
    except (OSError, ValueError):
        pass
    return None


async def _receive_exactly(stream: trio.SocketStream, count: int) -> bytes:
    buf = bytearray()
    while len(buf) < count:
        chunk = await stream.receive_some(min(65536, count - len(buf)))
        if not chunk:
            raise InvalidMessage("truncated", f"stream closed after {len(buf)} of {count} bytes")
        buf += chunk
    return bytes(buf)


async def _bind_pair(host: str, port: int) -> tuple[socket.socket, trio.SocketListener]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    try:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        udp.bind((host, port))
        bound = udp.getsockname()[1]
        tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await tcp.bind((host, bound))
            tcp.listen(128)
        except BaseException:
            tcp.close()
            raise
    except BaseException:
        udp.close()
        raise
    return udp, trio.SocketListener(tcp)


@contextlib.asynccontextmanager
async def open_transport(
    *,
    bind: str,
    port: int,
    advertise_host: str,
    federation: str,
    node_id: str,
    codec: WireCodec,
    stream_timeout: float = 5.0,
    next_free: bool = False,
    incarnation: int = 0,
) -> AsyncIterator[Transport]:
    """Bind UDP and TCP on *port* (0 = any free port; with *next_free*, the next free port of
    :data:`mesh._ports.GOSSIP_SEARCH`, then any) and yield the :class:`Transport`. Raises
    ``OSError`` naming the port when it is taken."""
    last: OSError | None = None
    for candidate in gossip_port_candidates(port, next_free):
        try:
            udp, listener = await _bind_pair(bind, candidate)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            last = exc
    else:
        assert last is not None
        raise OSError(last.errno, f"gossip port {port} on {bind} is taken") from last
    bound = udp.getsockname()[1]
    transport = Transport(
        udp,
        listener,
        (advertise_host, bound),
        federation,
        node_id,
        codec,
        stream_timeout,
        incarnation,
    )
    try:
        yield transport
    finally:
        udp.close()
        await listener.aclose()
