"""A throwaway PostgreSQL cluster of our own (Debian's ``postgresql`` package): ``initdb`` and
``pg_ctl`` into a temporary folder, serving on a Unix socket there and on a free loopback
port, stopped and removed at the end.

``initdb`` refuses to run as root: as root the cluster runs as the package's ``postgres``
user (else ``nobody``), in a folder of its own under the system's temporary directory (the
test's own ``tmp_path`` lies under a folder only root may enter). The superuser connects
through the socket without a password; registries connect over TCP to 127.0.0.1 as the role
``stagemesh`` with a password, as they would to a real server.

**On a host of a network-namespace test** (``Cluster(listen="10.77.0.1",
netns=host.netns)``): the server runs inside that namespace and listens on that address (not
on 127.0.0.1); clients of the same network log in with the password too (``samenet`` in
``pg_hba.conf``), and :meth:`Cluster.url` names that address.

Used by the tests (one cluster per session: ``postgres_cluster`` in tests/registries.py) and
by ``bench/registry.py``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import free_port

__all__ = ["PASSWORD", "ROLE", "Cluster", "postgres_bin"]

ROLE = "stagemesh"
PASSWORD = "registry-test-pw"


def postgres_bin() -> Path:
    """The folder of ``initdb`` and ``pg_ctl`` (the newest of Debian's
    ``/usr/lib/postgresql/<version>/bin``, else the ``PATH``'s)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL is not installed: apt-get install postgresql (initdb and pg_ctl)"
        )
    return Path(initdb).parent


class Cluster:
    """One running cluster. *durable* keeps PostgreSQL's own defaults (fsync and synchronous
    commit on: what a benchmark should measure); otherwise they are off, which is faster and
    loses nothing a test needs (tests kill registries, never the database server)."""

    def __init__(
        self, *, durable: bool = False, listen: str = "127.0.0.1", netns: str | None = None
    ) -> None:
        self.listen = listen
        self.netns = netns
        self.bin = postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="stagemesh-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "log"
        self.port = free_port()
        self._names = itertools.count(1)
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                self._user = pwd.getpwnam("nobody")
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.folder, 0o700)
        settings = {
            "listen_addresses": listen,
            "port": str(self.port),
            "unix_socket_directories": str(self.folder),
            "max_connections": "300",
        }
        if not durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        try:
            self._run(
                "initdb",
                *("-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C"),
                *("--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"),
            )
            if listen != "127.0.0.1":  # the namespace's network logs in as loopback does
                with open(self.data / "pg_hba.conf", "a") as hba:
                    hba.write("host all all samenet scram-sha-256\n")
            self._options = " ".join(f"-c {k}={v}" for k, v in settings.items())
            self.start_server()
            self.sql(
                f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'",
            )
        except BaseException:
            self.stop()
            raise

    def _run(self, program: str, *args: str) -> str:
        if self.netns is None:
            return self._run_here(program, *args)
        from tests.netns import in_netns  # the server (pg_ctl's child) lives in the namespace

        return in_netns(self.netns, lambda: self._run_here(program, *args))

    def _run_here(self, program: str, *args: str) -> str:
        user = self._user
        done = subprocess.run(
            [str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.folder,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
            env=dict(os.environ, LC_ALL="C", PGTZ="UTC"),
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {done.stderr.strip()} {log}")
        return done.stdout

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run *statement* as the superuser (psql over the Unix socket); its output."""
        return self._run(
            "psql",
            *("-h", str(self.folder), "-p", str(self.port), "-U", "postgres", "-d", database),
            *("-v", "ON_ERROR_STOP=1", "-X", "-q", "-t", "-A", "-c", statement),
        ).strip()

    def url(self, database: str, *, password: str = PASSWORD, role: str = ROLE) -> str:
        """The URL a registry uses for *database* (TCP to the listening address, password
        login)."""
        return f"postgresql://{role}:{password}@{self.listen}:{self.port}/{database}"

    def new_database(self, prefix: str = "registry", *, template: str = "template1") -> str:
        """Create a database owned by the registry's role, a copy of *template* (by default
        an empty one); its URL."""
        name = f"{prefix}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE {template}")
        return self.url(name)

    def pids(self) -> list[int]:
        """The postmaster and its current children (for CPU accounting)."""
        pid_file = self.data / "postmaster.pid"
        main = int(pid_file.read_text().split()[0])
        kids: list[int] = []
        for task in Path(f"/proc/{main}/task").iterdir():
            kids += [int(x) for x in (task / "children").read_text().split()]
        return [main, *kids]

    def start_server(self) -> None:
        """Start the server (again), on the same port; return once it accepts connections."""
        self._run(
            "pg_ctl",
            *("-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"),
            *("-o", self._options, "start"),
        )

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (*mode*: ``fast`` rolls back open transactions and closes every
        connection, ``immediate`` as if it crashed); the data stays."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def stop(self) -> None:
        """Stop the server at once (nothing in it is kept: SIGQUIT, then SIGKILL to whatever
        of it is left after 5 s) and remove the folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                pids = self.pids()
                os.kill(pids[0], signal.SIGQUIT)  # PostgreSQL's "immediate shutdown"
                deadline = time.monotonic() + 5
                while _alive(pids[0]) and time.monotonic() < deadline:
                    time.sleep(0.02)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process *pid* exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
