"""A node's files: its identity in the state directory, and its status URL in the runtime one.

The identity (a random 128-bit id and an incarnation ceiling) lives in
``<state>/<federation>/<orchestra>/<name>/identity.json``, so a restarted node is the same
member with a higher incarnation. The file is locked while the node runs: a second process
claiming the same path on the same host is refused.

The ceiling is the highest incarnation this identity may have announced: the node persists it
*before* sending anything at a higher incarnation, reserving :data:`INCARNATION_RESERVE` at a
time (so refuting a flood of suspicions does not mean a disk write each), and a restart begins
above it. So a node's every run starts above any incarnation it ever announced, which is what
receivers check messages bound to them against (see :mod:`mesh._inbound`). The file is
validated when it is loaded: an unreadable one, or one whose id is not an id or whose
incarnation is not a number within range, is set aside (``identity.json.bad``, with a warning)
and a fresh identity begins, so no file can stop a node from starting.

The status URL of each running node is written to ``<runtime>/status-<pid>.json`` and
removed when it exits, so ``stagemesh status`` finds the nodes of this machine by itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from mesh._errors import MeshError
from mesh._wire import MAX_COUNTER, NODE_ID_LENGTH

__all__ = [
    "INCARNATION_RESERVE",
    "Identity",
    "PathInUse",
    "default_runtime_dir",
    "default_state_dir",
    "find_status_files",
    "locked_identity",
    "status_file",
    "write_atomic",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

INCARNATION_RESERVE = 64
"""Incarnations reserved per write of the identity file."""
_MAX_STORED = MAX_COUNTER // 2
"""A stored ceiling above this is not believed (a node needs aeons to get there honestly)."""


class PathInUse(MeshError):
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


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write *data* to *path* so that a crash or a power cut leaves the old or the new file,
    never a torn one: a temporary file in the same folder, fsync, rename, then fsync of the
    folder (which makes the rename itself durable). The project's one atomic writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # a folder that cannot be opened or synced: best effort
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write *doc* as JSON to *path* with :func:`write_atomic`."""
    write_atomic(path, json.dumps(doc).encode())


@attrs.define
class Identity:
    """The persistent identity of one node path: its id, the incarnation this run starts at,
    and the ceiling kept in its file (see the module docstring)."""

    directory: Path
    node_id: str
    incarnation: int
    ceiling: int = -1

    def save_incarnation(self, incarnation: int) -> None:
        """Make sure the file's ceiling covers *incarnation* before anything is sent at it, so
        the next start goes above it (writes only every :data:`INCARNATION_RESERVE`)."""
        if incarnation > self.ceiling:
            self.ceiling = min(incarnation + INCARNATION_RESERVE - 1, MAX_COUNTER)
            write_json_atomic(
                self.directory / "identity.json",
                {"node_id": self.node_id, "incarnation": self.ceiling},
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
        node_id, ceiling = _load(directory / "identity.json")
        identity = Identity(directory, node_id, ceiling + 1)
        identity.save_incarnation(identity.incarnation)
        try:
            yield identity
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _load(path: Path) -> tuple[str, int]:
    """The stored id and ceiling, or a new id and -1 (no file, or a file that fails
    validation: set aside, with a warning)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return secrets.token_hex(16), -1
    except (OSError, ValueError) as exc:
        problem = f"cannot be read ({exc})"
    else:
        problem = _check_identity(text)
        if not problem:
            doc = json.loads(text)
            return doc["node_id"], doc["incarnation"]
    logger.warning("identity file %s %s; starting with a new node id", path, problem)
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(path.name + ".bad"))
    return secrets.token_hex(16), -1


def _check_identity(text: str) -> str:
    """What is wrong with an identity file's text (empty if nothing)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return "is not JSON"
    if not isinstance(doc, dict):
        return "is not a JSON object"
    node_id, incarnation = doc.get("node_id"), doc.get("incarnation")
    if (
        not isinstance(node_id, str)
        or len(node_id) != NODE_ID_LENGTH
        or not all(c in "0123456789abcdef" for c in node_id)
    ):
        return "holds no valid node id"
    if type(incarnation) is not int or not 0 <= incarnation <= _MAX_STORED:
        return f"holds an incarnation out of range ({str(incarnation)[:40]})"
    return ""


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
