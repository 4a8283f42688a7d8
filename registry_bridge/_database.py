"""The database under the registry's store: one interface, two backends.

:class:`~registry_bridge._store.RegistryStore` holds the registry's rules and speaks portable
SQL (``?`` placeholders, ``INSERT ... ON CONFLICT DO NOTHING``, ``RETURNING``) to a
:class:`Database`. A backend owns everything its engine does differently: opening and closing,
the schema and its versioned upgrades, transaction control and the locks that order write
transactions across every process using the database, and the translation of its driver's
errors. SQLite has one lock for the whole file, so its transactions run one at a time;
PostgreSQL locks only the federation a transaction works on (``registry_bridge._postgres``
says which lock each store call takes), so the calls of different federations run side by
side, in one registry process's group commits and across a fleet of registries.
:func:`open_database` picks the backend from the target: a
``postgresql://`` (or ``postgres://``) URL is PostgreSQL (``registry_bridge._postgres``),
anything else a SQLite file (``registry_bridge._sqlite``).

Schema versions: 1 is the schema before versioning (SQLite files made by older registries,
no ``schema_version`` table), 2 adds the ``schema_version`` row and the shared expiry-sweep
stamp, 3 the ``epochs`` lineage of federation time, 4 the ``relay`` queue (gossip relayed
between supernodes of different sites), 5 a supernode's members report on its registration,
6 the tag a keyed federation's node signs its epoch with, 7 a federation's ``generation``
(replaced at every reset) and its ``handovers`` (several epochs, one per source, in place of
``epochs``). :data:`SCHEMA_VERSION` is what this code needs.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from registry_bridge._errors import RegistryBridgeError

__all__ = [
    "HANDOVERS_FROM_EPOCHS",
    "SCHEMA_VERSION",
    "Busy",
    "Database",
    "DatabaseError",
    "Duplicate",
    "Rows",
    "Unreachable",
    "is_postgres_url",
    "open_database",
    "shown_target",
]

SCHEMA_VERSION = 7
"""The schema version this code reads and writes."""

HANDOVERS_FROM_EPOCHS = (
    "INSERT INTO handovers (federation_id, source, token, epoch, lineage, tag)"
    " SELECT f.id, '-', NULL, e.epoch, e.lineage, e.tag FROM epochs e"
    " JOIN federations f ON f.id = e.federation_id AND f.epoch = e.epoch",
    "INSERT INTO handovers (federation_id, source, token, epoch, lineage, tag)"
    " SELECT f.id, '', NULL, f.epoch, NULL, NULL FROM federations f"
    " WHERE f.epoch IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM handovers h WHERE h.federation_id = f.id)",
    "DROP TABLE epochs",
)
"""The upgrade to version 7 after both backends created ``handovers`` (portable SQL): each
federation's epoch becomes its one handover (a node's with its lineage and tag, source
``-``; else the registry's own, source ``''``), and ``epochs`` goes."""

_SCHEMES = ("postgresql://", "postgres://")
_USERINFO = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


class DatabaseError(RegistryBridgeError):
    """The database cannot be used: a bad URL, unreachable, refused credentials, a schema
    at another version. The message is one line, names the database without its password,
    and says what is wrong."""


class Unreachable(DatabaseError):
    """The database stopped answering while in use (connection lost, server restarting, the
    write lock not had in time). Nothing of the transaction under way was acknowledged."""


class Busy(Exception):
    """A lock asked for without waiting (:meth:`Database.lock` inside a group commit) is held
    by another transaction, or the database cancelled the statement to break a deadlock
    between two transactions. What the call did is undone (its savepoint, or its whole
    transaction); running it again in a transaction of its own, which may wait, is safe."""


class Duplicate(Exception):
    """A row was refused by a uniqueness constraint (the backend's driver error, translated)."""


