"""The OSC bridge's scheduler and its timer: a scheduled message leaves at its federation time,
never before, and while it waits the event loop serves everything else (a real bridge socket,
a real app socket on loopback, the real timer; the timing figures come from bench/osc.py)."""

from __future__ import annotations

import socket
import time

import pytest
import trio
from pythonosc.osc_message import OscMessage

from mesh._hrtimer import PreciseTimer
from mesh._osc import OscBridge
from mesh._osc_core import build_message
from tests.test_osc_core import Host

OFFSET = 5000.0
"""Federation time minus this host's monotonic clock, for the host below."""


class MonotonicHost(Host):
    """A node whose federation time is this host's monotonic clock plus :data:`OFFSET`."""

    def now(self) -> float:
        return time.monotonic() + OFFSET


async def udp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    a = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await a.bind(("127.0.0.1", 0))
    await b.bind(("127.0.0.1", 0))
    return a, b


@pytest.mark.parametrize("kernel", [True, False], ids=["timerfd", "spin"])
async def test_the_timer_wakes_at_its_deadline_and_the_loop_serves_others_meanwhile(
    kernel: bool,
) -> None:
    a, b = await udp_pair()
    echoes = 0
    woke = 0.0

    async def echo_until_woken() -> None:
        nonlocal echoes
        while not woke:
            await a.sendto(b"ping", b.getsockname())
            await b.recvfrom(16)
            echoes += 1

    with a, b, PreciseTimer(kernel) as timer, trio.fail_after(30):
        assert timer.kernel_timer == kernel
        async with trio.open_nursery() as nursery:
            deadline = time.monotonic() + 0.3
            nursery.start_soon(echo_until_woken)
            await timer.sleep_until(deadline)
            woke = time.monotonic()
            nursery.cancel_scope.cancel()
        # A deadline already past returns at once (after a checkpoint).
        await timer.sleep_until(time.monotonic() - 1.0)
    assert woke >= deadline
    # Loopback round trips went on while the timer waited: a blocked loop would allow none.
    assert echoes >= 5


async def test_a_scheduled_message_leaves_at_its_federation_time_and_never_blocks_the_loop() -> (
    None
):
    host = MonotonicHost()
    bridge = OscBridge.bind(("127.0.0.1", 0))
    app = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await app.bind(("127.0.0.1", 0))
    arrivals: dict[str, tuple[float, list[object]]] = {}
    with app, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.serve, host)
            late = host.now() + 0.6
            await app.sendto(build_message("/stagemesh/schedule", [late, "/late"], "d"),
                             bridge.address)  # fmt: skip
            # A sooner message ends the wait for the later one.
            soon = host.now() + 0.3
            await app.sendto(build_message("/stagemesh/schedule", [soon, "/soon"], "d"),
                             bridge.address)  # fmt: skip
            # While both wait, the bridge answers at once.
            await app.sendto(build_message("/stagemesh/time"), bridge.address)
            while len(arrivals) < 3:
                data, _ = await app.recvfrom(1024)
                message = OscMessage(data)
                arrivals[message.address] = (host.now(), list(message.params))
            nursery.cancel_scope.cancel()
    assert arrivals["/stagemesh/time"][0] < soon
    # Never before its federation time; the sooner one well before the later one's time
    # (the bound on lateness only allows for a loaded machine: bench/osc.py has the figures).
    # (A message within 10 us of its time is sent: a turn of the loop takes about as long.)
    assert soon - 1e-5 <= arrivals["/soon"][0] < late
    assert late - 1e-5 <= arrivals["/late"][0] < late + 0.25
