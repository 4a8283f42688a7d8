"""Export and import of a registry's whole state as JSON (``stagemesh registry export`` /
``import``), so an operator can move an event from SQLite to PostgreSQL and back.

The document keeps everything: ids (the legacy API shows them), epochs (every handover kept,
with its source, lineage and tag), each federation's generation, versions, the conductor and
its term, and every registration with its
token, so nodes keep heartbeating with the tokens they hold after the move. Tokens are
credentials: keep the file private (``export --output`` writes it readable by its owner only).

An export is one transaction (a consistent snapshot, taken while the registry serves).
An import goes into an empty database in one transaction; the document is checked first
(names, addresses, one supernode per orchestra, the conductor's registration), and a
document that fails a check changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from registry_bridge._database import Database, Duplicate
from registry_bridge._openapi import MAX_HANDOVERS
from registry_bridge._store import (
    RegistryStore,
    StoreError,
    _name,
    is_epoch_tag,
    is_generation,
    is_lineage,
    new_generation,
)

__all__ = ["FORMAT", "export_state", "import_state"]

FORMAT = "stagemesh-registry-export"
VERSION = 1


def export_state(store: RegistryStore) -> dict[str, Any]:
    """The store's whole state as a JSON-ready document."""

    def run(db: Database, now: float) -> dict[str, Any]:
        federations = []
        for row in db.execute(
            "SELECT id, name, created_at, epoch, version, conductor_path, conductor_node_id,"
            " conductor_host, conductor_port, conductor_term, generation FROM federations"
            " ORDER BY id"
        ).fetchall():
            fid, name, created, epoch, version, cpath, cnode, chost, cport, term, gen = row
            orchestras = [
                {"id": oid, "name": oname, "created_at": ocreated}
                for oid, oname, ocreated in db.execute(
                    "SELECT id, name, created_at FROM orchestras WHERE federation_id = ?"
                    " ORDER BY id",
                    (fid,),
                )
            ]
            registrations = [
                {
                    "token": r[0],
                    "orchestra": r[1],
                    "name": r[2],
                    "node_id": r[3],
                    "host": r[4],
                    "port": r[5],
                    "supernode": bool(r[6]),
                    "conductor": bool(r[7]),
                    "heartbeat": bool(r[8]),
                    "registered_at": r[9],
                    "last_seen": r[10],
                }
                for r in db.execute(
                    "SELECT r.token, o.name, r.name, r.node_id, r.host, r.port, r.supernode,"
                    " r.conductor, r.heartbeat, r.registered_at, r.last_seen FROM registrations"
                    " r JOIN orchestras o ON o.id = r.orchestra_id WHERE r.federation_id = ?"
                    " ORDER BY o.name, r.name",
                    (fid,),
                )
            ]
            handovers = [
                {"source": h[0], "token": h[1], "epoch": h[2], "lineage": h[3], "tag": h[4]}
                for h in db.execute(
                    "SELECT source, token, epoch, lineage, tag FROM handovers"
                    " WHERE federation_id = ? ORDER BY epoch, source",
                    (fid,),
                )
            ]
            first = handovers[0] if handovers else None
            handed = None if first is None else (first["lineage"], first["tag"])
            federations.append(
                {
                    "id": fid,
                    "name": name,
                    "created_at": created,
                    "epoch": epoch,
                    # the lineage a node handed over with the epoch (null: the registry's own)
                    "lineage": handed[0] if handed is not None else None,
                    # ... and the tag it signed them with (null: none; older exports have none)
                    "tag": handed[1] if handed is not None else None,
                    # every handover kept (source "": the registry's own epoch, lineage null)
                    "handovers": handovers,
                    # the generation keyed nodes sign (older exports have none: a new one)
                    "generation": gen,
                    "version": version,
                    "conductor": {
                        "path": cpath,
                        "node_id": cnode,
                        "host": chost,
                        "port": cport,
                        "term": term,
                    },
                    "orchestras": orchestras,
                    "registrations": registrations,
                }
            )
        return {
            "format": FORMAT,
            "version": VERSION,
            "exported_at": now,
            "federations": federations,
        }

    return store.transaction(run)


