"""A stand-in for a role's real command: ``python -m roles._standin RESTART -- ARGV...``.

Run instead of the command when an instance has ``"stand_in": true``, so a configuration can
be tried on a machine without ffmpeg or rsync: it prints the command it stands for, then
behaves like it would under the instance's restart policy (``always``: stays up until it is
stopped; ``on-failure`` and ``periodic``: does its "work" and exits 0).
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]


def _stop(signum: int, frame: FrameType | None) -> None:
    print("stand-in: stopped", flush=True)
    sys.exit(0)


def main(argv: Sequence[str]) -> int:
    """Print what the real command would be and behave like it; return the exit status."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m roles._standin RESTART -- COMMAND...", file=sys.stderr)
        return 2
    restart, command = argv[0], list(argv[2:])
    print(f"stand-in: would run: {shlex.join(command)}", flush=True)
    if restart != "always":
        print("stand-in: done", flush=True)
        return 0
    signal.signal(signal.SIGTERM, _stop)
    while True:
        time.sleep(60)
        print(f"stand-in: still standing in for {command[0]}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
