"""The OSC bridge's trio driver: a UDP socket, the node's events, and the schedule's timer.

``stagemesh node --osc 127.0.0.1:9000 [--osc-reply HOST:PORT]`` runs an :class:`OscBridge`
beside the node; the protocol itself is :class:`~mesh._osc_core.OscBridgeCore` (sans-IO).
The composition root imports this module only when ``--osc`` is given (python-osc is loaded
then, not by ``import mesh``).
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from mesh._election import CONDUCTOR, PostChanged, SteppedDown
from mesh._extensions import Extension
from mesh._hrtimer import PreciseTimer
from mesh._membership import MemberEvent
from mesh._node import Node
from mesh._nodecore import Publication
from mesh._osc_core import BridgeHost, OscBridgeCore, OscLimits, Outgoing
from mesh._tempo import Tempo
from mesh._tempo_node import TempoKeeper, open_tempo
from mesh._wire import Address, Value

__all__ = ["OscBridge"]

logger = logging.getLogger(__name__)

_EARLY = 0.00001
"""A scheduled message whose time is this close is sent now."""
_APPROACH = 0.05
"""The precise timer aims at a message only this close to its time; a longer wait ends half of
this before and is aimed again, so the difference between federation time's rate and this
host's monotonic clock (the clock the timer runs on) cannot build up over a long wait."""
_PUSHED_KINDS = frozenset({"joined", "alive", "suspect", "dead", "left"})


class _NodeHost:
    """The node, as :class:`~mesh._osc_core.BridgeHost` sees it."""

    def __init__(self, node: Node, keeper: TempoKeeper) -> None:
        self.node = node
        self.keeper = keeper

    def now(self) -> float:
        return self.node.now()

    def error_bound(self) -> float | None:
        clock = self.node.clock
        if not (clock.synced or clock.is_reference) or not math.isfinite(clock.error_bound):
            return None
        return clock.error_bound

    def members(self) -> list[tuple[str, str]]:
        return [(m.path, m.status) for m in self.node.members() if m.is_live]

    def conductor(self) -> str | None:
        return self.node.conductor

    def tempo(self) -> Tempo | None:
        return self.keeper.current

    def publish(self, topic: str, payload: Value) -> None:
        self.node.publish(topic, payload)

    def set_tempo(self, bpm: float, meter: int | None, at: float | None, restart: bool) -> None:
        if restart:
            self.keeper.start(bpm, 4 if meter is None else meter, at)
        else:
            self.keeper.change(bpm=bpm, meter=meter, at=at)


def _quiet_python_osc(record: logging.LogRecord) -> bool:
    """python-osc logs a warning on the root logger for each odd part of a datagram; the
    bridge counts bad input itself, so a stranger cannot flood the log through it."""
    return "pythonosc" not in record.pathname


