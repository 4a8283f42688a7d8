"""A timer that wakes a trio task at a ``time.monotonic()`` instant to within tens of
microseconds, without blocking the event loop.

trio's own timer is as precise as the event loop's poll: epoll (Linux) takes its timeout in
whole milliseconds, rounded up, so ``trio.sleep_until`` wakes up to a millisecond late. The OSC
bridge sends scheduled messages at a federation time and needs better. On Linux,
:class:`PreciseTimer` arms a ``timerfd`` (the kernel's high-resolution timer, on
``CLOCK_MONOTONIC``, the clock of ``time.monotonic()``) and waits for it to become readable
in the event loop like any socket (no thread, and the loop keeps serving every other task),
set :data:`SPIN` before the instant: a process woken from sleep on a busy machine often waits
that long for a CPU, so the timer wakes it early and it covers the rest by reading the clock at
each turn of the loop (a cooperative spin: every other task ready to run runs between two
checks; bounded by :data:`SPIN`). Elsewhere (or if the timerfd cannot be made) trio's own
timer wakes it :data:`SPIN_LEAD` before the instant, to allow for its rounding.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import time

import trio

__all__ = ["SPIN", "SPIN_LEAD", "PreciseTimer"]

SPIN = 0.001
"""How long before the instant the kernel's timer wakes the task, which then spins."""
SPIN_LEAD = 0.0015
"""Without a timerfd: how long before the instant trio's timer (millisecond resolution)
hands over to the spin."""

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _open_timerfd() -> tuple[int, ctypes.CDLL] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
    except (OSError, AttributeError):
        return None
    return None if fd < 0 else (fd, libc)


class PreciseTimer:
    """Sleeps a trio task until an instant of ``time.monotonic()``. One task at a time; close
    it (or use it as a context manager) to release the timerfd."""

    def __init__(self, kernel: bool = True, spin: float = SPIN) -> None:
        """*kernel* false forces trio's timer, *spin* sets the spin after the kernel's timer
        (for tests and measurements)."""
        self.spin = spin
        opened = _open_timerfd() if kernel else None
        self._fd = -1 if opened is None else opened[0]
        self._libc: ctypes.CDLL | None = None if opened is None else opened[1]

    @property
    def kernel_timer(self) -> bool:
        """Whether the kernel's high-resolution timer is used (else the cooperative spin)."""
        return self._fd >= 0

    async def sleep_until(self, deadline: float) -> None:
        """Return at *deadline* (seconds of ``time.monotonic()``) or just after; a checkpoint
        (cancellable) even if the deadline has passed."""
        if self._fd < 0:
            left = deadline - time.monotonic()
            if left > SPIN_LEAD:
                await trio.sleep(left - SPIN_LEAD)
        elif deadline - self.spin > time.monotonic():
            self._arm(deadline - self.spin)
            while True:
                await trio.lowlevel.wait_readable(self._fd)
                try:
                    os.read(self._fd, 8)  # the count of expirations: once armed, once expired
                    break
                except BlockingIOError:  # woken but not expired (cannot happen; be safe)
                    continue
        await trio.lowlevel.checkpoint()
        while time.monotonic() < deadline:  # bounded by the lead (plus the loop's lateness)
            await trio.lowlevel.checkpoint()

    def _arm(self, deadline: float) -> None:
        assert self._libc is not None
        ns = max(1, round(deadline * 1e9))  # zero would disarm it
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            code = ctypes.get_errno() or errno.EINVAL
            raise OSError(code, f"timerfd_settime: {os.strerror(code)}")

    def close(self) -> None:
        """Release the timerfd (a task waiting on it is woken with ``ClosedResourceError``)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(RuntimeError):  # not in trio: nobody can be waiting
                trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def __enter__(self) -> PreciseTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