class Rows(Protocol):
    """What :meth:`Database.execute` returns: a cursor over the result rows (tuples)."""

    @property
    def rowcount(self) -> int:
        """Rows changed by an ``INSERT``/``UPDATE``/``DELETE``."""

    def fetchone(self) -> Any:
        """The next row, or ``None``."""

    def fetchall(self) -> list[Any]:
        """The remaining rows."""

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows, one at a time."""


class Database(Protocol):
    """One registry database. Not thread-safe: the store calls it under its own lock.

    Every statement runs inside a transaction opened by :meth:`begin`. How transactions of
    all processes on the database are ordered is the backend's: SQLite takes the whole file
    at :meth:`begin` (``BEGIN IMMEDIATE`` plus an optional ``flock``), so they run one at a
    time and :meth:`lock` has nothing left to do; PostgreSQL takes a lock per federation
    (:meth:`lock`, or *federation* at :meth:`begin`) and the whole database only for what
    spans federations (*whole*). Either way each transaction sees every one committed before
    it took its lock.
    """

    shown: str
    """The database for messages: a file path, or the URL without its password."""

    per_federation: bool
    """Whether transactions lock single federations (PostgreSQL), so the store must say
    which one each works on and sweep expired registrations one federation at a time;
    ``False`` when :meth:`begin` already holds the whole database (SQLite)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Run one portable statement (``?`` placeholders); :class:`Duplicate` for a row a
        uniqueness constraint refused, :class:`Unreachable` if the database is gone,
        :class:`Busy` if the database cancelled it to break a deadlock."""

    def begin(self, *, whole: bool = False, federation: str | None = None) -> None:
        """Open a write transaction: holding the whole database if *whole* (nothing else
        runs beside it), else beside others, holding *federation*'s lock if given (waiting
        for it)."""

    def lock(self, federation: str | None) -> None:
        """Inside the open transaction, take *federation*'s lock (``None``: the whole
        database), held until the transaction ends. It is waited for only by a transaction
        that holds no lock yet (so two transactions never wait for each other); otherwise
        :class:`Busy` if another transaction holds it. The whole database is never waited
        for here: a transaction that needs it asks at :meth:`begin`."""

    def commit(self) -> None:
        """Commit the open transaction (durable for every later reader before it returns)."""

    def rollback(self) -> None:
        """Abandon the open transaction (never raises)."""

    def savepoint(self) -> None:
        """Mark a savepoint named ``call`` inside the open transaction."""

    def rollback_to_savepoint(self) -> None:
        """Undo everything since the savepoint and release it."""

    def release_savepoint(self) -> None:
        """Keep everything since the savepoint and release it."""

    def schema_version(self) -> int:
        """The version of the schema in the database: 0 when empty."""

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema to :data:`SCHEMA_VERSION`; return (before, after).
        :class:`DatabaseError` for a database newer than this code."""

    def after_import(self) -> None:
        """Inside the transaction of an import with explicit ids: let new rows get ids
        above the imported ones."""

    def close(self) -> None:
        """Release the connection(s)."""


def is_postgres_url(target: str | Path) -> bool:
    """Whether *target* names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(target, str) and target.lower().startswith(_SCHEMES)


def shown_target(target: str | Path) -> str:
    """*target* as messages show it: a path as is, a URL without its password (and without
    any ``password=`` query parameter)."""
    if not is_postgres_url(target):
        return str(target)
    url, _, query = _USERINFO.sub(r"\1@", str(target)).partition("?")
    kept = [p for p in query.split("&") if p and not p.lower().startswith("password=")]
    return url + ("?" + "&".join(kept) if kept else "")


def hide_secrets(message: str, target: str) -> str:
    """*message* on one line, with *target*'s password (if any) replaced by ``***``."""
    line = _USERINFO.sub(r"\1:***@", " ".join(message.split()))
    if is_postgres_url(target):
        try:
            parts = urllib.parse.urlsplit(target)
        except ValueError:
            return line
        secrets = [parts.password or ""]
        secrets += [v for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() == "password"]
        for secret in secrets:
            if secret:
                line = line.replace(secret, "***")
                line = line.replace(urllib.parse.quote(secret, safe=""), "***")
    return line


_VERSION_WORDS = {0: "empty (no registry schema)"}


def version_words(version: int) -> str:
    """A schema version for a message: ``empty (no registry schema)`` or ``version N``."""
    return _VERSION_WORDS.get(version, f"version {version}")


def check_version(shown: str, found: int, *, hint: str) -> None:
    """:class:`DatabaseError` unless *found* is :data:`SCHEMA_VERSION`; *hint* says how to
    fix an older schema."""
    if found == SCHEMA_VERSION:
        return
    if found > SCHEMA_VERSION:
        raise DatabaseError(
            f"database {shown} has schema version {found}, newer than this stagemesh"
            f" (version {SCHEMA_VERSION}); use a newer stagemesh"
        )
    raise DatabaseError(
        f"database {shown} is {version_words(found)}, this stagemesh needs version"
        f" {SCHEMA_VERSION}; {hint}"
    )


_PLACEHOLDER = re.compile(r"\?")


def pyformat(sql: str) -> str:
    """Portable *sql* (``?`` placeholders) in the ``%s`` style of drivers such as psycopg."""
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


def open_database(
    target: str | Path,
    *,
    synchronous: str = "NORMAL",
    lock_file: str | Path | None = None,
    pool_size: int = 4,
) -> Database:
    """Open the database *target* names (see the module's docstring), without touching its
    schema. *synchronous* and *lock_file* are SQLite's (see ``registry_bridge._sqlite``),
    *pool_size* PostgreSQL's (connections kept open at most). :class:`DatabaseError` if it
    cannot be opened."""
    if is_postgres_url(target):
        from registry_bridge._postgres import PostgresDatabase

        return PostgresDatabase(str(target), pool_size=pool_size)
    from registry_bridge._sqlite import SqliteDatabase

    return SqliteDatabase(target, synchronous=synchronous, lock_file=lock_file)