class _Doc:
    """Typed access to one JSON object of the document, naming where a bad value is."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise StoreError(f"{where}: expected a JSON object")
        self.value: dict[str, Any] = value
        self.where = where

    def get(self, key: str, check: Callable[[object], bool], what: str) -> Any:
        value = self.value.get(key)
        if not check(value):
            raise StoreError(f"{self.where}: {key} must be {what}, not {str(value)[:40]!r}")
        return value


def _time(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62


def _port(v: object) -> bool:
    return _int(v) and 1 <= v <= 65535  # type: ignore[operator]


def _text(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable()


def _maybe(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or check(v)


def _list(doc: _Doc, key: str) -> list[Any]:
    value = doc.value.get(key)
    if not isinstance(value, list):
        raise StoreError(f"{doc.where}: {key} must be a list")
    return value


_Federation = tuple[tuple[Any, ...], list[Any], list[Any], list[tuple[Any, ...]]]


def _federation_rows(raw: object, index: int) -> _Federation:
    """One federation of the document, checked: its row (with its generation, a new one for
    an older export), orchestra rows, registration rows, and its handover rows (an older
    export has the lineage and tag of its epoch alone: that one handover, or the registry's
    own epoch)."""
    fed = _Doc(raw, f"federation #{index + 1}")
    name = _name(fed.get("name", _text, "a name"), "federation")
    fed.where = f"federation {name!r}"
    conductor = _Doc(fed.value.get("conductor"), f"{fed.where}: conductor")
    cpath = conductor.get("path", _maybe(_text), "a path or null")
    row = (
        fed.get("id", _int, "an integer id"),
        name,
        fed.get("created_at", _time, "a time"),
        fed.get("epoch", _maybe(_time), "a time or null"),
        fed.get("version", _int, "an integer"),
        cpath,
        conductor.get("node_id", _maybe(_text), "a string or null"),
        conductor.get("host", _maybe(_text), "an address or null"),
        conductor.get("port", _maybe(_port), "a port or null"),
        conductor.get("term", _int, "an integer"),
        fed.value.get("generation") or new_generation(),
    )
    if not is_generation(row[-1]):
        raise StoreError(f"{fed.where}: generation must be 1-128 letters, digits, '.', '_', '-'")
    orchestras: dict[str, int] = {}
    orch_rows = []
    for i, raw_orch in enumerate(_list(fed, "orchestras")):
        orch = _Doc(raw_orch, f"{fed.where}: orchestra #{i + 1}")
        oname = _name(orch.get("name", _text, "a name"), "orchestra")
        oid = orch.get("id", _int, "an integer id")
        if oname in orchestras:
            raise StoreError(f"{fed.where}: orchestra {oname!r} appears twice")
        orchestras[oname] = oid
        orch_rows.append((oid, row[0], oname, orch.get("created_at", _time, "a time")))
    reg_rows = []
    seen: set[str] = set()
    supernodes: set[str] = set()
    holders = []
    for i, raw_reg in enumerate(_list(fed, "registrations")):
        reg = _Doc(raw_reg, f"{fed.where}: registration #{i + 1}")
        oname = _name(reg.get("orchestra", _text, "a name"), "orchestra")
        rname = _name(reg.get("name", _text, "a name"), "name")
        path = f"/{oname}/{rname}"
        reg.where = f"{fed.where}: registration {path}"
        if oname not in orchestras:
            raise StoreError(f"{reg.where}: no orchestra {oname!r} in the federation")
        if path in seen:
            raise StoreError(f"{reg.where}: appears twice")
        seen.add(path)
        token = reg.get("token", _text, "a token")
        flags = [
            reg.get(k, lambda v: isinstance(v, bool), "true or false")
            for k in ("supernode", "conductor", "heartbeat")
        ]
        if flags[0]:
            if oname in supernodes:
                raise StoreError(f"{reg.where}: orchestra {oname!r} has a supernode already")
            supernodes.add(oname)
        if flags[1]:
            holders.append(path)
        reg_rows.append(
            (
                token,
                row[0],
                orchestras[oname],
                rname,
                reg.get("node_id", _maybe(_text), "a string or null"),
                reg.get("host", _text, "an address"),
                reg.get("port", _port, "a port"),
                *(int(f) for f in flags),
                reg.get("registered_at", _time, "a time"),
                reg.get("last_seen", _time, "a time"),
            )
        )
    if holders and holders != [cpath]:
        raise StoreError(
            f"{fed.where}: conductor registrations {', '.join(holders)} do not match the"
            f" conductor {cpath}"
        )
    lineage = fed.get("lineage", _maybe(is_lineage), "a lineage or null")
    tag = fed.get("tag", _maybe(is_epoch_tag), "an epoch tag or null")
    if "handovers" not in fed.value:  # an export made before handovers
        handed = [] if row[3] is None else [("-" if lineage else "", None, row[3], lineage, tag)]
        return row, orch_rows, reg_rows, handed
    handed = []
    for i, raw_h in enumerate(_list(fed, "handovers")[: MAX_HANDOVERS + 1]):
        h = _Doc(raw_h, f"{fed.where}: handover #{i + 1}")
        handed.append(
            (
                h.get("source", lambda v: isinstance(v, str) and len(v) <= 64, "an address"),
                h.get("token", _maybe(_text), "a token or null"),
                h.get("epoch", _time, "a time"),
                h.get("lineage", _maybe(is_lineage), "a lineage or null"),
                h.get("tag", _maybe(is_epoch_tag), "an epoch tag or null"),
            )
        )
    if len({h[0] for h in handed}) != len(handed):
        raise StoreError(f"{fed.where}: two handovers of one source")
    if (row[3] is None) != (not handed) or (handed and row[3] != min(h[2] for h in handed)):
        raise StoreError(f"{fed.where}: the epoch is not the oldest handover")
    return row, orch_rows, reg_rows, handed


def import_state(store: RegistryStore, document: object) -> dict[str, int]:
    """Load an :func:`export_state` *document* into the store's database, which must hold no
    federation; return the counts imported. :class:`StoreError` (nothing imported) for a
    document that is not an export or fails a check, or a database that is not empty."""
    doc = _Doc(document, "the document")
    if doc.value.get("format") != FORMAT:
        raise StoreError(f'not a registry export (no "format": "{FORMAT}")')
    if doc.value.get("version") != VERSION:
        raise StoreError(
            f"export format version {str(doc.value.get('version'))[:20]}; this stagemesh"
            f" reads version {VERSION}"
        )
    feds = [_federation_rows(raw, i) for i, raw in enumerate(_list(doc, "federations"))]
    for what, values in (
        ("federation id", [f[0][0] for f in feds]),
        ("federation name", [f[0][1] for f in feds]),
        ("orchestra id", [o[0] for f in feds for o in f[1]]),
        ("registration token", [r[0] for f in feds for r in f[2]]),
    ):
        if len(set(values)) != len(values):
            raise StoreError(f"the document repeats a {what}")

    def run(db: Database, now: float) -> dict[str, int]:
        held = db.execute("SELECT count(*) FROM federations").fetchone()[0]
        if held:
            raise StoreError(
                f"database {db.shown} already holds {held} federation(s); import needs an"
                " empty database"
            )
        try:
            _insert(db, feds)
        except Duplicate as exc:
            raise StoreError(f"the document repeats a row: {exc}") from None
        db.after_import()
        return {
            "federations": len(feds),
            "orchestras": sum(len(f[1]) for f in feds),
            "registrations": sum(len(f[2]) for f in feds),
        }

    return store.transaction(run)


def _insert(db: Database, feds: list[_Federation]) -> None:
    """Insert the checked rows."""
    for fed_row, orch_rows, reg_rows, handed in feds:
        db.execute(
            "INSERT INTO federations (id, name, created_at, epoch, version, conductor_path,"
            " conductor_node_id, conductor_host, conductor_port, conductor_term, generation)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            fed_row,
        )
        for handover in handed:
            db.execute(
                "INSERT INTO handovers (federation_id, source, token, epoch, lineage, tag)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (fed_row[0], *handover),
            )
        for orch_row in orch_rows:
            db.execute(
                "INSERT INTO orchestras (id, federation_id, name, created_at) VALUES (?, ?, ?, ?)",
                orch_row,
            )
        for reg_row in reg_rows:
            db.execute(
                "INSERT INTO registrations (token, federation_id, orchestra_id, name,"
                " node_id, host, port, supernode, conductor, heartbeat, registered_at,"
                " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                reg_row,
            )
