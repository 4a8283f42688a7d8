"""Starting a real ``stagemesh registry`` process for a test (one way, shared by the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio


async def start_registry(
    db: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[trio.Process, str]:
    """Start ``python -m mesh registry`` on a free loopback port with database *db* (and extra
    *args*), wait for its ``ready`` line and return the process and the registry's URL."""
    proc = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "mesh", "registry", "--bind", "127.0.0.1:0"),
            *("--db", str(db), *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, **(env or {})),
    )
    assert proc.stdout is not None
    buf = b""
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some(4096)
        assert chunk, "registry exited before it was ready"
        buf += chunk
    line = buf.split(b"\n")[0].decode()
    assert line.startswith("ready registry=http://127.0.0.1:"), line
    assert line.endswith(f"db={db}"), line
    return proc, line.split()[1].removeprefix("registry=")
