"""The registry's SQLite backend: one file, stdlib :mod:`sqlite3`, WAL journal.

Write transactions are ``BEGIN IMMEDIATE``: SQLite lets one at a time hold the file's write
lock. Several processes may share one file (``stagemesh registry --workers N``); give each
the same *lock_file* so a writer waits on an ``flock`` (handed over at once) rather than
SQLite's sleep-and-retry. ``synchronous=NORMAL`` (the default) survives a crash of the
process; ``FULL`` survives a power cut as well, at an fsync per commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from registry_bridge._database import (
    HANDOVERS_FROM_EPOCHS,
    SCHEMA_VERSION,
    DatabaseError,
    Duplicate,
    Rows,
    check_version,
)

__all__ = ["SqliteDatabase"]

# _MIGRATIONS[v] takes the schema from version v to v + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS federations (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            epoch REAL,
            version INTEGER NOT NULL DEFAULT 0,
            conductor_path TEXT,
            conductor_node_id TEXT,
            conductor_host TEXT,
            conductor_port INTEGER,
            conductor_term INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE IF NOT EXISTS orchestras (
            id INTEGER PRIMARY KEY,
            federation_id INTEGER NOT NULL REFERENCES federations(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (federation_id, name)
        )""",
        """CREATE TABLE IF NOT EXISTS registrations (
            token TEXT PRIMARY KEY,
            federation_id INTEGER NOT NULL REFERENCES federations(id) ON DELETE CASCADE,
            orchestra_id INTEGER NOT NULL REFERENCES orchestras(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            node_id TEXT,
            host TEXT NOT NULL,
            port INTEGER NOT NULL,
            supernode INTEGER NOT NULL,
            conductor INTEGER NOT NULL,
            heartbeat INTEGER NOT NULL,
            registered_at REAL NOT NULL,
            last_seen REAL NOT NULL,
            UNIQUE (orchestra_id, name)
        )""",
        "CREATE INDEX IF NOT EXISTS registrations_federation ON registrations (federation_id)",
        "CREATE INDEX IF NOT EXISTS registrations_expiry ON registrations (heartbeat, last_seen)",
        # "the supernode of this orchestra" / "the supernodes of this federation" are asked by
        # every registration: without these (tiny, partial) indexes each one scans the
        # orchestra's nodes
        "CREATE INDEX IF NOT EXISTS registrations_orchestra_supernode ON registrations"
        " (orchestra_id) WHERE supernode = 1",
        "CREATE INDEX IF NOT EXISTS registrations_federation_supernode ON registrations"
        " (federation_id) WHERE supernode = 1",
    ),
    (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (1)",
        # when some process last swept expired registrations: the processes sharing the
        # database take turns instead of each sweeping every second
        "CREATE TABLE expiry_sweep (id INTEGER PRIMARY KEY CHECK (id = 1), last REAL NOT NULL)",
        "INSERT INTO expiry_sweep (id, last) VALUES (1, 0)",
    ),
    (
        # the lineage of federation time each epoch belongs to (set by an epoch handover,
        # RegistryStore.offer_epoch); it applies while the federation's epoch is still
        # `epoch`, so a reset or a later registration's epoch leaves it behind by itself
        """CREATE TABLE IF NOT EXISTS epochs (
            federation_id INTEGER PRIMARY KEY REFERENCES federations(id) ON DELETE CASCADE,
            epoch REAL NOT NULL,
            lineage TEXT NOT NULL
        )""",
    ),
    (
        # gossip relayed to a registered supernode (registry_bridge._relaystore): gone with the
        # registration it is queued for
        """CREATE TABLE relay (
            id INTEGER PRIMARY KEY,
            recipient TEXT NOT NULL REFERENCES registrations(token) ON DELETE CASCADE,
            sender TEXT NOT NULL,
            frame BLOB NOT NULL,
            queued_at REAL NOT NULL
        )""",
        "CREATE INDEX relay_recipient ON relay (recipient, id)",
        "CREATE INDEX relay_age ON relay (queued_at)",
    ),
    (
        # a supernode's last members report (registry_bridge._members, JSON text) and when it
        # came: kept with its registration, so it expires and goes with it
        "ALTER TABLE registrations ADD COLUMN members TEXT",
        "ALTER TABLE registrations ADD COLUMN members_at REAL",
    ),
    (
        # the tag a node of a keyed federation signed its epoch and lineage with (kept as it
        # came, handed back with them: the registry has no key, the nodes check it)
        "ALTER TABLE epochs ADD COLUMN tag TEXT",
    ),
    (
        # the federation's generation: random, replaced at every reset (keyed nodes sign it
        # with the epoch, so a handover from before a reset never verifies after it)
        "ALTER TABLE federations ADD COLUMN generation TEXT",
        "UPDATE federations SET generation = lower(hex(randomblob(12)))",
        # the epochs handed over (RegistryStore.offer_epoch): one per source (the offering
        # client's address; '' the registry's own epoch, lineage NULL), the federation's
        # epoch being the oldest; kept after the registration (token) that handed it over
        """CREATE TABLE handovers (
            federation_id INTEGER NOT NULL REFERENCES federations(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            token TEXT,
            epoch REAL NOT NULL,
            lineage TEXT,
            tag TEXT,
            PRIMARY KEY (federation_id, source)
        )""",
        *HANDOVERS_FROM_EPOCHS,
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class SqliteDatabase:
    """One SQLite file (see the module's docstring); :class:`DatabaseError` if it cannot be
    opened."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        lock_file: str | Path | None = None,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.shown = str(path)
        self._lock_fd: int | None = None
        self._locked = False
        try:
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, cached_statements=256
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            if lock_file is not None:
                self._lock_fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseError(f"cannot open database {self.shown}: {exc}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Run one statement (see :class:`~registry_bridge._database.Database`)."""
        try:
            return self._db.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise Duplicate(str(exc)) from None
            raise

    per_federation = False
    """SQLite has one write lock for the file: every transaction holds all of it."""

    def begin(self, *, whole: bool = False, federation: str | None = None) -> None:
        """``BEGIN IMMEDIATE``, after the lock file's ``flock`` (if any): the whole file,
        whatever *whole* and *federation* ask for.

        SQLite serialises writers of one file itself, but a writer that finds the file locked
        polls with sleeps of 1, 2, 5, 10 ... ms; a ``flock`` hands the lock over as soon as the
        other process releases it.
        """
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._locked = True
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._unlock()
            raise

    def lock(self, federation: str | None) -> None:
        """Nothing to do: :meth:`begin` already holds the whole file."""

    def commit(self) -> None:
        """``COMMIT``; the write lock is let go either way."""
        try:
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._unlock()

    def rollback(self) -> None:
        """``ROLLBACK`` (never raises)."""
        try:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._locked and self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._locked = False

    def savepoint(self) -> None:
        """``SAVEPOINT call``."""
        self._db.execute("SAVEPOINT call")

    def rollback_to_savepoint(self) -> None:
        """``ROLLBACK TO call`` and release it."""
        self._db.execute("ROLLBACK TO call")
        self._db.execute("RELEASE call")

    def release_savepoint(self) -> None:
        """``RELEASE call``."""
        self._db.execute("RELEASE call")

    def schema_version(self) -> int:
        """The file's schema version (0: empty; 1: made before versioning)."""
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if "schema_version" in tables:
            row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
            return int(row[0] or 0)
        return 1 if "federations" in tables else 0

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema in one transaction (see the Database interface)."""
        self.begin()
        try:
            before = self.schema_version()
            if before > SCHEMA_VERSION:
                check_version(self.shown, before, hint="")
            for version in range(before, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    self._db.execute(statement)
            if before < SCHEMA_VERSION:
                self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        except sqlite3.Error as exc:
            self.rollback()
            raise DatabaseError(f"cannot upgrade database {self.shown}: {exc}") from None
        except BaseException:
            self.rollback()
            raise
        self.commit()
        return before, SCHEMA_VERSION

    def after_import(self) -> None:
        """Nothing to do: SQLite gives a new row the largest id plus one."""

    def close(self) -> None:
        """Close the connection and the lock file."""
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
