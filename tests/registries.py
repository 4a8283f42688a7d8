"""Starting a real registry for a test (one way, shared by the tests): a ``stagemesh registry``
process (:func:`start_registry`), or the same app served in the test's own trio run
(:func:`in_process_registry`) when the test stops, resets or empties it under running nodes."""

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

from registry_bridge import RegistryStore, create_app, serve_registry


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


class InProcessRegistry:
    """A real registry (the app, hypercorn, SQLite) served in the test's trio run, which the
    test can stop, start again on the same address (the database kept, or emptied) and reset.
    """

    def __init__(self, nursery: trio.Nursery, db: Path, ttl: float = 30.0) -> None:
        self.nursery = nursery
        self.db = db
        self.ttl = ttl
        self.url = ""
        self.store: RegistryStore | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()

    async def start(self, bind: str = "127.0.0.1:0") -> str:
        """Serve (again) on *bind* (the address it had, to come back where nodes look)."""
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self.store = RegistryStore(self.db, ttl=self.ttl)
        app = create_app(self.store, None)

        async def serve(task_status: trio.TaskStatus[str]) -> None:
            try:
                await serve_registry(
                    app, bind, shutdown_trigger=self._stop.wait, task_status=task_status
                )
            finally:
                self._stopped.set()

        self.url = await self.nursery.start(serve)
        return self.url

    @property
    def bind(self) -> str:
        """The address it serves on (host:port)."""
        return self.url.removeprefix("http://")

    def stop(self) -> None:
        """Stop serving (requests are refused from then on); the database is kept."""
        self._stop.set()

    async def stopped(self) -> None:
        """Stop and wait until the address is free again."""
        self.stop()
        await self._stopped.wait()
        self.close()

    async def restart_empty(self) -> None:
        """Stop, throw the database away and serve again on the same address."""
        bind = self.bind
        await self.stopped()
        for suffix in ("", "-wal", "-shm"):
            await trio.Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        await self.start(bind)

    def close(self) -> None:
        """Close the database."""
        if self.store is not None:
            self.store.close()
            self.store = None


@contextlib.asynccontextmanager
async def in_process_registry(tmp: Path, ttl: float = 30.0) -> AsyncIterator[InProcessRegistry]:
    """An :class:`InProcessRegistry` on a free loopback port, database in *tmp*."""
    async with trio.open_nursery() as nursery:
        made = InProcessRegistry(nursery, tmp / "registry.db", ttl)
        await made.start()
        try:
            yield made
        finally:
            made.stop()
    made.close()
