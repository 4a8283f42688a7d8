"""The one set of waiting and port helpers every test, bench and helper module uses.

- :func:`wait_for`: in trio code, poll a condition (plain or async) under a deadline;
- :func:`wait_until`: the same for plain blocking code (tests that drive processes in network
  namespaces from a normal function);
- :func:`free_port`: a TCP or UDP port nobody holds right now.

Tests never sleep to synchronise: they wait for what they assert, with a deadline that fails
the test naming what did not happen.
"""

from __future__ import annotations

import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import trio

__all__ = ["free_port", "wait_for", "wait_until"]


async def wait_for(
    check: Callable[[], Awaitable[Any] | Any],
    timeout: float = 10.0,
    what: str = "condition",
    every: float = 0.05,
) -> float:
    """Poll *check* (a plain or an async function) until it returns true; return the seconds
    it took. Fails the test (``AssertionError``) naming *what* after *timeout* seconds."""
    start = trio.current_time()
    try:
        with trio.fail_after(timeout):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    break
                await trio.sleep(every)
    except trio.TooSlowError:
        raise AssertionError(f"{what} not reached within {timeout} s") from None
    return trio.current_time() - start


def wait_until(
    check: Callable[[], Any], timeout: float, what: str = "condition", every: float = 0.2
) -> float:
    """Blocking :func:`wait_for`: poll *check* until it is true; return the seconds it took;
    ``AssertionError`` naming *what* after *timeout* seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"{what} not reached within {timeout} s")


def free_port(kind: Literal["tcp", "udp"] = "tcp", host: str = "127.0.0.1") -> int:
    """A *kind* port on *host* that is free right now (bound and closed at once, so nothing
    listens there: also a port that refuses connections). ``host="0.0.0.0"`` gives one that is
    free on every address (a test's beacon port)."""
    family_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family_type) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
