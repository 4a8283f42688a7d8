"""The relay's queue in the registry's database: gossip between supernodes of different sites.

Two supernodes whose sites cannot reach each other directly (each behind its own NAT) pass
their datagrams through the registry: one queues frames for the other, the other takes them.
The registry carries them as opaque bytes: each frame is a datagram already signed by the
sender with the federation key and bound to its receiver (``mesh._wire``), so the registry
neither reads nor can forge what it carries, and no key travels over HTTP.

Who may do what (the registration token is the credential, as for heartbeats):

- **queue**: a JSON registration flagged as supernode, for a supernode registered in the same
  federation, named by its path (``/<orchestra>/<name>``);
- **take**: only the registration frames are queued for (the holder of its token), and only
  while it is a supernode; taking removes them (each frame is delivered at most once).

Bounds: at most :data:`QUEUE_LIMIT` frames wait for one supernode (a full queue drops its
oldest: gossip that waited longest is worth least), a frame waits at most :data:`FRAME_TTL`
seconds (the receiver's replay window refuses older ones anyway), and a frame is at most
:data:`FRAME_MAX` bytes. The queue lives in the database, never in one
process's memory, so whichever registry process each side talks to, a queued frame is
delivered; it goes with the registration it waits for (a foreign key, ``ON DELETE CASCADE``).

These functions run inside a store transaction (:meth:`RegistryStore.transaction`); *now* is
the store's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from registry_bridge._database import Database
from registry_bridge._errors import Forbidden, NotFound, StoreError, checked_name

__all__ = ["BATCH_LIMIT", "FRAME_MAX", "FRAME_TTL", "QUEUE_LIMIT", "queue", "sweep", "take"]

QUEUE_LIMIT = 256
"""Frames waiting for one supernode at most; a full queue drops its oldest."""
FRAME_TTL = 10.0
"""Seconds a frame waits at most before it is dropped."""
FRAME_MAX = 32 * 1024
"""Bytes in one frame at most: a datagram of the gossip wire format (1200 bytes), or a
state exchange of a small orchestra (a join through the relay)."""
BATCH_LIMIT = 64
"""Frames one request may queue, and one take returns, at most."""


def _supernode_sender(db: Database, token: str) -> tuple[int, str]:
    """The federation id and path of the supernode registration holding *token*."""
    row = db.execute(
        "SELECT r.federation_id, o.name, r.name, r.supernode, r.heartbeat FROM registrations r"
        " JOIN orchestras o ON o.id = r.orchestra_id WHERE r.token = ?",
        (token,),
    ).fetchone()
    if row is None:
        raise NotFound("unknown or expired registration token")
    fed_id, orchestra, name, supernode, heartbeat = row
    if not (supernode and heartbeat):
        raise Forbidden(
            f"/{orchestra}/{name} is not registered as a supernode: only supernodes relay"
        )
    return int(fed_id), f"/{orchestra}/{name}"


def _path(value: object) -> tuple[str, str]:
    if not isinstance(value, str) or value.count("/") != 2 or not value.startswith("/"):
        raise StoreError(f"field 'to' must be a path /<orchestra>/<name>, not {str(value)[:80]!r}")
    _, orchestra, name = value.split("/")
    return checked_name(orchestra, "orchestra"), checked_name(name, "name")


def _frames(frames: object) -> list[bytes]:
    if not isinstance(frames, list | tuple) or not 1 <= len(frames) <= BATCH_LIMIT:
        raise StoreError(f"field 'frames' must hold 1 to {BATCH_LIMIT} frames")
    for frame in frames:
        if not isinstance(frame, bytes) or not 1 <= len(frame) <= FRAME_MAX:
            raise StoreError(f"field 'frames': each frame must be 1 to {FRAME_MAX} bytes")
    return list(frames)


def queue(
    db: Database, now: float, token: str, to: object, frames: Sequence[bytes]
) -> dict[str, Any]:
    """Queue *frames* from the supernode holding *token* for the supernode at path *to*.

    Returns ``{"to": path, "queued": n, "dropped": k}`` (*k* older frames dropped to keep the
    queue within :data:`QUEUE_LIMIT`). :class:`NotFound` for an unknown token or no supernode
    at *to*, :class:`Forbidden` if the sender is not a supernode, :class:`StoreError` for a
    malformed path or frame.
    """
    orchestra, name = _path(to)
    checked = _frames(frames)
    fed_id, sender = _supernode_sender(db, token)
    row = db.execute(
        "SELECT r.token FROM registrations r JOIN orchestras o ON o.id = r.orchestra_id"
        " WHERE r.federation_id = ? AND o.name = ? AND r.name = ? AND r.supernode = 1"
        " AND r.heartbeat = 1",
        (fed_id, orchestra, name),
    ).fetchone()
    if row is None:
        raise NotFound(f"no supernode /{orchestra}/{name} is registered in this federation")
    recipient = row[0]
    for frame in checked:
        db.execute(
            "INSERT INTO relay (recipient, sender, frame, queued_at) VALUES (?, ?, ?, ?)",
            (recipient, sender, frame, now),
        )
    dropped = db.execute(
        "DELETE FROM relay WHERE recipient = ? AND (queued_at < ? OR id <= (SELECT id FROM relay"
        " WHERE recipient = ? ORDER BY id DESC LIMIT 1 OFFSET ?))",
        (recipient, now - FRAME_TTL, recipient, QUEUE_LIMIT),
    ).rowcount
    return {"to": f"/{orchestra}/{name}", "queued": len(checked), "dropped": max(0, dropped)}


def take(db: Database, now: float, token: str, limit: int = BATCH_LIMIT) -> list[dict[str, Any]]:
    """Remove and return (oldest first, at most *limit*) the frames queued for the supernode
    holding *token*: ``[{"from": path, "frame": bytes, "age": seconds}, ...]``.

    :class:`NotFound` for an unknown token, :class:`Forbidden` if that registration is not
    a supernode (nothing is relayed to it).
    """
    _supernode_sender(db, token)
    db.execute("DELETE FROM relay WHERE recipient = ? AND queued_at < ?", (token, now - FRAME_TTL))
    rows = db.execute(
        "SELECT id, sender, frame, queued_at FROM relay WHERE recipient = ? ORDER BY id LIMIT ?",
        (token, max(1, min(limit, BATCH_LIMIT))),
    ).fetchall()
    if rows:
        db.execute("DELETE FROM relay WHERE recipient = ? AND id <= ?", (token, rows[-1][0]))
    return [
        {"from": sender, "frame": bytes(frame), "age": max(0.0, now - queued_at)}
        for _, sender, frame, queued_at in rows
    ]


def sweep(db: Database, now: float, federation_id: int | None = None) -> None:
    """Drop every frame (queued in federation *federation_id*, or in any) that waited longer
    than :data:`FRAME_TTL`."""
    if federation_id is None:
        db.execute("DELETE FROM relay WHERE queued_at < ?", (now - FRAME_TTL,))
        return
    db.execute(
        "DELETE FROM relay WHERE queued_at < ? AND recipient IN"
        " (SELECT token FROM registrations WHERE federation_id = ?)",
        (now - FRAME_TTL, federation_id),
    )
