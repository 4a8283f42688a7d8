"""A node's files: its identity in the state directory, and its status URL in the runtime one.

The identity (a random 128-bit id and the last incarnation) lives in
``<state>/<federation>/<orchestra>/<name>/identity.json``, so a restarted node is the same
member with a higher incarnation. The file is locked while the node runs: a second process
claiming the same path on the same host is refused. The status URL of each running node is
written to ``<runtime>/status-<pid>.json`` and removed when it exits, so ``stagemesh status``
finds the nodes of this machine by itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "Identity",
    "PathInUse",
    "default_runtime_dir",
    "default_state_dir",
    "find_status_files",
    "locked_identity",
    "status_file",
    "write_json_atomic",
]


class PathInUse(Exception):
    """Raised by :func:`locked_identity` when another live process on this host holds the
    same node path."""


def default_state_dir() -> Path:
    """``$STAGEMESH_STATE_DIR``, else ``$XDG_STATE_HOME/stagemesh``, else
    ``~/.local/state/stagemesh``."""
    if env := os.environ.get("STAGEMESH_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stagemesh"


def default_runtime_dir() -> Path:
    """``$STAGEMESH_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/stagemesh``, else a ``run``
    folder in the state directory."""
    if env := os.environ.get("STAGEMESH_RUNTIME_DIR"):
        return Path(env)
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "stagemesh"
    return default_state_dir() / "run"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write *doc* as JSON to *path* so that a crash leaves the old or the new file, never a
    torn one (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@attrs.define
class Identity:
    """The persistent identity of one node path: its id and its last incarnation."""

    directory: Path
    node_id: str
    incarnation: int

    def save_incarnation(self, incarnation: int) -> None:
        """Record *incarnation* so the next start goes above it."""
        if incarnation > self.incarnation:
            self.incarnation = incarnation
            write_json_atomic(
                self.directory / "identity.json",
                {"node_id": self.node_id, "incarnation": incarnation},
            )


@contextlib.contextmanager
def locked_identity(
    state_dir: Path, federation: str, orchestra: str, name: str
) -> Iterator[Identity]:
    """Load (or create) the identity of ``/<orchestra>/<name>`` in *federation*, lock it for
    the life of the context, and start it at a higher incarnation than last time."""
    directory = state_dir / federation / orchestra / name
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / "lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise PathInUse(
                f"/{orchestra}/{name} in federation {federation} is already run on this host "
                f"by {holder}"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        node_id, incarnation = _load(directory / "identity.json")
        identity = Identity(directory, node_id, incarnation)
        identity.save_incarnation(incarnation + 1)
        try:
            yield identity
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _load(path: Path) -> tuple[str, int]:
    try:
        doc = json.loads(path.read_text())
        node_id, incarnation = doc["node_id"], doc["incarnation"]
        if (
            isinstance(node_id, str)
            and len(node_id) == 32
            and all(c in "0123456789abcdef" for c in node_id)
            and isinstance(incarnation, int)
            and incarnation >= 0
        ):
            return node_id, incarnation
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return secrets.token_hex(16), -1


@contextlib.contextmanager
def status_file(runtime_dir: Path, doc: dict[str, Any]) -> Iterator[Path]:
    """Advertise a running node's status URL (and path) for ``stagemesh status``."""
    path = runtime_dir / f"status-{os.getpid()}-{doc.get('node_id', 'node')}.json"
    write_json_atomic(path, {**doc, "pid": os.getpid()})
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def find_status_files(runtime_dir: Path) -> list[dict[str, Any]]:
    """The status records of the nodes running on this machine (stale ones are removed)."""
    found: list[dict[str, Any]] = []
    if not runtime_dir.is_dir():
        return found
    for path in sorted(runtime_dir.glob("status-*.json")):
        try:
            doc = json.loads(path.read_text())
            pid = int(doc["pid"])
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append(doc)
    return found
