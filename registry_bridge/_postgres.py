"""The registry's PostgreSQL backend: psycopg 3 with a connection pool.

Any number of registry processes, on any hosts, may use one database. A transaction locks
only what it works on, with transaction-level advisory locks (let go by ``COMMIT`` or
``ROLLBACK``, and by PostgreSQL itself when the session dies), so the calls of different
federations run side by side, across processes and within one process's group commits:

- **the whole database**, ``(7480, 1)`` (:data:`LOCK_KEY`): every transaction holds it
  *shared* from ``BEGIN``; the few that span federations hold it *exclusive* and so run
  alone, seeing every federation at rest: export and import
  (:meth:`~registry_bridge._store.RegistryStore.transaction`), ``check_consistency``, and
  ``stagemesh registry migrate``.
- **a federation**, ``(7481, k)`` with *k* a 32-bit hash of its name
  (:func:`federation_key`; two names with one hash share a lock, which is only slower):
  held exclusive by every call that reads more than one row of the federation or writes
  anything but a heartbeat. Named by the call: ``create_federation``, ``federation_id``,
  ``federation``, ``delete_federation``, ``reset_federation``, ``create_orchestra``,
  ``orchestra_id``, ``list_orchestras``, ``register`` (with ``create`` too: the name is
  locked before the federation exists, so two creators queue), ``unregister_path``,
  ``conductor``, ``set_conductor``, ``elapsed``, ``epoch``, ``epoch_lineage``,
  ``offer_epoch``. Found from a token first (the federation of a registration never
  changes; if the registration is gone meanwhile the call says so): ``unregister``, a
  heartbeat carrying a members report, ``relay_queue`` and ``relay_take`` (sender and
  recipient are of one federation). Every rule the store checks with a read before it
  writes concerns one federation (one supernode per orchestra, the conductor's
  compare-and-set and its term, the epoch and its lineage, the relay queue of a supernode,
  who holds a path), so holding that federation's lock makes the check and the write one
  step, exactly as the single lock did: two registry processes cannot grant two
  conductors. The compare-and-set is also fenced in its ``UPDATE ... WHERE conductor_term``.
- **no advisory lock** beyond the shared one: a plain heartbeat is one ``UPDATE`` of its
  registration's row (PostgreSQL's row lock orders it against a concurrent delete: after
  the delete it finds no row and says the token is unknown), and ``list_federations`` is one
  ``SELECT`` (one snapshot of every federation with its counts).
- **expiry sweeps** (at most one a sweep interval across all processes, chosen by a
  conditional ``UPDATE`` of the shared stamp row in a transaction of its own) list the
  federations with expired registrations or relayed frames, then sweep each in a
  transaction holding that federation's lock. A registration is deleted only if still
  expired (``DELETE ... WHERE last_seen < ?``: a heartbeat that committed meanwhile keeps
  it, PostgreSQL re-reading the row after the heartbeat's lock), so a sweep never drops
  what a heartbeat kept alive, and two sweeps never fight.

A transaction waits for a federation's lock only while it holds no other one (a call of
its own, or the first call of a group commit); any later lock in a group is only tried,
and a call that finds it taken (:class:`~registry_bridge._database.Busy`) is undone to its
savepoint and run again after the group in a transaction of its own. So two transactions
never wait for each other's advisory locks. Row locks can still meet (a group's heartbeat
of a registration another group is deleting, while that group heartbeats one the first
already touched): PostgreSQL breaks such a deadlock by cancelling one statement, which the
store treats the same way (``Busy``: run again alone). ``READ COMMITTED`` gives each
statement every transaction committed before it, so a call sees everything committed
before it took its lock. A transaction commits before the store answers
(``synchronous_commit`` as the server has it: ``on`` by default, durable across a crash of
the database server too).

Each session is told ``idle_in_transaction_session_timeout`` (a registry process frozen
while holding a lock, say stopped with SIGSTOP, is cut off after 10 s and its locks let go)
and ``lock_timeout`` (a transaction that waited 10 s for a lock gives up: 503, nothing
done). Connection failures become :class:`~registry_bridge._database.Unreachable` (the
store answers 503); a connection found dead when a transaction starts is replaced at once,
and the pool opens fresh ones for later transactions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg_pool

from registry_bridge._database import (
    HANDOVERS_FROM_EPOCHS,
    SCHEMA_VERSION,
    Busy,
    DatabaseError,
    Duplicate,
    Rows,
    Unreachable,
    check_version,
    hide_secrets,
    pyformat,
    shown_target,
)

__all__ = ["FEDERATION_LOCK", "LOCK_KEY", "PostgresDatabase", "federation_key"]

LOCK_KEY = (7480, 1)
"""The advisory lock of the whole database (two 32-bit keys: the registry's port and 1), the
same in every process using the database: every transaction holds it shared, the few that
span federations exclusive."""
FEDERATION_LOCK = 7481
"""The first key of a federation's advisory lock; the second is :func:`federation_key`."""


def federation_key(name: str) -> int:
    """The second key of federation *name*'s advisory lock: a signed 32-bit hash of the name,
    the same in every process and on every host (BLAKE2b, not Python's salted ``hash``)."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


_SESSION = {
    "application_name": "stagemesh-registry",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
_OPTIONS = "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=10000"

_WHOLE = f"{LOCK_KEY[0]}, {LOCK_KEY[1]}"
_BEGIN = f"BEGIN; SELECT pg_advisory_xact_lock_shared({_WHOLE})"
_BEGIN_WHOLE = f"BEGIN; SELECT pg_advisory_xact_lock({_WHOLE})"
_TRY_WHOLE = f"SELECT pg_try_advisory_xact_lock({_WHOLE})"

# _MIGRATIONS[v] takes the schema from version v to v + 1. Names sort byte by byte (COLLATE
# "C"), as SQLite's do, so both backends list things in the same order.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE federations (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name TEXT COLLATE "C" NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL,
            epoch DOUBLE PRECISION,
            version BIGINT NOT NULL DEFAULT 0,
            conductor_path TEXT COLLATE "C",
            conductor_node_id TEXT,
            conductor_host TEXT,
            conductor_port INTEGER,
            conductor_term BIGINT NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE orchestras (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            federation_id BIGINT NOT NULL REFERENCES federations(id) ON DELETE CASCADE,
            name TEXT COLLATE "C" NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (federation_id, name)
        )""",
        """CREATE TABLE registrations (
            token TEXT PRIMARY KEY,
            federation_id BIGINT NOT NULL REFERENCES federations(id) ON DELETE CASCADE,
            orchestra_id BIGINT NOT NULL REFERENCES orchestras(id) ON DELETE CASCADE,
            name TEXT COLLATE "C" NOT NULL,
            node_id TEXT,
            host TEXT NOT NULL,
            port INTEGER NOT NULL,
            supernode INTEGER NOT NULL,
            conductor INTEGER NOT NULL,
            heartbeat INTEGER NOT NULL,
            registered_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            UNIQUE (orchestra_id, name)
        )""",
        "CREATE INDEX registrations_federation ON registrations (federation_id)",
        "CREATE INDEX registrations_expiry ON registrations (heartbeat, last_seen)",
        "CREATE INDEX registrations_orchestra_supernode ON registrations (orchestra_id)"
        " WHERE supernode = 1",
        "CREATE INDEX registrations_federation_supernode ON registrations (federation_id)"
        " WHERE supernode = 1",
    ),
    (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (1)",
        "CREATE TABLE expiry_sweep (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " last DOUBLE PRECISION NOT NULL)",
        "INSERT INTO expiry_sweep (id, last) VALUES (1, 0)",
    ),
    (
        # the lineage of federation time each epoch belongs to (RegistryStore.offer_epoch)
        """CREATE TABLE epochs (
            federation_id BIGINT PRIMARY KEY REFERENCES federations(id) ON DELETE CASCADE,
            epoch DOUBLE PRECISION NOT NULL,
            lineage TEXT NOT NULL
        )""",
    ),
    (
        # gossip relayed to a registered supernode (registry_bridge._relaystore): gone with the
        # registration it is queued for
        """CREATE TABLE relay (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            recipient TEXT NOT NULL REFERENCES registrations(token) ON DELETE CASCADE,
            sender TEXT COLLATE "C" NOT NULL,
            frame BYTEA NOT NULL,
            queued_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX relay_recipient ON relay (recipient, id)",
        "CREATE INDEX relay_age ON relay (queued_at)",
    ),
    (
        # a supernode's last members report (registry_bridge._members) and when it came
        "ALTER TABLE registrations ADD COLUMN members TEXT",
        "ALTER TABLE registrations ADD COLUMN members_at DOUBLE PRECISION",
    ),
    (
        # the tag a node of a keyed federation signed its epoch and lineage with (opaque here)
        "ALTER TABLE epochs ADD COLUMN tag TEXT",
    ),
    (
        # the federation's generation (replaced at every reset) and its epoch handovers, one
        # per source (RegistryStore.offer_epoch), in place of epochs
        "ALTER TABLE federations ADD COLUMN generation TEXT",
        "UPDATE federations SET generation = substr(md5(random()::text || clock_timestamp()::text"
        " || id::text), 1, 24)",
        """CREATE TABLE handovers (
            federation_id BIGINT NOT NULL REFERENCES federations(id) ON DELETE CASCADE,
            source TEXT COLLATE "C" NOT NULL,
            token TEXT,
            epoch DOUBLE PRECISION NOT NULL,
            lineage TEXT,
            tag TEXT,
            PRIMARY KEY (federation_id, source)
        )""",
        *HANDOVERS_FROM_EPOCHS,
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


@functools.lru_cache(maxsize=512)
def _sql(portable: str) -> str:
    return pyformat(portable)


class PostgresDatabase:
    """One PostgreSQL database (see the module's docstring: which lock each call takes).

    Opening connects once to check the URL, the server and the credentials
    (:class:`DatabaseError` in one line otherwise, without the password), then keeps a pool
    of at most *pool_size* connections.
    """

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.shown = shown_target(url)
        self._url = url
        try:
            given = psycopg.conninfo.conninfo_to_dict(url)
        except (psycopg.Error, ValueError) as exc:
            raise DatabaseError(
                f"not a valid PostgreSQL URL {self.shown}: {hide_secrets(str(exc), url)}"
            ) from None
        extra = {k: v for k, v in _SESSION.items() if k not in given}
        options = f"{given.get('options', '')} {_OPTIONS}".strip()
        self._conninfo = psycopg.conninfo.make_conninfo(url, **extra, options=options)
        with self._connect():
            pass
        self._conn: psycopg.Connection[Any] | None = None
        # the federation locks the open transaction holds (keys), and the sets saved at the
        # savepoint (a savepoint rolled back lets go of the locks taken since)
        self._held: set[int] = set()
        self._saved: set[int] = set()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
            psycopg_pool.ConnectionPool(
                self._conninfo,
                kwargs={"autocommit": True},
                min_size=1,
                max_size=max(1, pool_size),
                # a transaction waits this long for a connection; only an unreachable server
                # makes it wait at all (one store uses one connection at a time)
                timeout=3.0,
                name="stagemesh-registry",
                open=True,
            )
        )

    def _fail(self, exc: BaseException, doing: str) -> DatabaseError:
        text = hide_secrets(str(exc), self._url).removeprefix("connection failed: ")
        return DatabaseError(f"cannot {doing} {self.shown}: {text or type(exc).__name__}")

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of its own (not the pool's), for the checks at start."""
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._fail(exc, "connect to") from None

    # ------------------------------------------------------------ transactions

    def _lost(self, exc: BaseException) -> Unreachable:
        text = hide_secrets(str(exc), self._url) or type(exc).__name__
        return Unreachable(f"database {self.shown} did not answer: {text}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Run one statement in the open transaction (see the Database interface)."""
        assert self._conn is not None, "execute outside a transaction"
        try:
            return self._conn.execute(_sql(sql), params)
        except psycopg.errors.UniqueViolation as exc:
            raise Duplicate(str(exc)) from None
        except psycopg.errors.DeadlockDetected as exc:
            raise Busy(str(exc)) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._lost(exc) from None

    per_federation = True
    """Transactions lock the federations they work on (see the module's docstring)."""

    def begin(self, *, whole: bool = False, federation: str | None = None) -> None:
        """Take a pooled connection, ``BEGIN`` and wait for the whole database's lock (shared,
        or exclusive if *whole*) and *federation*'s lock if given, in one round trip.

        A pooled connection found dead here (the server restarted, or cut it off) is
        replaced, once, after the pool tested its other connections: nothing has been done
        yet, so trying again is safe."""
        for attempt in (1, 2):
            try:
                self._conn = self._pool.getconn()
            except psycopg_pool.PoolTimeout as exc:
                raise self._lost(exc) from None
            try:
                begin = _BEGIN_WHOLE if whole else _BEGIN
                if federation is not None:
                    key = federation_key(federation)
                    begin += f"; SELECT pg_advisory_xact_lock({FEDERATION_LOCK}, {key})"
                    self._held = {key}
                self._conn.execute(begin)
                return
            except BaseException as exc:
                lost = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                if lost and not isinstance(exc, psycopg.errors.LockNotAvailable):
                    self._conn.close()  # the pool drops it
                self.rollback()
                if not lost:
                    raise
                if attempt == 2 or isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise self._lost(exc) from None
                # the others in the pool may be dead too (the server restarted): test them
                with contextlib.suppress(psycopg.Error, psycopg_pool.PoolTimeout):
                    self._pool.check()

    def lock(self, federation: str | None) -> None:
        """Take *federation*'s lock for the rest of the transaction (nothing to do if held):
        wait for it if the transaction holds no federation's lock yet, else only try
        (:class:`Busy` if another transaction holds it). ``None`` tries the whole database
        exclusive (never waited for here: a transaction that needs it asks at
        :meth:`begin`, holding nothing yet)."""
        if federation is None:
            if not self.execute(_TRY_WHOLE).fetchone()[0]:
                raise Busy("another transaction is using the database")
            return
        key = federation_key(federation)
        if key in self._held:
            return
        if not self._held:
            self.execute(f"SELECT pg_advisory_xact_lock({FEDERATION_LOCK}, {key})")
        else:
            got = self.execute(f"SELECT pg_try_advisory_xact_lock({FEDERATION_LOCK}, {key})")
            if not got.fetchone()[0]:
                raise Busy(f"another transaction holds federation {federation!r}")
        self._held.add(key)

    def commit(self) -> None:
        """``COMMIT`` and give the connection back."""
        try:
            self.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self._put()

    def rollback(self) -> None:
        """``ROLLBACK`` and give the connection back (never raises)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("ROLLBACK")
        self._put()

    def _put(self) -> None:
        self._held = set()
        conn, self._conn = self._conn, None
        if conn is not None:
            # a broken connection is closed and replaced by the pool
            with contextlib.suppress(Exception):
                self._pool.putconn(conn)

    def savepoint(self) -> None:
        """``SAVEPOINT call``."""
        self.execute("SAVEPOINT call")
        self._saved = set(self._held)

    def rollback_to_savepoint(self) -> None:
        """``ROLLBACK TO SAVEPOINT call`` and release it."""
        self.execute("ROLLBACK TO SAVEPOINT call")
        self.execute("RELEASE SAVEPOINT call")
        self._held = set(self._saved)

    def release_savepoint(self) -> None:
        """``RELEASE SAVEPOINT call``."""
        self.execute("RELEASE SAVEPOINT call")

    # ------------------------------------------------------------ schema

    @staticmethod
    def _version(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT to_regclass('schema_version') IS NOT NULL,"
            " to_regclass('federations') IS NOT NULL"
        ).fetchone()
        assert row is not None
        if row[0]:
            got = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            return int(got[0] or 0) if got is not None else 0
        return 1 if row[1] else 0

    def schema_version(self) -> int:
        """The database's schema version (0: no registry tables)."""
        try:
            with self._pool.connection() as conn:
                return self._version(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._fail(exc, "read the schema version of") from None

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema in one transaction, holding the whole database (two
        ``migrate`` at once: the second finds the work done)."""
        try:
            with self._connect() as conn:
                conn.execute(_BEGIN_WHOLE)
                before = self._version(conn)
                if before > SCHEMA_VERSION:
                    check_version(self.shown, before, hint="")
                for version in range(before, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                if before < SCHEMA_VERSION:
                    conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._fail(exc, "create or upgrade the schema of") from None
        return before, SCHEMA_VERSION

    def after_import(self) -> None:
        """Move the id sequences past the imported ids."""
        for table in ("federations", "orchestras"):
            self.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"
            )

    def close(self) -> None:
        """Roll back anything open and close the pool's connections."""
        self.rollback()
        self._pool.close()
