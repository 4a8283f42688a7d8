"""The federation's key file: several keys, the one that signs, the ones retired; how a key is
added and retired, so the key can be rotated while the concert goes on.

A key file holds one entry a line (``#`` starts a comment)::

    2 <64 hex digits> signs-from 2026-12-04T23:10:00Z
    1 <64 hex digits>
    retired 3

- ``<id> <hex key>`` is a key (id 1-255, at least 16 bytes): every node holding the file
  accepts what it signs;
- ``signs-from <UTC time>`` after it says from when it signs: before, it is accepted only.
  The key that signs is the one whose ``signs-from`` passed last (a key without one counts as
  from the beginning of time), the first in the file on a tie: a file of plain lines signs with
  its first key, as before there were rotations;
- ``retired <id>`` is a key no longer accepted: what it signs is refused and counted
  (``retired key``). Its secret is not kept.

A rotation (``docs/security.md``, "Rotating the federation key"): ``stagemesh keygen --add
FILE`` puts a new key first, signing from *overlap* seconds on; the crew copies the file to
every node within that time (each node reads it again by itself when it changes, and switches
to the new key when its time comes); once every node signs with the new key, ``stagemesh keygen
--retire OLD FILE`` and a second copy round take the old one out.

Everything here is pure but reading and writing the file (times are passed in).
"""

from __future__ import annotations

import datetime
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from mesh._cli import UsageError
from mesh._state import write_atomic
from mesh._wire import Keyring

__all__ = [
    "DEFAULT_OVERLAP",
    "KeyEntry",
    "add_key",
    "format_entries",
    "keyring_at",
    "load_keyring",
    "next_change",
    "parse_entries",
    "read_entries",
    "retire_key",
    "write_entries",
    "write_key_file",
]

DEFAULT_OVERLAP = 600.0
"""Seconds between ``keygen --add`` and the new key signing: the time to copy the file to
every node."""

_HEADER = "# stagemesh federation key: copy this file to every node of the federation\n"


@attrs.frozen
class KeyEntry:
    """One line of a key file: a key (``key`` set), maybe signing only from ``signs_from``
    (UNIX time), or a retired key id (``key`` is ``None``)."""

    key_id: int
    key: bytes | None
    signs_from: float | None = None

    @property
    def retired(self) -> bool:
        """Whether this is a ``retired`` line."""
        return self.key is None


