"""The Ableton Link bridge's trio driver (``stagemesh node --link``, extra ``stagemesh[link]``).

It joins the Link session of this machine (linkpython-extern) and, 20 times a second, reads
Link's clock, federation time and the session's tempo and beat at one instant, and commits what
:class:`~mesh._link_core.LinkAligner` decides, so every laptop's Link session plays the
conductor's tempo in phase with the conductor's bars. The conductor's tempo comes from the
tempo helper (:func:`mesh.open_tempo`). The composition root imports this module only when
``--link`` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import link
import trio

from mesh._extensions import Extension
from mesh._link_core import Align, LinkAligner
from mesh._node import Node
from mesh._tempo_node import TempoKeeper, open_tempo

__all__ = ["LinkBridge"]

logger = logging.getLogger(__name__)


class LinkBridge(Extension):
    """Keeps the local Link session on the conductor's tempo and beat (see ``docs/link.md``)."""

    name = "link"

    def __init__(self, period: float = 0.05, tolerance: float = 0.0002) -> None:
        self.period = period
        self.aligner = LinkAligner(tolerance)
        self.session: link.Link | None = None
        self.foreign: list[dict[str, float]] = []
        self._session_bpm: float | None = None
        self._keeper: TempoKeeper | None = None
        self._node: Node | None = None

    def status(self) -> Mapping[str, Any]:
        session = self.session
        error = self.aligner.last_error
        tempo = None if self._keeper is None else self._keeper.current
        node = self._node
        return {
            "enabled": session is not None,
            "peers": None if session is None else session.numPeers(),
            "session_bpm": self._session_bpm,
            "conductor_bpm": None if tempo is None or node is None else tempo.bpm_at(node.now()),
            "phase_error_ms": None if error is None else error * 1000,
            "alignments": dict(self.aligner.counts),
            "foreign_tempo_changes": len(self.foreign),
            "last_foreign": self.foreign[-1] if self.foreign else None,
        }

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        session = link.Link(120.0)
        session.enabled = True
        self.session = session
        self._node = node
        logger.info("joined the local Ableton Link session")
        try:
            async with open_tempo(node) as keeper, keeper.changes() as changes:
                self._keeper = keeper
                task_status.started()
                while True:
                    self.step(node, keeper)
                    tempo = keeper.current
                    delay = self.period
                    upcoming = None if tempo is None else tempo.next_change(node.now())
                    if upcoming is not None:
                        delay = min(delay, max(0.0, upcoming - node.now()))
                    with trio.move_on_after(delay):
                        await changes.receive()
        finally:
            session.enabled = False
            self.session = None

    def step(self, node: Node, keeper: TempoKeeper) -> Align | None:
        """Read the session and the federation at one instant and commit what is decided."""
        session = self.session
        assert session is not None
        clock = session.clock()
        before = clock.micros()
        federation_time = node.now()
        time_us = (before + clock.micros()) // 2
        state = session.captureAppSessionState()
        self._session_bpm = state.tempo()
        tempo = keeper.current
        snapshot = node.clock
        if tempo is None or not (snapshot.synced or snapshot.is_reference):
            return None
        quantum = self.aligner.quantum(tempo, federation_time)
        action = self.aligner.step(
            time_us, federation_time, tempo, state.tempo(), state.beatAtTime(time_us, quantum)
        )
        if action is None:
            return None
        state.setTempo(action.bpm, action.time_us)
        state.forceBeatAtTime(action.beat, action.time_us, action.quantum)
        session.commitAppSessionState(state)
        if action.reason == "foreign" and action.foreign_bpm is not None:
            self.foreign = [*self.foreign[-15:], {
                "bpm": action.foreign_bpm, "federation_time": federation_time}]  # fmt: skip
            logger.warning(
                "tempo %.3f set in the local Link session is not obeyed: the conductor's tempo "
                "is %.3f (only the conductor sets the tempo)",
                action.foreign_bpm,
                action.bpm,
            )
        elif action.reason in ("start", "tempo"):
            logger.info("Link session set to %.3f bpm (%s)", action.bpm, action.reason)
        return action
