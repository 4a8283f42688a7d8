"""A local app that speaks OSC to a node's bridge: python-osc's ``SimpleUDPClient`` (a real
OSC client), driven from trio through a worker thread, stamping when each message arrives."""

from __future__ import annotations

import time
from typing import Any

import attrs
import trio
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

__all__ = ["OscApp", "Received"]


@attrs.frozen
class Received:
    """One OSC message the app got, with ``time.monotonic()`` at its arrival."""

    address: str
    args: list[Any]
    at: float


class OscApp:
    """An app on loopback talking to the bridge at *host*:*port* (answers come back to the
    port it sends from)."""

    def __init__(self, host: str, port: int) -> None:
        self.client = SimpleUDPClient(host, port)
        self.target = (host, port)
        self.pending: list[Received] = []

    def close(self) -> None:
        self.client._sock.close()

    async def send(self, address: str, *args: Any) -> None:
        """Send one message (python-osc guesses the types: float -> 'f', int -> 'i')."""
        self.client.send_message(address, list(args))

    async def send_raw(self, data: bytes) -> None:
        """Send any bytes (garbage included) from the app's socket."""
        self.client._sock.sendto(data, self.target)

    def _receive_one(self, timeout: float) -> Received | None:
        try:
            data = self.client.receive(timeout)
        except (TimeoutError, OSError):
            return None
        if not data:  # python-osc's answer to a timeout
            return None
        at = time.monotonic()
        message = OscMessage(data)
        return Received(message.address, list(message.params), at)

    async def receive(self, address: str, timeout: float = 10.0) -> Received:
        """The next message to *address* (others are kept for later calls); fails the test
        after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, got in enumerate(self.pending):
                if got.address == address:
                    return self.pending.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [p.address for p in self.pending]
                raise AssertionError(f"no {address} within {timeout} s (got {seen})")
            got = await trio.to_thread.run_sync(self._receive_one, min(left, 0.5))
            if got is not None:
                self.pending.append(got)

    async def ask(self, address: str, *args: Any, reply: str | None = None) -> Received:
        """Send and wait for the answer (to *reply*, default the same address)."""
        await self.send(address, *args)
        return await self.receive(reply or address)