def _time_text(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float:
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.timestamp()


def parse_entries(text: str, where: str) -> list[KeyEntry]:
    """The entries of a key file's *text*; raise :class:`UsageError` naming ``where:line``
    and what is wrong."""
    entries: list[KeyEntry] = []
    seen: set[int] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        at = f"{where}:{number}"
        if parts[0] == "retired":
            if len(parts) != 2 or not parts[1].isdigit():
                raise UsageError(f"{at}: expected 'retired <key id>'")
            entry = KeyEntry(int(parts[1]), None)
        else:
            if len(parts) not in (2, 4) or not parts[0].isdigit():
                raise UsageError(f"{at}: expected '<key id> <hex key> [signs-from <UTC time>]'")
            try:
                key = bytes.fromhex(parts[1])
            except ValueError:
                raise UsageError(f"{at}: the key is not hexadecimal") from None
            if len(key) < 16:
                raise UsageError(f"{at}: the key must be at least 16 bytes")
            signs_from = None
            if len(parts) == 4:
                if parts[2] != "signs-from":
                    raise UsageError(f"{at}: expected 'signs-from' after the key")
                try:
                    signs_from = _parse_time(parts[3])
                except ValueError:
                    raise UsageError(
                        f"{at}: signs-from wants a UTC time such as 2026-12-04T23:10:00Z"
                    ) from None
            entry = KeyEntry(int(parts[0]), key, signs_from)
        if not 1 <= entry.key_id <= 255:
            raise UsageError(f"{at}: key id must be 1-255")
        if entry.key_id in seen:
            raise UsageError(f"{at}: key id {entry.key_id} appears twice")
        seen.add(entry.key_id)
        entries.append(entry)
    if not any(not e.retired for e in entries):
        raise UsageError(f"{where}: no key in the file")
    return entries


def format_entries(entries: Sequence[KeyEntry]) -> str:
    """A key file's text for *entries* (what :func:`parse_entries` reads back)."""
    lines = [_HEADER]
    for e in entries:
        if e.key is None:
            lines.append(f"retired {e.key_id}\n")
        elif e.signs_from is None:
            lines.append(f"{e.key_id} {e.key.hex()}\n")
        else:
            lines.append(f"{e.key_id} {e.key.hex()} signs-from {_time_text(e.signs_from)}\n")
    return "".join(lines)


def _signing(entries: Sequence[KeyEntry], now: float) -> KeyEntry | None:
    best: KeyEntry | None = None
    for e in entries:
        if e.retired or (e.signs_from is not None and e.signs_from > now):
            continue
        if best is None or (e.signs_from or -1e300) > (best.signs_from or -1e300):
            best = e
    return best


def keyring_at(entries: Sequence[KeyEntry], now: float) -> Keyring:
    """The keyring *entries* make at UNIX time *now*: every key accepted, the retired ones
    refused, and the one that signs (see the module docstring). Before any key's time has
    come, the earliest to come signs."""
    signing = _signing(entries, now)
    if signing is None:
        signing = min((e for e in entries if not e.retired), key=lambda e: e.signs_from or 0.0)
    return Keyring(
        {e.key_id: e.key for e in entries if e.key is not None},
        signing.key_id,
        frozenset(e.key_id for e in entries if e.retired),
    )


def next_change(entries: Sequence[KeyEntry], now: float) -> float | None:
    """The next time after *now* at which a key starts signing (``None``: none to come)."""
    future = [e.signs_from for e in entries if e.signs_from is not None and e.signs_from > now]
    return min(future, default=None)


def read_entries(path: Path) -> list[KeyEntry]:
    """Read and parse the key file at *path* (raise :class:`UsageError`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    return parse_entries(text, str(path))


def load_keyring(path: Path, now: float | None = None) -> Keyring:
    """The keyring of the key file at *path* at UNIX time *now* (default: now). Raises
    :class:`UsageError` naming the line and what is wrong."""
    return keyring_at(read_entries(path), time.time() if now is None else now)


def write_entries(path: Path, entries: Sequence[KeyEntry], *, new: bool = False) -> None:
    """Write *entries* to *path* (mode 0600): a new file if *new* (``FileExistsError`` if it
    exists), else replace the file whole (:func:`mesh._state.write_atomic`: a node reading it
    sees the old or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = format_entries(entries)
    if new:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return
    write_atomic(path, text.encode())  # mode 0600, like a new file


def write_key_file(path: Path, key_id: int = 1) -> None:
    """Write a new random 256-bit federation key to *path* (mode 0600)."""
    write_entries(path, [KeyEntry(key_id, secrets.token_bytes(32))], new=True)


def add_key(
    path: Path, now: float, overlap: float = DEFAULT_OVERLAP, key_id: int | None = None
) -> KeyEntry:
    """Put a new random key first in the key file at *path*, signing from *now* + *overlap*,
    and return it. The id is *key_id*, or the next one after the highest in the file (ids of
    retired keys are not used again). Raises :class:`UsageError`."""
    entries = read_entries(path)
    used = {e.key_id for e in entries}
    if key_id is None:
        top = max(used)
        key_id = next((i for i in range(top + 1, 256) if i not in used), None)
        key_id = key_id or next((i for i in range(1, 256) if i not in used), None)
        if key_id is None:
            raise UsageError(f"{path}: every key id 1-255 is used; give --key-id")
    elif key_id in used:
        raise UsageError(f"{path}: key id {key_id} is already in the file")
    if overlap < 0:
        raise UsageError("the overlap must be >= 0 seconds")
    pending = [e for e in entries if e.signs_from is not None and e.signs_from > now]
    if pending:
        raise UsageError(
            f"{path}: key {pending[0].key_id} signs only from "
            f"{_time_text(pending[0].signs_from or 0.0)}; add another key after that"
        )
    entry = KeyEntry(key_id, secrets.token_bytes(32), now + overlap)
    write_entries(path, [entry, *entries])
    return entry


def retire_key(path: Path, key_id: int, now: float) -> None:
    """Retire key *key_id* in the key file at *path*: nodes reading the file refuse what it
    signs. Refused (:class:`UsageError`) for an unknown or retired id, and for the key that
    signs now (retire it once the next key signs)."""
    entries = read_entries(path)
    entry = next((e for e in entries if e.key_id == key_id), None)
    if entry is None:
        raise UsageError(f"{path}: no key {key_id} in the file")
    if entry.retired:
        raise UsageError(f"{path}: key {key_id} is already retired")
    if keyring_at(entries, now).primary == key_id:
        coming = next_change(entries, now)
        when = f" (the next key signs from {_time_text(coming)})" if coming else ""
        raise UsageError(
            f"{path}: key {key_id} signs now{when}; add a new key (--add) and retire this one "
            f"once the new one signs on every node"
        )
    write_entries(path, [KeyEntry(key_id, None) if e is entry else e for e in entries])
