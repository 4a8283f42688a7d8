"""The gossip port: one UDP socket and one TCP listener on the same port, and the edge where
bytes become typed envelopes.

Every datagram and frame is decoded, verified and replay-checked here; whatever fails is counted
by reason in :meth:`Transport.statistics` and dropped, never raised into the node.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from mesh._ports import gossip_port_candidates
from mesh._wire import (
    MAX_DATAGRAM,
    Address,
    Envelope,
    InvalidMessage,
    Message,
    ReplayGuard,
    WireCodec,
)

__all__ = [
    "DatagramHandler",
    "StreamHandler",
    "Transport",
    "TransportStatistics",
    "open_transport",
]

logger = logging.getLogger(__name__)

DatagramHandler = Callable[[Address, Envelope], None]
StreamHandler = Callable[[Address, Envelope], Awaitable[Message | None]]

_SEND_QUEUE = 4096
_MAX_STREAMS = 64


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
    ) -> None:
        self._raw = udp  # non-blocking; every datagram is sent by _try_send
        self._udp = trio.socket.from_stdlib_socket(udp)  # for receiving
        self._listener = listener
        self.address = advertised
        self.federation = federation
        self.node_id = node_id
        self.codec = codec
        self.stream_timeout = stream_timeout
        self.incarnation = 0
        self._seq = 0
        max_age = 300.0 if codec.keyring is not None else None
        self._guard = ReplayGuard(max_age=max_age)
        self._send, self._outbox = trio.open_memory_channel[tuple[Address, bytes]](_SEND_QUEUE)
        self._stream_slots = trio.Semaphore(_MAX_STREAMS)
        self._drained = trio.Event()
        self._pending = 0
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

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
            rejected=dict(self._rejected),
        )

    def reject(self, reason: str) -> None:
        """Count one refused input under *reason*."""
        self._rejected[reason] += 1

    # -- sending ------------------------------------------------------------------------------

    def envelope(self, body: Message) -> Envelope:
        """Wrap *body* with this node's identity and the next sequence number."""
        self._seq += 1
        return Envelope(
            self.federation, self.node_id, self.incarnation, self._seq, time.time(), body
        )

    def send_nowait(self, dest: Address, body: Message) -> None:
        """Send one datagram now, or queue it if the socket would block (or others wait
        before it); if the queue is full (the network is stuck) it is dropped and counted, as
        UDP would.

        Sending at once matters for the clock: an NTP-style exchange assumes the time stamped
        in a request or reply is the time it leaves, and a queue adds a scheduling delay that
        differs between the two directions.
        """
        try:
            data = self.codec.encode(self.envelope(body))
        except InvalidMessage as exc:
            logger.error("not sending %s to %s: %s", type(body).__name__, dest, exc)
            self._counts["send_errors"] += 1
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
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Envelope:
        """Send *body* in a TCP frame to *dest* and return the decoded reply.

        Raises :class:`OSError`, :class:`trio.TooSlowError` or :class:`InvalidMessage`.
        """
        self._counts["streams_opened"] += 1
        with trio.fail_after(timeout or self.stream_timeout):
            stream = await trio.open_tcp_stream(*dest)
            async with stream:
                await stream.send_all(self.codec.encode_frame(self.envelope(body)))
                env = await self._read_frame(stream)
        self._accept(env)
        return env

    # -- receiving ----------------------------------------------------------------------------

    def _accept(self, env: Envelope) -> None:
        if env.federation != self.federation:
            raise InvalidMessage("federation", f"from federation {env.federation!r}")
        self._guard.check(env, time.time())

    def decode_datagram(self, data: bytes) -> Envelope | None:
        """Decode, verify and replay-check one datagram; count and drop it if it is bad."""
        try:
            env = self.codec.decode(data)
            if env.sender == self.node_id:
                self.reject("own")
                return None
            self._accept(env)
            return env
        except InvalidMessage as exc:
            self.reject(exc.reason)
            return None

    async def serve_datagrams(
        self, handler: DatagramHandler, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive datagrams forever, handing each valid envelope to *handler*."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_sender)
            task_status.started()
            while True:
                try:
                    data, src = await self._udp.recvfrom(MAX_DATAGRAM + 1)
                except OSError as exc:
                    # ICMP port unreachable from an earlier send surfaces here on Linux.
                    if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                        logger.debug("recvfrom: %s", exc)
                    continue
                self._counts["datagrams_received"] += 1
                self._counts["bytes_received"] += len(data)
                env = self.decode_datagram(data)
                if env is not None:
                    handler((src[0], src[1]), env)

    async def serve_streams(
        self, handler: StreamHandler, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept TCP connections forever: one request frame in, one reply frame out."""

        async def serve_one(stream: trio.SocketStream) -> None:
            async with self._stream_slots, stream:
                self._counts["streams_accepted"] += 1
                try:
                    with trio.fail_after(self.stream_timeout):
                        env = await self._read_frame(stream)
                        self._accept(env)
                        peer = stream.socket.getpeername()
                        reply = await handler((peer[0], peer[1]), env)
                        if reply is not None:
                            await stream.send_all(self.codec.encode_frame(self.envelope(reply)))
                except InvalidMessage as exc:
                    self.reject(exc.reason)
                except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    self._counts["stream_errors"] += 1
                    logger.debug("stream: %s", exc)

        await trio.serve_listeners(serve_one, [self._listener], task_status=task_status)

    async def _read_frame(self, stream: trio.SocketStream) -> Envelope:
        prefix = await _receive_exactly(stream, 4)
        length = self.codec.frame_length(prefix)
        return self.codec.decode_frame(await _receive_exactly(stream, length))


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
        udp, listener, (advertise_host, bound), federation, node_id, codec, stream_timeout
    )
    try:
        yield transport
    finally:
        udp.close()
        await listener.aclose()
