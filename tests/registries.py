"""Registries for the tests: real ``stagemesh registry`` processes, and fresh databases of
both backends. A registry is a ``stagemesh registry`` process (:func:`start_registry`;
:func:`spawn_registry` or :func:`spawn_registries`, several over one database, in blocking
code such as the benches; :func:`registry_argv` and :func:`ready_url` for one a test starts
in a network namespace), or the same app served in the test's own trio run
(:func:`in_process_registry`) when the test stops, resets or empties it under running nodes.
Every registry the tests and benches start is started here, one way (but for the tests of
the command line itself: its flags, errors and signals).

Every registry test takes its databases from the ``databases`` fixture (``module_databases``
for a module-wide one), parametrized over :data:`BACKENDS`, so each runs on SQLite and on
PostgreSQL: ``databases.new()`` is a fresh SQLite file in the test's folder, or a fresh
database in the session's throwaway PostgreSQL cluster (``postgres_cluster``, started the
first time a test needs it; tests/postgres.py). Both are what ``--db`` and
``RegistryStore`` take.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from registry_bridge import RegistryStore, create_app, serve_registry
from registry_bridge._database import shown_target
from registry_bridge._postgres import PostgresDatabase
from tests.postgres import ROLE, Cluster

BACKENDS = ("sqlite", "postgresql")


class Databases:
    """Fresh registry databases of one backend (see the module's docstring)."""

    def __init__(self, backend: str, folder: Path, cluster: Cluster | None) -> None:
        self.backend = backend
        self.folder = folder
        self.cluster = cluster
        self._numbers = itertools.count(1)

    def new(self, *, migrated: bool = True) -> str:
        """A fresh database: a SQLite path (no file yet: the registry creates it) or a
        ``postgresql://`` URL of a database with the current schema (*migrated*) or none."""
        if self.cluster is None:
            return str(self.folder / f"registry-{next(self._numbers)}.db")
        if not migrated:
            return self.cluster.new_database()
        return self.cluster.new_database(template=MIGRATED_TEMPLATE)


MIGRATED_TEMPLATE = "registry_template"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the whole session, stopped at its end, with a
    template database holding the current schema (copied for each test that asks)."""
    cluster = Cluster()
    try:
        cluster.sql(f"CREATE DATABASE {MIGRATED_TEMPLATE} OWNER {ROLE}")
        template = PostgresDatabase(cluster.url(MIGRATED_TEMPLATE), pool_size=1)
        template.migrate()
        template.close()
        yield cluster
    finally:
        cluster.stop()


def _databases(request: pytest.FixtureRequest, folder: Path) -> Databases:
    backend = str(request.param)
    cluster = request.getfixturevalue("postgres_cluster") if backend == "postgresql" else None
    return Databases(backend, folder, cluster)


@pytest.fixture(params=BACKENDS)
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Databases:
    """Fresh databases for one test, on each backend in turn."""
    return _databases(request, tmp_path)


@pytest.fixture(params=BACKENDS, scope="module")
def module_databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Databases:
    """Fresh databases shared by one module's tests, on each backend in turn."""
    return _databases(request, tmp_path_factory.mktemp("databases"))


def registry_argv(db: Path | str, *args: str, bind: str = "127.0.0.1:0") -> list[str]:
    """The command line of a ``stagemesh registry`` serving on *bind* (by default a free
    loopback port) with database *db* (a path or a URL) and extra *args*: what every
    registry a test or a bench starts runs (as is, or in a namespace with
    :meth:`tests.netns.Lan.spawn`). Read its URL from its first line with :func:`ready_url`."""
    return [sys.executable, "-m", "mesh", "registry", "--bind", bind, "--db", str(db), *args]


def ready_url(line: str, db: Path | str, host: str = "127.0.0.1") -> str:
    """The URL a registry's ``ready`` *line* names, checked to be on *host* and on *db*."""
    line = line.rstrip("\n")
    if not line.startswith(f"ready registry=http://{host}:"):
        raise RuntimeError(f"registry did not start: {line!r}")
    assert line.endswith(f"db={shown_target(str(db))}"), line
    return line.split()[1].removeprefix("registry=")


async def start_registry(
    db: Path | str, *args: str, env: dict[str, str] | None = None
) -> tuple[trio.Process, str]:
    """Start ``python -m mesh registry`` on a free loopback port with database *db* (a path or
    a URL; and extra *args*), wait for its ``ready`` line and return the process and the
    registry's URL. (A PostgreSQL database gets its schema first: ``RegistryStore`` with
    ``create``, or ``stagemesh registry migrate``.)"""
    proc = await trio.lowlevel.open_process(
        registry_argv(db, *args),
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
    return proc, ready_url(buf.split(b"\n")[0].decode(), db)


def spawn_registry(
    db: Path | str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """:func:`start_registry` for blocking code (the benches): the process (stop it with
    :func:`stop_registry`) and its URL, once ready. *cwd*: a checkout whose ``mesh`` it runs
    (``python -m`` looks there first)."""
    proc = subprocess.Popen(
        registry_argv(db, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, **(env or {})),
        cwd=cwd,
    )
    assert proc.stdout is not None
    try:
        return proc, ready_url(proc.stdout.readline(), db)
    except BaseException:
        stop_registry(proc)
        raise


def spawn_registries(
    db: Path | str,
    count: int,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> list[tuple[subprocess.Popen[str], str]]:
    """*count* registries (each its own process on its own port) over one database *db*, as
    several hosts behind one name run them: see :func:`spawn_registry`."""
    started: list[tuple[subprocess.Popen[str], str]] = []
    try:
        for _ in range(count):
            started.append(spawn_registry(db, *args, env=env, cwd=cwd))  # noqa: PERF401 (kept on failure)
    except BaseException:
        for proc, _url in started:
            stop_registry(proc)
        raise
    return started


def stop_registry(proc: subprocess.Popen[str], timeout: float = 15.0) -> int:
    """Stop a registry of :func:`spawn_registry` (SIGTERM, SIGKILL after *timeout*); its exit
    status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    status = proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return status


@contextlib.asynccontextmanager
async def running_registry(
    db: Path | str, *args: str, env: dict[str, str] | None = None
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
    db: Path | str, *args: str, env: dict[str, str] | None = None
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


def registry_command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``stagemesh registry ARGS`` run to its end in this process (the console script's own
    entry point, ``mesh.__main__.main``, without an interpreter's start-up per call): its
    exit status, stdout and stderr. For commands that end by themselves (``migrate``,
    ``export``, ``import``, and the refusals at start); a registry that serves runs as a real
    process (:func:`start_registry`)."""
    import io
    import logging

    import mesh.__main__

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = mesh.__main__.main(["registry", *args])
    finally:
        sys.stdin = old_stdin
        root.handlers[:] = handlers
        root.setLevel(level)
    argv = ["stagemesh", "registry", *args]
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())
