"""The registry's store: federations, orchestras, registrations and the conductor.

The store is plain blocking code over one database (:mod:`registry_bridge._database`: a
SQLite file, or PostgreSQL for any number of registry processes on any hosts). Every public
method is one transaction that is committed before it returns, so an answer the HTTP layer
sends after a call has reached the database; a process killed with ``kill -9`` afterwards
loses nothing it acknowledged. Each call holds the lock of what it works on across every
process using the database (SQLite: the whole file; PostgreSQL: its federation, see
``registry_bridge._postgres``), so each rule below is checked and applied as one step.
:class:`AsyncStore` runs the calls from trio or asyncio on a worker thread; calls queued
together share one transaction (group commit), each in its own savepoint, and none is
answered before that transaction committed.

Time is injected (``clock``, wall-clock seconds) so expiry can be tested without waiting.

Ownership: a registration made through the JSON API is owned by its token (and, when it
gave one, its ``node_id``): only that token removes it, only the same ``node_id`` registers
that path again, and only the registration holding the conductor releases or hands it over.
Registrations made through the legacy text API have no credential (the 2012 protocol has
none): anyone may refresh, replace or remove them, never a JSON one, and a JSON conductor
claim takes the post from a legacy holder.

Errors (all :class:`StoreError`, carrying the HTTP status the layer above should use)::

    StoreError (400, bad input)
    +-- Forbidden (403)
    +-- NotFound (404)
    +-- Conflict (409, may carry a ``detail`` mapping)
    +-- Unavailable (503, the database stopped answering; nothing was done)

The SQL here is portable (``?`` placeholders); each backend module holds its schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import trio

from registry_bridge import _relaystore
from registry_bridge._database import (
    Busy,
    Database,
    Duplicate,
    Unreachable,
    check_version,
    open_database,
)
from registry_bridge._errors import (
    Conflict,
    Forbidden,
    NotFound,
    StoreError,
    Unavailable,
    checked_name,
)
from registry_bridge._members import (
    DuplicateMember,
    ForeignMember,
    InvalidReport,
    check_members,
    decode_members,
    encode_members,
)
from registry_bridge._openapi import MAX_CLOCK_READING, MAX_HANDOVERS

__all__ = [
    "DEFAULT_LEGACY_TTL",
    "DEFAULT_TTL",
    "AsyncStore",
    "Conflict",
    "Forbidden",
    "NotFound",
    "RegistryStore",
    "StoreError",
    "Unavailable",
    "handover_source",
    "is_epoch_tag",
    "is_generation",
    "is_lineage",
    "new_generation",
]

DEFAULT_TTL = 30.0
"""Seconds without a heartbeat after which a JSON registration expires."""
DEFAULT_LEGACY_TTL = 6 * 3600.0
"""Seconds after its last ``register`` after which a legacy (2012 API) registration expires:
longer than a concert or a conference day, so a 2012 client that registers once at start is
listed all along, and a crashed laptop goes away by itself."""

_P = ParamSpec("_P")
_T = TypeVar("_T")

# An epoch handover (RegistryStore.offer_epoch) names the lineage of federation time it
# belongs to: 1-64 of these characters.
_LINEAGE_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._-")


def is_lineage(value: object) -> bool:
    """Whether *value* names a lineage of federation time (1-64 letters, digits, '.', '_',
    '-'): the registry stores it and shows it to every client."""
    return isinstance(value, str) and 1 <= len(value) <= 64 and set(value) <= _LINEAGE_CHARS


def is_epoch_tag(value: object) -> bool:
    """Whether *value* has the shape of an epoch handover's tag (1-128 letters, digits, '.',
    '_', '-'): the registry keeps it as it came and hands it back with the epoch; the nodes,
    which hold the federation key, check it."""
    return isinstance(value, str) and 1 <= len(value) <= 128 and set(value) <= _LINEAGE_CHARS


_ATTEMPTS = 3
"""Times a call runs at most when the database breaks a deadlock by cancelling it."""


@dataclasses.dataclass(frozen=True)
class _Scope:
    """What a store call works on, so a backend that locks single federations (PostgreSQL,
    see ``registry_bridge._postgres``) knows which lock to take: a federation by name, the
    federation of a registration token, the *whole* database, or none of them (a call that
    reads or writes one row, ordered by the database's row locks)."""

    federation: str | None = None
    token: str | None = None
    whole: bool = False


def _federation(name: object) -> _Scope:
    """The scope of a call on federation *name* (a name that is not a string locks nothing:
    the call refuses it before it reads anything)."""
    return _Scope(federation=name if isinstance(name, str) else None)


def _registration(token: str) -> _Scope:
    """The scope of a call on the registration holding *token* (its federation's lock)."""
    return _Scope(token=token)


_WHOLE = _Scope(whole=True)
_ONE_ROW = _Scope()

_FED_COLUMNS = (
    "id, name, created_at, epoch, version, conductor_path, conductor_node_id, conductor_host,"
    " conductor_port, conductor_term, generation"
)


def is_generation(value: object) -> bool:
    """Whether *value* has the shape of a federation's generation (see
    :func:`new_generation`; an imported one is checked with this)."""
    return is_epoch_tag(value)


def new_generation() -> str:
    """A fresh generation of a federation: random, made when the federation is created and
    again at every reset. Keyed nodes sign it with the epoch they hand over, so a handover
    made before a reset never verifies after it."""
    return secrets.token_hex(12)


def handover_source(client: str) -> str:
    """Whom an epoch handover is counted against (:meth:`RegistryStore.offer_epoch` keeps one
    per source): the client's address, an IPv6 address by its /64 (one host holds a whole
    /64), an IPv4-mapped one as IPv4."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:64] or "-"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


_OWN = ""  # the source of the registry's own epoch (set by a first registration)

_REG_COLUMNS = (
    "r.token, o.name, r.name, r.node_id, r.host, r.port, r.supernode, r.conductor,"
    " r.heartbeat, r.registered_at, r.last_seen"
)


_name = checked_name


def _reported(by: str, text: str | None, at: float | None) -> list[dict[str, Any]]:
    """The members report *by* (a supernode's path) made at *at*, each member marked with
    who reported it and when."""
    if at is None:
        return []
    return [
        {
            "path": m.get("path"),
            "state": m.get("state"),
            "posts": m.get("posts", []),
            "reported_by": by,
            "reported_at": at,
        }
        for m in decode_members(text)
    ]


def _entry(federation: str, row: tuple[Any, ...]) -> dict[str, Any]:
    _, orchestra, name, node_id, host, port, supernode, conductor, hb, reg_at, seen = row
    return {
        "federation": federation,
        "orchestra": orchestra,
        "name": name,
        "path": f"/{orchestra}/{name}",
        "node_id": node_id,
        "host": host,
        "port": port,
        "supernode": bool(supernode),
        "conductor": bool(conductor),
        "heartbeat": bool(hb),
        "registered_at": reg_at,
        "last_seen": seen,
    }


class RegistryStore:
    """The registry's state in one database; every method is one committed transaction.

    *database* is a SQLite file's path or a ``postgresql://`` URL (see
    :func:`~registry_bridge._database.open_database`, which also takes *synchronous* and
    *lock_file* for SQLite and *pool_size* for PostgreSQL). With *create* (the default) the
    schema is created or upgraded on opening; without, a database whose schema is not the
    current version is refused (:class:`~registry_bridge._database.DatabaseError`, saying
    to run ``stagemesh registry migrate``).

    Thread-safe: calls are serialised by a lock (the connection is shared by threads).
    Several processes may share one database (``stagemesh registry --workers N``, or
    registries on several hosts over one PostgreSQL): the backend's locks order their
    transactions (SQLite one at a time, PostgreSQL one at a time per federation). *ttl* is
    how long a heartbeat registration lives without a heartbeat; *legacy_ttl* how long one
    made through the legacy text API (which has no heartbeat) lives after its last
    ``register``.
    """

    def __init__(
        self,
        database: str | Path,
        *,
        ttl: float = DEFAULT_TTL,
        legacy_ttl: float = DEFAULT_LEGACY_TTL,
        clock: Callable[[], float] = time.time,
        synchronous: str = "NORMAL",
        lock_file: str | Path | None = None,
        pool_size: int = 4,
        create: bool = True,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        if not legacy_ttl > 0:
            raise ValueError(f"legacy_ttl must be positive, not {legacy_ttl!r}")
        self.ttl = float(ttl)
        self.legacy_ttl = float(legacy_ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sweep = float("-inf")
        self._group_thread: int | None = None
        self._db: Database = open_database(
            database, synchronous=synchronous, lock_file=lock_file, pool_size=pool_size
        )
        try:
            if create:
                self._db.migrate()
            else:
                check_version(
                    self._db.shown,
                    self._db.schema_version(),
                    hint=f"run: stagemesh registry migrate --db {self._db.shown}",
                )
        except BaseException:
            self._db.close()
            raise

    @property
    def shown(self) -> str:
        """The database for messages: a path, or the URL without its password."""
        return self._db.shown

    def now(self) -> float:
        """The store's clock (wall-clock seconds); federation time is ``now() - epoch``."""
        return self._clock()

    def transaction(self, fn: Callable[[Database, float], _T]) -> _T:
        """Run ``fn(database, now)`` as one transaction of the store (under its write lock,
        committed before it returns, rolled back if *fn* raises): for work on every table at
        once, such as export and import (``registry_bridge._transfer``)."""
        return self._tx(lambda now: fn(self._db, now), _WHOLE)

    def close(self) -> None:
        """Close the database connection (everything is already committed)."""
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------- plumbing

    def _tx(self, fn: Callable[[float], _T], scope: _Scope) -> _T:
        """Run ``fn(now)`` as one transaction holding *scope*'s lock (inside
        :meth:`run_group`: one savepoint of the group's transaction); a call the database
        cancelled to break a deadlock runs again, at most :data:`_ATTEMPTS` times."""
        if self._group_thread == threading.get_ident():
            # Inside run_group: one savepoint of the group's transaction, so a failing call
            # undoes only its own changes.
            self._db.savepoint()
            try:
                self._take(scope)
                result = fn(self._clock())
            except BaseException:
                self._db.rollback_to_savepoint()
                raise
            self._db.release_savepoint()
            return result
        with self._lock:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    self._begin(whole=scope.whole, federation=scope.federation)
                    try:
                        if scope.token is not None:
                            self._take(scope)
                        result = fn(self._clock())
                    except BaseException:
                        self._db.rollback()
                        raise
                    self._db.commit()
                except Unreachable as exc:
                    raise Unavailable(str(exc)) from None
                except Busy as exc:
                    if attempt == _ATTEMPTS:
                        raise Unavailable(str(exc)) from None
                    continue
                return result
        raise AssertionError("not reached")

    def _take(self, scope: _Scope) -> None:
        """Inside the open transaction, take *scope*'s lock (a backend that holds the whole
        database from ``begin`` has nothing to do); :class:`Busy` from a group's transaction
        that would have to wait while it holds another federation's lock."""
        if not self._db.per_federation:
            return
        if scope.whole:
            self._db.lock(None)
        elif scope.token is not None:
            row = self._db.execute(
                "SELECT f.name FROM registrations r JOIN federations f"
                " ON f.id = r.federation_id WHERE r.token = ?",
                (scope.token,),
            ).fetchone()
            if row is not None:  # else the call finds no registration and says so
                self._db.lock(str(row[0]))
        elif scope.federation is not None:
            self._db.lock(scope.federation)

    def _begin(self, *, whole: bool = False, federation: str | None = None) -> None:
        """Open a transaction (see :meth:`Database.begin`), sweeping first if it is time."""
        if self._db.per_federation:
            now = self._clock()
            if now - self._last_sweep >= self._sweep_every():
                self._sweep_apart(now)
                self._last_sweep = now
            self._db.begin(whole=whole, federation=federation)
            return
        self._db.begin()
        now = self._clock()
        if now - self._last_sweep >= self._sweep_every():
            try:
                self._sweep(now)
            except BaseException:
                self._db.rollback()
                raise
            self._last_sweep = now

    def _sweep_every(self) -> float:
        return min(1.0, self.ttl / 4)

    def run_group(self, calls: Sequence[Callable[[], _T]]) -> list[tuple[bool, Any]]:
        """Run *calls* (each one call of a public method) in ONE transaction (group commit).

        Each call runs in its own savepoint: one that raises leaves no trace and does not
        disturb the others. Returns ``(True, value)`` or ``(False, exception)`` per call, in
        order, only after the transaction committed; if the commit itself fails every call
        gets that error (nothing of the group was acknowledged, nothing of it was stored).
        """
        results: list[tuple[bool, Any]] = []
        with self._lock:
            try:
                self._begin()
            except Exception as exc:
                return [(False, _unavailable(exc))] * len(calls)
            self._group_thread = threading.get_ident()
            try:
                for call in calls:
                    try:
                        results.append((True, call()))
                    except Exception as exc:
                        results.append((False, exc))
            finally:
                self._group_thread = None
            try:
                self._db.commit()
            except Exception as exc:
                return [(False, _unavailable(exc))] * len(calls)
        # a call that found a federation's lock taken (or was cancelled to break a deadlock)
        # left no trace: it runs again in a transaction of its own, which may wait
        for i, (ok, value) in enumerate(results):
            if not ok and isinstance(value, Busy):
                try:
                    results[i] = (True, calls[i]())
                except Exception as exc:
                    results[i] = (False, exc)
        return [(ok, _unavailable(value) if not ok else value) for ok, value in results]

    def _sweep_turn(self, now: float) -> bool:
        """Whether this process sweeps now: not if another process sharing the database did
        so less than a sweep interval ago (by this host's clock; a stamp in this host's
        future counts as old, so a fast clock elsewhere cannot stop the sweeps). One
        conditional ``UPDATE`` of the shared stamp: of two processes at once, one sweeps."""
        every = self._sweep_every()
        turn = self._db.execute(
            "UPDATE expiry_sweep SET last = ? WHERE id = 1 AND NOT (last > ? AND last <= ?)",
            (now, now - every, now),
        )
        return turn.rowcount == 1

    def _sweep(self, now: float) -> None:
        """Drop expired registrations and relayed frames, in the transaction under way (a
        backend holding the whole database), if it is this process's turn."""
        if not self._sweep_turn(now):
            return
        _relaystore.sweep(self._db, now)
        self._drop_expired(now, None)

    def _sweep_apart(self, now: float) -> None:
        """The sweep of a backend that locks single federations, in transactions of its own
        before the caller's: the turn and the list of federations with something expired,
        then each of those under its own lock (a federation whose sweep the database
        cancelled to break a deadlock is swept next time)."""
        self._db.begin()
        try:
            names: list[str] = []
            if self._sweep_turn(now):
                names = [
                    str(name)
                    for (name,) in self._db.execute(
                        "SELECT f.name FROM registrations r JOIN federations f"
                        " ON f.id = r.federation_id WHERE r.heartbeat = 1 AND r.last_seen < ?"
                        " UNION SELECT f.name FROM registrations r JOIN federations f"
                        " ON f.id = r.federation_id WHERE r.heartbeat = 0 AND r.last_seen < ?"
                        " UNION SELECT f.name FROM relay q JOIN registrations r"
                        " ON r.token = q.recipient JOIN federations f ON f.id = r.federation_id"
                        " WHERE q.queued_at < ?",
                        (now - self.ttl, now - self.legacy_ttl, now - _relaystore.FRAME_TTL),
                    )
                ]
        except BaseException:
            self._db.rollback()
            raise
        self._db.commit()
        for name in names:
            self._db.begin(federation=name)
            try:
                row = self._db.execute(
                    "SELECT id FROM federations WHERE name = ?", (name,)
                ).fetchone()
                if row is not None:
                    _relaystore.sweep(self._db, now, int(row[0]))
                    self._drop_expired(now, int(row[0]))
            except Busy:
                self._db.rollback()
                continue
            except BaseException:
                self._db.rollback()
                raise
            self._db.commit()

    def _drop_expired(self, now: float, fed_id: int | None) -> None:
        """Drop the registrations (of federation *fed_id*, or all) expired at *now*."""
        cutoffs = {1: now - self.ttl, 0: now - self.legacy_ttl}
        where = "" if fed_id is None else " AND federation_id = ?"
        by = () if fed_id is None else (fed_id,)
        rows = self._db.execute(
            f"SELECT token, heartbeat FROM registrations WHERE heartbeat = 1 AND last_seen < ?"
            f"{where} UNION ALL SELECT token, heartbeat FROM registrations WHERE heartbeat = 0"
            f" AND last_seen < ?{where}",
            (cutoffs[1], *by, cutoffs[0], *by),
        ).fetchall()
        for token, heartbeat in rows:
            self._drop(token, seen_before=cutoffs[int(heartbeat)])

    def _drop(self, token: str, *, seen_before: float | None = None) -> None:
        """Delete one registration, releasing the conductor if it held it; with
        *seen_before*, only if it was last seen before then (an expired one: a heartbeat that
        committed meanwhile, which takes no federation lock, keeps it)."""
        row = self._db.execute(
            "SELECT r.federation_id, o.name, r.name, r.conductor FROM registrations r"
            " JOIN orchestras o ON o.id = r.orchestra_id WHERE r.token = ?",
            (token,),
        ).fetchone()
        if row is None:
            return
        fed_id, orchestra, name, conductor = row
        if seen_before is None:
            self._db.execute("DELETE FROM registrations WHERE token = ?", (token,))
        elif (
            self._db.execute(
                "DELETE FROM registrations WHERE token = ? AND last_seen < ?",
                (token, seen_before),
            ).rowcount
            != 1
        ):
            return
        if conductor:
            self._db.execute(
                "UPDATE federations SET conductor_path = NULL, conductor_node_id = NULL,"
                " conductor_host = NULL, conductor_port = NULL,"
                " conductor_term = conductor_term + 1"
                " WHERE id = ? AND conductor_path = ?",
                (fed_id, f"/{orchestra}/{name}"),
            )
        self._db.execute("UPDATE federations SET version = version + 1 WHERE id = ?", (fed_id,))

    def _fed(self, name: object) -> tuple[Any, ...]:
        fed = _name(name, "federation")
        row = self._db.execute(
            f"SELECT {_FED_COLUMNS} FROM federations WHERE name = ?", (fed,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no federation {fed!r}")
        return tuple(row)

    def _orch_id(self, fed_id: int, fed: str, name: object) -> int:
        orch = _name(name, "orchestra")
        row = self._db.execute(
            "SELECT id FROM orchestras WHERE federation_id = ? AND name = ?", (fed_id, orch)
        ).fetchone()
        if row is None:
            raise NotFound(f"no orchestra {orch!r} in federation {fed!r}")
        return int(row[0])

    @staticmethod
    def _conductor(fed: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "holder": fed[5],
            "node_id": fed[6],
            "host": fed[7],
            "port": fed[8],
            "term": fed[9],
        }

    @staticmethod
    def _elapsed(fed: tuple[Any, ...], now: float) -> float:
        return 0.0 if fed[3] is None else max(0.0, now - fed[3])

    def _summary(
        self, fed: tuple[Any, ...], now: float, counts: tuple[Any, ...] | None = None
    ) -> dict[str, Any]:
        """The federation *fed* (a row of :data:`_FED_COLUMNS`) with its counts of
        orchestras and registrations (read now unless given)."""
        if counts is None:
            counts = self._db.execute(
                "SELECT (SELECT count(*) FROM orchestras WHERE federation_id = ?),"
                " (SELECT count(*) FROM registrations WHERE federation_id = ?)",
                (fed[0], fed[0]),
            ).fetchone()
            assert counts is not None
        return {
            "id": fed[0],
            "name": fed[1],
            "created_at": fed[2],
            "epoch": fed[3],
            "elapsed": self._elapsed(fed, now),
            "version": fed[4],
            "orchestras": counts[0],
            "registrations": counts[1],
            "conductor": self._conductor(fed),
        }

    # ----------------------------------------------------------------- federations

    def create_federation(self, name: object) -> dict[str, Any]:
        """Create a federation; :class:`Conflict` if the name exists."""
        fed = _name(name, "federation")

        def run(now: float) -> dict[str, Any]:
            try:
                self._db.execute(
                    "INSERT INTO federations (name, created_at, generation) VALUES (?, ?, ?)",
                    (fed, now, new_generation()),
                )
            except Duplicate:
                raise Conflict(f"federation {fed!r} already exists") from None
            return self._summary(self._fed(fed), now)

        return self._tx(run, _federation(fed))

    def federation_id(self, name: object, *, create: bool = False) -> int:
        """Return the federation's id, ``-1`` if absent (created first when *create*)."""
        fed = _name(name, "federation")

        def run(now: float) -> int:
            row = self._db.execute("SELECT id FROM federations WHERE name = ?", (fed,)).fetchone()
            if row is not None:
                return int(row[0])
            if not create:
                return -1
            cur = self._db.execute(
                "INSERT INTO federations (name, created_at, generation) VALUES (?, ?, ?)"
                " RETURNING id",
                (fed, now, new_generation()),
            )
            return int(cur.fetchone()[0])

        return self._tx(run, _federation(fed))

    def list_federations(self) -> list[dict[str, Any]]:
        """Every federation with its counts, by name."""

        def run(now: float) -> list[dict[str, Any]]:
            # one statement: one snapshot of every federation, without locking any
            rows = self._db.execute(
                f"SELECT {_FED_COLUMNS}, (SELECT count(*) FROM orchestras o"
                " WHERE o.federation_id = f.id), (SELECT count(*) FROM registrations r"
                " WHERE r.federation_id = f.id) FROM federations f ORDER BY name"
            ).fetchall()
            return [self._summary(tuple(row[:-2]), now, tuple(row[-2:])) for row in rows]

        return self._tx(run, _ONE_ROW)

    def federation(self, name: object) -> dict[str, Any]:
        """The whole view of one federation: orchestras with their registrations, conductor."""

        def run(now: float) -> dict[str, Any]:
            fed = self._fed(name)
            view = self._summary(fed, now)
            orchestras: dict[str, dict[str, Any]] = {}
            for oname, created in self._db.execute(
                "SELECT name, created_at FROM orchestras WHERE federation_id = ? ORDER BY name",
                (fed[0],),
            ):
                orchestras[oname] = {
                    "name": oname,
                    "created_at": created,
                    "supernode": None,
                    "nodes": [],
                    "members": [],
                }
            for row in self._db.execute(
                f"SELECT {_REG_COLUMNS}, r.members, r.members_at FROM registrations r"
                " JOIN orchestras o ON o.id = r.orchestra_id WHERE r.federation_id = ?"
                " ORDER BY o.name, r.name",
                (fed[0],),
            ):
                entry = _entry(fed[1], row[:-2])
                life = self.ttl if entry["heartbeat"] else self.legacy_ttl
                entry["expires_at"] = entry["last_seen"] + life
                orch = orchestras[entry["orchestra"]]
                orch["nodes"].append(entry)
                if entry["supernode"]:
                    orch["supernode"] = entry["path"]
                    orch["members"] = _reported(entry["path"], row[-2], row[-1])
            view["orchestras"] = list(orchestras.values())
            view["ttl"] = self.ttl
            view["legacy_ttl"] = self.legacy_ttl
            return view

        return self._tx(run, _federation(name))

    def delete_federation(self, name: object) -> None:
        """Delete a federation and everything in it; :class:`NotFound` if absent."""

        def run(now: float) -> None:
            fed = self._fed(name)
            self._db.execute("DELETE FROM registrations WHERE federation_id = ?", (fed[0],))
            self._db.execute("DELETE FROM orchestras WHERE federation_id = ?", (fed[0],))
            self._db.execute("DELETE FROM federations WHERE id = ?", (fed[0],))

        self._tx(run, _federation(name))

    def reset_federation(self, name: object) -> dict[str, Any]:
        """Start a federation afresh: drop its registrations, release the conductor (the term
        still increases, so fencing stays valid), clear the epoch with every handover and
        start a new generation (no tag signed before verifies after); orchestras stay."""

        def run(now: float) -> dict[str, Any]:
            fed = self._fed(name)
            self._db.execute("DELETE FROM registrations WHERE federation_id = ?", (fed[0],))
            self._db.execute("DELETE FROM handovers WHERE federation_id = ?", (fed[0],))
            self._db.execute(
                "UPDATE federations SET epoch = NULL, version = version + 1,"
                " conductor_path = NULL, conductor_node_id = NULL, conductor_host = NULL,"
                " conductor_port = NULL, conductor_term = conductor_term + 1, generation = ?"
                " WHERE id = ?",
                (new_generation(), fed[0]),
            )
            return self._summary(self._fed(name), now)

        return self._tx(run, _federation(name))

    # ----------------------------------------------------------------- orchestras

    def create_orchestra(self, federation: object, name: object) -> dict[str, Any]:
        """Create an orchestra; :class:`NotFound` without the federation, :class:`Conflict`
        if it exists."""
        orch = _name(name, "orchestra")

        def run(now: float) -> dict[str, Any]:
            fed = self._fed(federation)
            try:
                cur = self._db.execute(
                    "INSERT INTO orchestras (federation_id, name, created_at) VALUES (?, ?, ?)"
                    " RETURNING id",
                    (fed[0], orch, now),
                )
            except Duplicate:
                raise Conflict(f"orchestra {orch!r} already exists in {fed[1]!r}") from None
            oid = int(cur.fetchone()[0])
            self._db.execute("UPDATE federations SET version = version + 1 WHERE id = ?", (fed[0],))
            return {"id": oid, "federation": fed[1], "name": orch, "created_at": now}

        return self._tx(run, _federation(federation))

    def orchestra_id(self, federation: object, name: object, *, create: bool = False) -> int:
        """Return the orchestra's id, ``-1`` if absent (created first when *create*).
        :class:`NotFound` if the federation does not exist."""
        orch = _name(name, "orchestra")

        def run(now: float) -> int:
            fed = self._fed(federation)
            row = self._db.execute(
                "SELECT id FROM orchestras WHERE federation_id = ? AND name = ?", (fed[0], orch)
            ).fetchone()
            if row is not None:
                return int(row[0])
            if not create:
                return -1
            cur = self._db.execute(
                "INSERT INTO orchestras (federation_id, name, created_at) VALUES (?, ?, ?)"
                " RETURNING id",
                (fed[0], orch, now),
            )
            return int(cur.fetchone()[0])

        return self._tx(run, _federation(federation))

    def list_orchestras(self, federation: object) -> list[dict[str, Any]]:
        """The orchestras of a federation with their registration counts."""

        def run(now: float) -> list[dict[str, Any]]:
            fed = self._fed(federation)
            return [
                {"id": oid, "federation": fed[1], "name": n, "created_at": c, "registrations": k}
                for oid, n, c, k in self._db.execute(
                    "SELECT o.id, o.name, o.created_at,"
                    " (SELECT count(*) FROM registrations r WHERE r.orchestra_id = o.id)"
                    " FROM orchestras o WHERE o.federation_id = ? ORDER BY o.name",
                    (fed[0],),
                )
            ]

        return self._tx(run, _federation(federation))

    # ----------------------------------------------------------------- registrations

    def register(
        self,
        federation: object,
        orchestra: object,
        name: object,
        *,
        host: str,
        port: int,
        supernode: bool = False,
        conductor: bool = False,
        node_id: str | None = None,
        heartbeat: bool = True,
        create: bool = False,
        takeover: bool = False,
    ) -> dict[str, Any]:
        """Register ``/<orchestra>/<name>`` and return what the node needs to know.

        *heartbeat* ``True`` is a JSON registration (owned by the token it gets, expiring
        ``ttl`` after its last heartbeat), ``False`` a legacy one (no credential, expiring
        ``legacy_ttl`` after its last registration). A path held by a JSON registration is
        refused (:class:`Conflict`) to a legacy one, and to a JSON one unless it gives the same
        ``node_id``; a legacy registration of the path is simply replaced.

        The supernode claim is granted when the orchestra has no supernode (or *takeover*,
        which demotes the old one); the conductor claim when the federation has no conductor,
        this path holds it, or (a JSON claim only) a legacy registration holds it. A lost claim
        registers the node without it (``supernode_granted`` / ``conductor_granted`` false).
        """
        node = _name(name, "name")
        orch_name = _name(orchestra, "orchestra")
        path = f"/{orch_name}/{node}"

        def run(now: float) -> dict[str, Any]:
            if create:
                fed_name = _name(federation, "federation")
                self._db.execute(
                    "INSERT INTO federations (name, created_at, generation) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (fed_name, now, new_generation()),
                )
                fid = self._fed(fed_name)[0]
                self._db.execute(
                    "INSERT INTO orchestras (federation_id, name, created_at)"
                    " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (fid, orch_name, now),
                )
            fed = self._fed(federation)
            fed_id = fed[0]
            orch_id = self._orch_id(fed_id, fed[1], orch_name)
            old = self._db.execute(
                "SELECT token, node_id, host, port, heartbeat, registered_at FROM registrations"
                " WHERE orchestra_id = ? AND name = ?",
                (orch_id, node),
            ).fetchone()
            registered_at = now
            if old is not None:
                if old[4]:  # held with a token
                    who = f"by node {old[1]}" if old[1] is not None else "without a node id"
                    if not heartbeat:
                        raise Conflict(
                            f"{path} is registered {who} at {old[2]}:{old[3]} through the JSON"
                            " API (with a token); a legacy register cannot replace it"
                        )
                    if old[1] is None or node_id != old[1]:
                        raise Conflict(
                            f"{path} is already registered {who} at {old[2]}:{old[3]}; only the"
                            " same node id registers it again (or wait until it expires)"
                        )
                    registered_at = old[5]
                elif not heartbeat and old[2] == host:
                    registered_at = old[5]  # a 2012 client refreshing its registration
            holder = fed[5]
            conductor_granted = conductor and (holder is None or holder == path)
            if conductor and not conductor_granted:
                held = self._registration_of(fed_id, holder)
                # a post nobody's registration holds (left by an older registry) is free; one
                # a legacy registration holds gives way to a claim with a token
                conductor_granted = held is None or (heartbeat and not held[4])
            if old is not None:
                if holder == path and conductor_granted:
                    self._db.execute("DELETE FROM registrations WHERE token = ?", (old[0],))
                else:
                    self._drop(old[0])
            sup_row = self._db.execute(
                "SELECT token FROM registrations WHERE orchestra_id = ? AND supernode = 1",
                (orch_id,),
            ).fetchone()
            supernode_granted = supernode and (sup_row is None or takeover)
            if supernode_granted and sup_row is not None:
                self._db.execute(
                    "UPDATE registrations SET supernode = 0, members = NULL, members_at = NULL"
                    " WHERE orchestra_id = ?",
                    (orch_id,),
                )
            if conductor_granted and holder != path:
                # a legacy holder (or an orphaned post) gives way to a claim with a token
                self._db.execute(
                    "UPDATE registrations SET conductor = 0 WHERE federation_id = ?"
                    " AND conductor = 1",
                    (fed_id,),
                )
            token = secrets.token_urlsafe(18)
            self._db.execute(
                "INSERT INTO registrations (token, federation_id, orchestra_id, name, node_id,"
                " host, port, supernode, conductor, heartbeat, registered_at, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token,
                    fed_id,
                    orch_id,
                    node,
                    node_id,
                    host,
                    port,
                    int(supernode_granted),
                    int(conductor_granted),
                    int(heartbeat),
                    registered_at,
                    now,
                ),
            )
            epoch = fed[3]
            if epoch is None:
                epoch = now
                self._db.execute("UPDATE federations SET epoch = ? WHERE id = ?", (now, fed_id))
                self._db.execute(
                    "INSERT INTO handovers (federation_id, source, token, epoch, lineage, tag)"
                    " VALUES (?, ?, NULL, ?, NULL, NULL) ON CONFLICT (federation_id, source)"
                    " DO UPDATE SET epoch = excluded.epoch",
                    (fed_id, _OWN, now),
                )
            if conductor_granted:
                term_bump = 0 if holder == path else 1
                self._db.execute(
                    "UPDATE federations SET conductor_path = ?, conductor_node_id = ?,"
                    " conductor_host = ?, conductor_port = ?,"
                    " conductor_term = conductor_term + ? WHERE id = ?",
                    (path, node_id, host, port, term_bump, fed_id),
                )
            self._db.execute("UPDATE federations SET version = version + 1 WHERE id = ?", (fed_id,))
            fed = self._fed(fed[1])
            return self._answer(fed, orch_id, token, path, now, supernode_granted) | {
                "supernode_granted": supernode_granted,
                "conductor_granted": conductor_granted,
            }

        return self._tx(run, _federation(federation))

    def _registration_of(self, fed_id: int, path: str) -> tuple[Any, ...] | None:
        """``(token, node_id, host, port, heartbeat)`` of the registration of *path*, if any."""
        orchestra, _, name = path[1:].partition("/")
        row = self._db.execute(
            "SELECT r.token, r.node_id, r.host, r.port, r.heartbeat FROM registrations r"
            " JOIN orchestras o ON o.id = r.orchestra_id WHERE r.federation_id = ?"
            " AND o.name = ? AND r.name = ?",
            (fed_id, orchestra, name),
        ).fetchone()
        return None if row is None else tuple(row)

    def _held_without_token(self, fed_id: int, holder: str) -> bool:
        """Whether the conductor post held by *holder* is owned by no token: a legacy
        registration holds it, or no registration does (a post left by an older registry)."""
        row = self._registration_of(fed_id, holder)
        return row is None or not row[4]

    def _answer(
        self,
        fed: tuple[Any, ...],
        orch_id: int,
        token: str,
        path: str,
        now: float,
        is_supernode: bool,
    ) -> dict[str, Any]:
        supernode: dict[str, Any] | None = None
        others: list[dict[str, Any]] = []
        if is_supernode:
            others = [
                _entry(fed[1], row)
                for row in self._db.execute(
                    f"SELECT {_REG_COLUMNS} FROM registrations r JOIN orchestras o"
                    " ON o.id = r.orchestra_id WHERE r.federation_id = ? AND r.supernode = 1"
                    " AND r.token != ? ORDER BY o.name, r.name",
                    (fed[0], token),
                )
            ]
        else:
            row = self._db.execute(
                f"SELECT {_REG_COLUMNS} FROM registrations r JOIN orchestras o"
                " ON o.id = r.orchestra_id WHERE r.orchestra_id = ? AND r.supernode = 1",
                (orch_id,),
            ).fetchone()
            supernode = None if row is None else _entry(fed[1], row)
        conductor: dict[str, Any] | None = None
        if fed[5] is not None:
            orch, _, cname = fed[5][1:].partition("/")
            conductor = {
                "federation": fed[1],
                "orchestra": orch,
                "name": cname,
                "path": fed[5],
                "node_id": fed[6],
                "host": fed[7],
                "port": fed[8],
            }
        return {
            "token": token,
            "federation": fed[1],
            "path": path,
            "epoch": fed[3],
            "elapsed": self._elapsed(fed, now),
            "ttl": self.ttl,
            "version": fed[4],
            "supernode": supernode,
            "other_supernodes": others,
            "conductor": conductor,
            "conductor_term": fed[9],
        }

    def heartbeat(self, token: str, members: object = None) -> dict[str, Any]:
        """Keep a registration alive; :class:`NotFound` if the token is unknown or expired.

        With *members* (a report, see :func:`~registry_bridge._members.check_members`), the
        registration (its orchestra's supernode: :class:`Forbidden` otherwise) also replaces
        its orchestra's members report, stamped with the time; a bad report is refused
        (400 naming the field; 403 for a member of another orchestra, 409 for a path named
        twice) and changes nothing, not even ``last_seen``."""
        if members is not None:
            return self._tx(lambda now: self._report(now, token, members), _registration(token))

        def run(now: float) -> dict[str, Any]:
            # one statement (one round trip to a database server)
            row = self._db.execute(
                "UPDATE registrations SET last_seen = ? WHERE token = ? RETURNING federation_id,"
                " (SELECT epoch FROM federations WHERE id = federation_id),"
                " (SELECT version FROM federations WHERE id = federation_id),"
                " (SELECT conductor_term FROM federations WHERE id = federation_id)",
                (now, token),
            ).fetchone()
            if row is None:
                raise NotFound("unknown or expired registration token")
            epoch = row[1]
            return {
                "elapsed": 0.0 if epoch is None else max(0.0, now - epoch),
                "epoch": epoch,
                "ttl": self.ttl,
                "version": row[2],
                "conductor_term": row[3],
            }

        return self._tx(run, _ONE_ROW)

    def relay_queue(self, token: str, to: object, frames: Sequence[bytes]) -> dict[str, Any]:
        """Queue *frames* from the supernode holding *token* for the supernode at path *to*
        (see ``registry_bridge._relaystore``: who may, the bounds, the answer)."""
        return self._tx(
            lambda now: _relaystore.queue(self._db, now, token, to, frames), _registration(token)
        )

    def relay_take(self, token: str, limit: int = _relaystore.BATCH_LIMIT) -> list[dict[str, Any]]:
        """Remove and return the frames queued for the supernode holding *token* (see
        ``registry_bridge._relaystore``)."""
        return self._tx(
            lambda now: _relaystore.take(self._db, now, token, limit), _registration(token)
        )

    def _report(self, now: float, token: str, members: object) -> dict[str, Any]:
        """A heartbeat that carries a members report (see :meth:`heartbeat`)."""
        row = self._db.execute(
            "SELECT o.name, r.name, r.supernode, f.epoch, f.version, f.conductor_term"
            " FROM registrations r JOIN orchestras o ON o.id = r.orchestra_id"
            " JOIN federations f ON f.id = r.federation_id WHERE r.token = ?",
            (token,),
        ).fetchone()
        if row is None:
            raise NotFound("unknown or expired registration token")
        orchestra, name, supernode, epoch, version, term = row
        if not supernode:
            raise Forbidden(
                f"/{orchestra}/{name} is registered as a plain node, not as orchestra"
                f" {orchestra}'s supernode; only the supernode's registration reports members"
            )
        try:
            report = check_members(members, orchestra)
        except ForeignMember as exc:
            raise Forbidden(str(exc)) from None
        except DuplicateMember as exc:
            raise Conflict(str(exc)) from None
        except InvalidReport as exc:
            raise StoreError(str(exc)) from None
        self._db.execute(
            "UPDATE registrations SET last_seen = ?, members = ?, members_at = ? WHERE token = ?",
            (now, encode_members(report), now, token),
        )
        return {
            "elapsed": 0.0 if epoch is None else max(0.0, now - epoch),
            "epoch": epoch,
            "ttl": self.ttl,
            "version": version,
            "conductor_term": term,
        }

    def unregister(self, token: str) -> None:
        """Remove a registration by token; :class:`NotFound` if unknown."""

        def run(now: float) -> None:
            row = self._db.execute(
                "SELECT 1 FROM registrations WHERE token = ?", (token,)
            ).fetchone()
            if row is None:
                raise NotFound("unknown or expired registration token")
            self._drop(token)

        self._tx(run, _registration(token))

    def unregister_path(self, federation: object, orchestra: object, name: object) -> bool:
        """Remove the legacy registration of ``/<orchestra>/<name>`` (legacy API); return
        whether it was registered. :class:`Forbidden` if a JSON registration (owned by its
        token) holds the path."""
        node = _name(name, "name")
        orch_name = _name(orchestra, "orchestra")

        def run(now: float) -> bool:
            fed = self._fed(federation)
            orch_id = self._orch_id(fed[0], fed[1], orch_name)
            row = self._db.execute(
                "SELECT token, node_id, host, port, heartbeat FROM registrations"
                " WHERE orchestra_id = ? AND name = ?",
                (orch_id, node),
            ).fetchone()
            if row is None:
                return False
            if row[4]:
                raise Forbidden(
                    f"/{orch_name}/{node} was registered with a token (JSON API, node"
                    f" {row[1] or '-'} at {row[2]}:{row[3]}); only that token can remove it"
                )
            self._drop(row[0])
            return True

        return self._tx(run, _federation(federation))

    # ----------------------------------------------------------------- conductor and time

    def conductor(self, federation: object) -> dict[str, Any]:
        """The federation's conductor: ``holder`` path (or ``None``), node id, address, term."""
        return self._tx(lambda now: self._conductor(self._fed(federation)), _federation(federation))

    def set_conductor(
        self,
        federation: object,
        *,
        token: str,
        expected_term: int,
        holder: str | None,
    ) -> dict[str, Any]:
        """Compare-and-set the conductor on behalf of the registration *token*: if the term is
        *expected_term*, make *holder* (a registered path, or ``None`` to release) the
        conductor and increase the term by one; otherwise raise :class:`Conflict` whose
        ``detail`` is the current conductor.

        The registration holding the post may release it or hand it to another registration;
        any registration may claim it for itself when it is free or held without a token (a
        legacy holder); anything else is :class:`Forbidden`. An unknown token (or one of
        another federation) is :class:`NotFound`. The conductor's node id and address are its
        registration's."""
        if holder is not None:
            orch, sep, rest = holder[1:].partition("/") if holder.startswith("/") else ("", "", "")
            if not sep:
                raise StoreError(f"holder must be a path /<orchestra>/<name>, not {holder!r}")
            _name(orch, "orchestra")
            _name(rest, "name")

        def run(now: float) -> dict[str, Any]:
            fed = self._fed(federation)
            me = self._db.execute(
                "SELECT o.name, r.name FROM registrations r JOIN orchestras o"
                " ON o.id = r.orchestra_id WHERE r.token = ? AND r.federation_id = ?",
                (token, fed[0]),
            ).fetchone()
            if me is None:
                raise NotFound("unknown or expired registration token")
            mine = f"/{me[0]}/{me[1]}"
            current = self._conductor(fed)
            if current["term"] != expected_term:
                raise Conflict(f"conductor term is {current['term']}, not {expected_term}", current)
            held = current["holder"]
            if held != mine:
                if holder != mine:
                    raise Forbidden(
                        f"{mine} may claim the conductor only for itself"
                        + ("" if held is None else f"; only its holder {held} can release it")
                    )
                if held is not None and not self._held_without_token(fed[0], held):
                    raise Forbidden(
                        f"the conductor is {held}; its holder must release it (or its"
                        f" registration expire) before {mine} can claim it"
                    )
            target: tuple[Any, ...] | None = None
            if holder is not None:
                target = self._registration_of(fed[0], holder)
                if target is None:
                    raise NotFound(f"no registration {holder} in federation {fed[1]!r}")
            # fenced in the statement too: it changes nothing unless the term is still the
            # expected one (the write lock already makes that so)
            changed = self._db.execute(
                "UPDATE federations SET conductor_path = ?, conductor_node_id = ?,"
                " conductor_host = ?, conductor_port = ?, conductor_term = conductor_term + 1,"
                " version = version + 1 WHERE id = ? AND conductor_term = ?",
                (
                    holder,
                    None if target is None else target[1],
                    None if target is None else target[2],
                    None if target is None else target[3],
                    fed[0],
                    expected_term,
                ),
            ).rowcount
            if changed != 1:
                current = self._conductor(self._fed(fed[1]))
                raise Conflict(f"conductor term is {current['term']}, not {expected_term}", current)
            self._db.execute(
                "UPDATE registrations SET conductor = 0 WHERE federation_id = ? AND conductor = 1",
                (fed[0],),
            )
            if target is not None:
                self._db.execute(
                    "UPDATE registrations SET conductor = 1 WHERE token = ?", (target[0],)
                )
            return self._conductor(self._fed(fed[1]))

        return self._tx(run, _federation(federation))

    def elapsed(self, federation: object) -> dict[str, Any]:
        """Seconds since the federation's epoch (0.0 before its first registration)."""

        def run(now: float) -> dict[str, Any]:
            fed = self._fed(federation)
            return {"federation": fed[1], "epoch": fed[3], "elapsed": self._elapsed(fed, now)}

        return self._tx(run, _federation(federation))

    def epoch(self, federation: object) -> float | None:
        """The federation's epoch (wall-clock seconds), ``None`` before its first registration."""
        return self._tx(lambda now: self._fed(federation)[3], _federation(federation))  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- the federation's time

    def _handovers(self, fed: tuple[Any, ...]) -> list[dict[str, Any]]:
        """The federation's handovers, oldest first: ``epoch``, ``lineage`` and ``tag`` as a
        node handed them over; the registry's own epoch (first registration) has a lineage
        named after it and no tag."""
        return [
            {
                "epoch": epoch,
                "lineage": f"registry-{epoch:.6f}" if lineage is None else str(lineage),
                "tag": None if tag is None else str(tag),
            }
            for epoch, lineage, tag in self._db.execute(
                "SELECT epoch, lineage, tag FROM handovers WHERE federation_id = ?"
                " ORDER BY epoch, source",
                (fed[0],),
            )
        ]

    def _lineage(self, fed: tuple[Any, ...]) -> tuple[str | None, str | None]:
        """The lineage of the federation's epoch (its oldest handover) and its tag;
        ``(None, None)`` without an epoch."""
        if fed[3] is None:
            return None, None
        handovers = self._handovers(fed)
        if not handovers:
            return f"registry-{fed[3]:.6f}", None
        return handovers[0]["lineage"], handovers[0]["tag"]

    def epoch_lineage(self, federation: object) -> tuple[float | None, str | None, str | None]:
        """The federation's epoch, its lineage and the tag handed over with them
        (``(None, None, None)`` before any registration)."""

        def run(now: float) -> tuple[float | None, str | None, str | None]:
            fed = self._fed(federation)
            return fed[3], *self._lineage(fed)

        return self._tx(run, _federation(federation))

    def federation_time(self, federation: object) -> dict[str, Any]:
        """What ``GET .../elapsed`` says of the federation's time: its ``epoch`` (the oldest
        handover), that one's ``lineage`` and ``tag``, every ``handovers`` the registry keeps
        (oldest first) and the federation's ``generation``."""

        def run(now: float) -> dict[str, Any]:
            fed = self._fed(federation)
            handovers = self._handovers(fed)
            first = handovers[0] if handovers and fed[3] is not None else None
            return {
                "epoch": fed[3],
                "lineage": None if first is None else first["lineage"],
                "tag": None if first is None else first["tag"],
                "handovers": handovers if fed[3] is not None else [],
                "generation": fed[10],
            }

        return self._tx(run, _federation(federation))

    def offer_epoch(
        self,
        federation: object,
        token: str,
        epoch: object,
        lineage: object,
        tag: object = None,
        *,
        generation: object = None,
        source: str = "-",
    ) -> dict[str, Any]:
        """A running node (holder of registration *token* in *federation*) hands over the
        federation's time: *epoch* is the registry's clock reading at which its federation
        time was 0 (the node measured the registry's clock, NTP-style), in lineage *lineage*.

        The registry holds no key, so it cannot tell a member's offer from a stranger's: it
        keeps several **handovers** and the nodes take the oldest whose *tag* (a keyed
        federation's signature of generation, epoch and lineage, kept as it came) verifies.
        One per *source* (the offering client's address, see :func:`handover_source`), so a
        stranger's offer replaces only its own: a source's handover is replaced by an older
        one, or by the same epoch and lineage with another tag (signed again after a key
        rotation). At most :data:`MAX_HANDOVERS` sources (besides the registry's own epoch):
        a new one then takes the place of the youngest whose registration is gone (never the
        oldest), else it is not taken. An offer in the future, or for another *generation*
        than the federation's (a reset came between), is not taken. The federation's epoch
        (``elapsed``, for 2012 clients too) is the oldest handover: a reset clears them all,
        and the next node hands its time back, so ``elapsed`` goes on. Returns the
        federation's time after the offer (``accepted`` says whether the offer was kept).
        """
        if not (
            isinstance(epoch, int | float)
            and not isinstance(epoch, bool)
            and abs(epoch) <= MAX_CLOCK_READING
        ):
            raise StoreError(f"epoch must be a clock reading in seconds, not {epoch!r}")
        if not is_lineage(lineage):
            raise StoreError("lineage must be 1-64 letters, digits, '.', '_' or '-'")
        if tag is not None and not is_epoch_tag(tag):
            raise StoreError("tag must be null or 1-128 letters, digits, '.', '_' or '-'")
        if generation is not None and not is_generation(generation):
            raise StoreError("generation must be null or 1-128 letters, digits, '.', '_' or '-'")
        source = source or "-"  # never the registry's own

        def run(now: float) -> dict[str, Any]:
            fed = self._fed(federation)
            row = self._db.execute(
                "SELECT 1 FROM registrations WHERE token = ? AND federation_id = ?",
                (token, fed[0]),
            ).fetchone()
            if row is None:
                raise NotFound("unknown or expired registration token")
            offered = float(epoch)
            accepted = (
                offered <= now
                and generation in (None, fed[10])
                and self._keep_handover(fed[0], source, token, offered, str(lineage), tag)
            )
            if accepted:
                self._db.execute(
                    "UPDATE federations SET epoch = (SELECT min(epoch) FROM handovers"
                    " WHERE federation_id = ?) WHERE id = ?",
                    (fed[0], fed[0]),
                )
                fed = self._fed(fed[1])
            handed, handed_tag = self._lineage(fed)
            return {
                "federation": fed[1],
                "accepted": accepted,
                "epoch": fed[3],
                "lineage": handed,
                "tag": handed_tag,
                "elapsed": self._elapsed(fed, now),
                "generation": fed[10],
            }

        return self._tx(run, _federation(federation))

    def _keep_handover(
        self, fed_id: int, source: str, token: str, epoch: float, lineage: str, tag: object
    ) -> bool:
        """Keep the handover of *source* (see :meth:`offer_epoch`); whether it was kept."""
        old = self._db.execute(
            "SELECT epoch, lineage, tag FROM handovers WHERE federation_id = ? AND source = ?",
            (fed_id, source),
        ).fetchone()
        if old is not None:
            resigned = epoch == old[0] and lineage == old[1] and tag not in (None, old[2])
            if not (epoch < old[0] or resigned):
                if (epoch, lineage, tag) == tuple(old):  # the same again: now held by *token*
                    self._db.execute(
                        "UPDATE handovers SET token = ? WHERE federation_id = ? AND source = ?",
                        (token, fed_id, source),
                    )
                return False
        else:
            kept = self._db.execute(
                "SELECT count(*) FROM handovers WHERE federation_id = ? AND source != ?",
                (fed_id, _OWN),
            ).fetchone()[0]
            if kept >= MAX_HANDOVERS:
                # the youngest whose registration is gone (never the oldest) makes room
                gone = self._db.execute(
                    "SELECT source FROM handovers h WHERE federation_id = ? AND source != ?"
                    " AND NOT EXISTS (SELECT 1 FROM registrations r WHERE r.token = h.token)"
                    " AND epoch > (SELECT min(epoch) FROM handovers WHERE federation_id = ?)"
                    " ORDER BY epoch DESC, source LIMIT 1",
                    (fed_id, _OWN, fed_id),
                ).fetchone()
                if gone is None:
                    return False
                self._db.execute(
                    "DELETE FROM handovers WHERE federation_id = ? AND source = ?",
                    (fed_id, gone[0]),
                )
        self._db.execute(
            "INSERT INTO handovers (federation_id, source, token, epoch, lineage, tag)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (federation_id, source) DO UPDATE"
            " SET token = excluded.token, epoch = excluded.epoch, lineage = excluded.lineage,"
            " tag = excluded.tag",
            (fed_id, source, token, epoch, lineage, tag),
        )
        return True

    def check_consistency(self) -> list[str]:
        """Return every broken invariant (empty when the state is sound); used by tests."""

        def run(now: float) -> list[str]:
            problems: list[str] = []
            for (oid,) in self._db.execute(
                "SELECT orchestra_id FROM registrations WHERE supernode = 1"
                " GROUP BY orchestra_id HAVING count(*) > 1"
            ):
                problems.append(f"orchestra {oid} has more than one supernode")
            for fid, path in self._db.execute(
                "SELECT id, conductor_path FROM federations WHERE conductor_path IS NOT NULL"
            ):
                n = self._db.execute(
                    "SELECT count(*) FROM registrations WHERE federation_id = ? AND conductor = 1",
                    (fid,),
                ).fetchone()[0]
                if n > 1:
                    problems.append(f"federation {fid} has {n} conductor registrations")
                del path
            for (fid,) in self._db.execute(
                "SELECT DISTINCT r.federation_id FROM registrations r JOIN federations f"
                " ON f.id = r.federation_id WHERE r.conductor = 1 AND f.conductor_path IS NULL"
            ):
                problems.append(f"federation {fid}: conductor flag without holder")
            for (fid,) in self._db.execute(
                "SELECT DISTINCT federation_id FROM registrations"
                " WHERE federation_id NOT IN (SELECT id FROM federations)"
            ):
                problems.append(f"registration of missing federation {fid}")
            return problems

        return self._tx(run, _WHOLE)


def _unavailable(exc: BaseException) -> BaseException:
    """*exc*, or the :class:`Unavailable` the caller gets for a database that stopped
    answering."""
    return Unavailable(str(exc)) if isinstance(exc, Unreachable) else exc


_MAX_GROUP = 256
"""At most this many queued calls share one transaction."""


class _Job:
    """One queued store call and how to wake its caller: a trio task, or an asyncio future
    (the registry's app runs under either, see :class:`AsyncStore`)."""

    __slots__ = ("error", "fn", "future", "task", "token", "value")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.token: Any = None  # a TrioToken, or the asyncio loop
        self.task: trio.lowlevel.Task | None = None
        self.future: asyncio.Future[None] | None = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no asyncio loop: trio
            self.token = trio.lowlevel.current_trio_token()
            self.task = trio.lowlevel.current_task()
        else:
            self.token = loop
            self.future = loop.create_future()
        self.value: Any = None
        self.error: BaseException | None = None


def _deliver(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future is None:
            assert job.task is not None
            trio.lowlevel.reschedule(job.task)
        elif not job.future.done():
            job.future.set_result(None)


def _refuse_abort(_: Any) -> trio.lowlevel.Abort:
    # The call cannot be abandoned once queued: its transaction may commit, and its caller
    # must not be told otherwise. Cancellation is delivered at the caller's next checkpoint.
    return trio.lowlevel.Abort.FAILED


class AsyncStore:
    """Runs :class:`RegistryStore` calls from trio or asyncio on one dedicated worker thread.

    Calls queue up; the thread takes whatever is queued (up to 256 calls) and runs it as one
    transaction, each call in its own savepoint (group commit: under load many writes share
    one commit, see :meth:`RegistryStore.run_group`), then wakes trio once for the whole
    group. The thread starts on demand and ends after half a second without work. A call's
    answer is returned only after the transaction holding it committed; cancelling the caller
    does not abandon the call.
    """

    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` (a bound :class:`RegistryStore` method) in the thread."""

        job = _Job(functools.partial(fn, *args, **kwargs))
        self._queue.put(job)
        if not self._running:
            with self._lock:
                if not self._running:
                    self._running = True
                    threading.Thread(target=self._work, name="registry-store", daemon=True).start()
        if job.future is None:
            await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        else:
            # shielded: a cancelled caller stops waiting, the call itself still runs
            await asyncio.shield(job.future)
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[no-any-return]

    def _work(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=0.5)]
            except queue.Empty:
                # a call queued after this check finds _running False and starts a thread
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            with contextlib.suppress(queue.Empty):
                while len(batch) < _MAX_GROUP:
                    batch.append(self._queue.get_nowait())
            by_token: dict[Any, list[_Job]] = {}
            if len(batch) == 1:
                job = batch[0]
                try:
                    job.value = job.fn()
                except BaseException as exc:
                    job.error = exc
            else:
                outcomes = self.store.run_group([job.fn for job in batch])
                for job, (ok, value) in zip(batch, outcomes, strict=True):
                    if ok:
                        job.value = value
                    else:
                        job.error = value
            for job in batch:
                by_token.setdefault(job.token, []).append(job)
            for token, jobs in by_token.items():
                if isinstance(token, asyncio.AbstractEventLoop):
                    with contextlib.suppress(RuntimeError):  # the loop has closed
                        token.call_soon_threadsafe(_deliver, jobs)
                else:
                    with contextlib.suppress(trio.RunFinishedError):
                        token.run_sync_soon(_deliver, jobs)
