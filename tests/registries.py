"""Starting a real ``stagemesh registry`` process for a test (one way, shared by the tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
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


@contextlib.asynccontextmanager
async def running_registry(
    db: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """:func:`start_registry` as a context: yields the URL, then stops the process (SIGTERM)
    and checks that it exited cleanly."""
    proc, url = await start_registry(db, *args, env=env)
    try:
        yield url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    assert proc.returncode == 0, f"registry exited with {proc.returncode}"


@contextlib.asynccontextmanager
async def registry_http(
    db: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """:func:`running_registry` with an ``httpx`` client on its URL (10 s per request)."""
    async with (
        running_registry(db, *args, env=env) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        yield http