class OscBridge(Extension):
    """Local apps talk OSC to the federation through this node (see ``docs/osc.md``)."""

    name = "osc"

    def __init__(
        self, sock: socket.socket, reply_to: Address | None = None, limits: OscLimits | None = None
    ) -> None:
        self.core = OscBridgeCore(limits, reply_to)
        self.address: Address = sock.getsockname()[:2]
        self.send_failures = 0
        self._stdlib_socket = sock
        self._waiting = trio.CancelScope()
        self._socket: trio.socket.SocketType | None = None

    @classmethod
    def bind(
        cls, address: Address, reply_to: Address | None = None, limits: OscLimits | None = None
    ) -> OscBridge:
        """A bridge on a UDP socket bound to *address* now (so a taken port is reported before
        the node starts); raises ``OSError`` naming the address."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            message = f"cannot open the OSC port {address[0]}:{address[1]}: {exc.strerror}"
            raise OSError(exc.errno, message) from None
        return cls(sock, reply_to, limits)

    def status(self) -> Mapping[str, Any]:
        stats = attrs.asdict(self.core.statistics())
        address = self.address
        return {
            "address": f"{address[0]}:{address[1]}",
            "reply_to": None
            if self.core.reply_to is None
            else f"{self.core.reply_to[0]}:{self.core.reply_to[1]}",
            "send_failures": self.send_failures,
            **stats,
        }

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if not self.address[0].startswith("127."):
            logger.warning("the OSC bridge listens on %s: any host that reaches it can publish "
                           "and schedule through this node", self.address[0])  # fmt: skip
        async with (
            open_tempo(node) as keeper,
            node.events() as events,
            keeper.changes() as tempos,
            trio.open_nursery() as nursery,
        ):
            host = _NodeHost(node, keeper)
            await nursery.start(self.serve, host)
            nursery.start_soon(self._follow, events, host)
            nursery.start_soon(self._follow_tempo, tempos, host)
            logger.info("OSC bridge on %s:%d", *self.address)
            task_status.started()

    async def serve(self, host: BridgeHost, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Answer apps and send scheduled messages on time, reading *host* (the node, in
        :meth:`run`; ``bench/osc.py`` serves a bare clock through it for its baseline). The
        socket is closed when this returns."""
        sock = trio.socket.from_stdlib_socket(self._stdlib_socket)
        logging.getLogger().addFilter(_quiet_python_osc)
        self._socket = sock
        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, sock, host)
                nursery.start_soon(self._scheduler, host)
                task_status.started()

    async def _send(self, out: list[Outgoing]) -> None:
        assert self._socket is not None
        for item in out:
            try:
                await self._socket.sendto(item.data, item.dest)
            except OSError as exc:
                self.send_failures += 1
                logger.debug("OSC send to %s failed: %s", item.dest, exc)

    async def _receive(self, sock: trio.socket.SocketType, host: BridgeHost) -> None:
        limit = self.core.limits.max_datagram + 1
        while True:
            try:
                data, src = await sock.recvfrom(limit)
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                logger.debug("OSC receive failed: %s", exc)
                continue
            before = self.core.next_due()
            out = self.core.handle_datagram(host, src[:2], data)
            if self.core.next_due() != before:
                self._waiting.cancel()
            await self._send(out)

    async def _follow(self, events: trio.MemoryReceiveChannel[Any], host: _NodeHost) -> None:
        core = self.core
        async for event in events:
            out: list[Outgoing] = []
            if isinstance(event, Publication):
                out = core.handle_publication(event)
            elif isinstance(event, MemberEvent) and event.kind in _PUSHED_KINDS:
                out = core.handle_member(event.member.path, event.member.status)
            elif isinstance(event, PostChanged | SteppedDown) and event.post == CONDUCTOR:
                out = core.handle_conductor(host.conductor())
            if out:
                await self._send(out)

    async def _follow_tempo(
        self, tempos: trio.MemoryReceiveChannel[Tempo], host: _NodeHost
    ) -> None:
        async for _ in tempos:
            await self._send(self.core.handle_tempo(host))
            self._waiting.cancel()

    async def _scheduler(self, host: BridgeHost) -> None:
        """Send each scheduled message when federation time reaches it. The wait is on the
        kernel's high-resolution timer where there is one (:class:`PreciseTimer`), in the event
        loop: the loop is never blocked. A message that comes due sooner ends the wait."""
        core = self.core
        with PreciseTimer() as timer:
            while True:
                due = core.next_due()
                delay = None if due is None else due - host.now()
                if delay is not None and delay <= _EARLY:
                    await self._send(core.handle_timer(host, _EARLY))
                    await trio.lowlevel.checkpoint()
                    continue
                with trio.CancelScope() as self._waiting:
                    if delay is None:
                        await trio.sleep_forever()
                    if delay > _APPROACH:  # far off: trio's timer, then aim again
                        await trio.sleep(delay - _APPROACH / 2)
                    else:
                        await timer.sleep_until(time.monotonic() + delay)
