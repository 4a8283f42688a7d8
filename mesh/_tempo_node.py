"""The tempo helper of the Python API: a :class:`~mesh._tempo.TempoReplica` driven by a node.

::

    async with mesh.open_node(config) as node, mesh.open_tempo(node) as tempo:
        if node.conductor == node.path:
            tempo.start(bpm=120, meter=4, origin=node.now() + 2.0)
        known = await tempo.wait()               # the conductor's tempo, once known
        print(known.at(node.now()))              # BeatPosition(beat=..., bar=..., ...)

The conductor's tempo reaches every node on the publication topic ``stagemesh.tempo``; the
conductor republishes it every two seconds and as soon as a member joins, so a late joiner
learns it within moments, and a new conductor (if it runs a tempo helper: every node started
with ``--osc`` or ``--link`` does) adopts the tempo in force and carries on publishing it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from mesh._election import CONDUCTOR, PostChanged, SteppedDown
from mesh._membership import MemberEvent
from mesh._node import Node
from mesh._nodecore import Publication
from mesh._tempo import (
    TEMPO_TOPIC,
    BeatPosition,
    Tempo,
    TempoChanged,
    TempoIgnored,
    TempoReplica,
)

__all__ = ["TempoKeeper", "TempoStatistics", "open_tempo"]

logger = logging.getLogger(__name__)

_CONDUCTOR_POLL = 0.5


@attrs.frozen
class TempoStatistics:
    """Counters of a :class:`TempoKeeper`."""

    published: int
    """Tempo publications this keeper sent (sets and republications)."""
    ignored: int
    """Tempo publications from nodes that were not the conductor (not obeyed)."""
    invalid: int
    """Malformed tempo publications (dropped)."""
    changes: int
    """Times the tempo in force changed here."""


class TempoKeeper:
    """The federation's tempo as this node knows it; get one from :func:`open_tempo`."""

    def __init__(self, node: Node, republish: float = 2.0) -> None:
        self.node = node
        self._replica = TempoReplica(node.id, republish=republish)
        self._known = trio.Event()
        self._wake = trio.Event()
        self._watchers: list[trio.MemorySendChannel[Tempo]] = []
        self._changes = 0
        self.last_ignored: TempoIgnored | None = None

    # -- reading ------------------------------------------------------------------------------

    @property
    def current(self) -> Tempo | None:
        """The conductor's tempo, or ``None`` until one is known."""
        return self._replica.current

    def at(self, t: float | None = None) -> BeatPosition | None:
        """The musical position at federation time *t* (default: now), or ``None`` while no
        tempo is known."""
        tempo = self.current
        return None if tempo is None else tempo.at(self.node.now() if t is None else t)

    async def wait(self) -> Tempo:
        """The tempo in force, waiting until one is known."""
        await self._known.wait()
        assert self.current is not None
        return self.current

    @contextlib.asynccontextmanager
    async def changes(self, buffer: int = 16) -> AsyncIterator[trio.MemoryReceiveChannel[Tempo]]:
        """Receive every new tempo put in force here while the context is open (a watcher
        that falls *buffer* tempos behind loses the newest ones)."""
        send, receive = trio.open_memory_channel[Tempo](buffer)
        self._watchers.append(send)
        try:
            yield receive
        finally:
            self._watchers.remove(send)
            send.close()

    def statistics(self) -> TempoStatistics:
        """The keeper's counters."""
        r = self._replica
        return TempoStatistics(r.published, r.ignored, r.invalid, self._changes)

    # -- setting (conductor only) -------------------------------------------------------------

    def start(self, bpm: float, meter: int = 4, origin: float | None = None) -> Tempo:
        """Start a new timeline: beat 0, the downbeat of bar 0, at federation time *origin*
        (default: now). Conductor only: raises :class:`~mesh.NotConductor` elsewhere, and
        :class:`~mesh.InvalidTempo` for a tempo out of range."""
        now = self._sync_conductor()
        tempo = Tempo.start(bpm, meter, now if origin is None else origin)
        return self._set(now, tempo)

    def change(
        self, *, bpm: float | None = None, meter: int | None = None, at: float | None = None
    ) -> Tempo:
        """Change the tempo and/or the meter from federation time *at* (default: now) on,
        keeping the beat continuous. Conductor only; with no tempo yet, it starts one (beat 0
        at *at*, meter 4 unless given)."""
        now = self._sync_conductor()
        when = now if at is None else at
        current = self.current
        if current is None:
            if bpm is None:
                raise ValueError("no tempo yet: give bpm to start one")
            tempo = Tempo.start(bpm, 4 if meter is None else meter, when)
        else:
            tempo = current.change(when, bpm=bpm, meter=meter)
        return self._set(now, tempo)

    def _sync_conductor(self) -> float:
        now = self.node.now()
        self._replica.handle_conductor(now, self.node.core.conductor())
        return now

    def _set(self, now: float, tempo: Tempo) -> Tempo:
        done = self._replica.set(now, tempo)
        self._flush(now)
        return done

    # -- the driver ---------------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        replica = self._replica
        for payload in replica.take_publications():
            self.node.publish(TEMPO_TOPIC, payload)
        for event in replica.take_events():
            if isinstance(event, TempoChanged):
                self._changes += 1
                self._known.set()
                for sink in self._watchers:
                    with contextlib.suppress(trio.WouldBlock):
                        sink.send_nowait(event.tempo)
            else:
                self.last_ignored = event
                logger.warning(
                    "tempo published by %s ignored: it is not the conductor",
                    event.origin_path or event.origin,
                )
        self._wake.set()

    def _on_event(self, now: float, event: object) -> None:
        replica = self._replica
        if isinstance(event, Publication) and event.topic == TEMPO_TOPIC:
            replica.handle_conductor(now, self.node.core.conductor())
            replica.handle_publication(now, event.origin, event.origin_path, event.payload)
        elif isinstance(event, PostChanged | SteppedDown) and event.post == CONDUCTOR:
            replica.handle_conductor(now, self.node.core.conductor())
        elif isinstance(event, MemberEvent) and event.kind == "joined":
            replica.handle_join(now)
        replica.handle_timer(now)
        self._flush(now)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the node's events and keep the tempo until cancelled."""
        node = self.node
        async with node.events() as events, trio.open_nursery() as nursery:
            self._sync_conductor()
            nursery.start_soon(self._timers)
            task_status.started()
            async for event in events:
                self._on_event(node.now(), event)

    async def _timers(self) -> None:
        node = self.node
        while True:
            now = node.now()
            self._replica.handle_conductor(now, node.core.conductor())
            self._replica.handle_timer(now)
            self._flush(now)
            due = self._replica.next_deadline()
            delay = _CONDUCTOR_POLL if due is None else min(_CONDUCTOR_POLL, due - now)
            self._wake = trio.Event()
            with trio.move_on_after(max(0.0, delay)):
                await self._wake.wait()


@contextlib.asynccontextmanager
async def open_tempo(node: Node, *, republish: float = 2.0) -> AsyncIterator[TempoKeeper]:
    """Keep the federation's tempo on *node* while the context is open (see
    :class:`TempoKeeper`). *republish* is how often the conductor republishes it."""
    keeper = TempoKeeper(node, republish)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        try:
            yield keeper
        finally:
            nursery.cancel_scope.cancel()
