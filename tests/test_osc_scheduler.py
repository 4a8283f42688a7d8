"""The OSC bridge's trio driver waits out a scheduled message's last millisecond without
blocking the event loop: a real bridge socket and a real app socket on loopback, and a host
whose federation time moves only when the test's own task gets a turn of the loop."""

from __future__ import annotations

import socket

import trio
from pythonosc.osc_message import OscMessage

from mesh._osc import OscBridge
from mesh._osc_core import build_message
from tests.test_osc_core import Host

STEP = 0.0001
"""Federation time the test moves at each of its turns (0.1 ms)."""
AHEAD = 0.0008
"""How far ahead the message is scheduled: inside the last stretch, where the old scheduler
slept with the loop blocked."""


class TurnCountingHost(Host):
    """A node whose clock stands still unless the test's task runs; it fails the scheduler if
    the scheduler reads the time over and over without the loop running anyone else."""

    def __init__(self) -> None:
        super().__init__()
        self.reads_since_turn = 0

    def now(self) -> float:
        self.reads_since_turn += 1
        if self.reads_since_turn > 1000:
            raise AssertionError("the scheduler read the time 1000 times without letting "
                                 "another task run: it blocks the event loop")  # fmt: skip
        return self.t


async def test_the_scheduler_lets_every_task_run_while_a_message_comes_due() -> None:
    host = TurnCountingHost()
    bridge = OscBridge.bind(("127.0.0.1", 0))
    app = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await app.bind(("127.0.0.1", 0))
    due = host.t + AHEAD
    with app, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.serve, host)
            schedule = build_message("/stagemesh/schedule", [due, "/note", 7], "d")
            await app.sendto(schedule, bridge.address)
            turns = 0  # turns of the test's task while the message is waiting
            sent_at = None
            while sent_at is None:
                host.reads_since_turn = 0
                if bridge.core.statistics().scheduled:  # the bridge has read the datagram
                    assert turns < 100_000, "the message was never sent"
                    host.t += STEP
                    turns += 1
                await trio.lowlevel.checkpoint()
                if bridge.core.statistics().scheduled_sent:
                    sent_at = host.t
            data, _ = await app.recvfrom(1024)
            nursery.cancel_scope.cancel()
    message = OscMessage(data)
    assert (message.address, message.params) == ("/note", [7])
    # Sent when federation time reached it, not before and not after the test's next turn;
    # the test ran at each 0.1 ms of federation time meanwhile: the loop was never blocked.
    assert due <= sent_at + 0.00001 <= due + 2 * STEP
    assert turns >= round(AHEAD / STEP) - 1
