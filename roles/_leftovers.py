"""No role process outlives its station: the guardian process and the record of what runs.

Two guards, for two ways a station can end without stopping its processes:

* :class:`Guardian` runs the guardian process (:mod:`roles._guardian`) and tells it about every
  role process group: when the station dies, ``kill -9`` included, the guardian stops them at
  once (SIGTERM, the role's stop grace, SIGKILL).
* :class:`ProcessRecord` keeps ``processes.json`` in the station's state directory: every running
  role process by pid *and* start time. A station that opens the directory takes its lock
  (``processes.lock``; the kernel releases it when the holder dies, so whoever gets it knows the
  recorder is gone), reads what an earlier run left there and, before it starts anything, stops
  what is still there (:func:`roles._guardian.stop_processes`; a recycled pid, same number but
  another start time, is left alone). This catches what the guardian could not (it was killed
  too, or the machine's processes were killed together).

After a reboot the record names nothing: its boot id no longer matches, and it is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import attrs
import trio

from mesh._state import write_json_atomic
from roles._config import read_json_file
from roles._errors import ConfigFileError, SupervisorInUse
from roles._guardian import boot_id, proc_stat

__all__ = [
    "LOCK_FILE_NAME",
    "RECORD_FILE_NAME",
    "Guardian",
    "ProcessRecord",
    "RecordedProcess",
    "SupervisorInUse",
]

logger = logging.getLogger("roles._supervisor")

#: The file in the state directory that lists the running role processes.
RECORD_FILE_NAME = "processes.json"
#: The lock file held by the supervisor that uses the state directory.
LOCK_FILE_NAME = "processes.lock"
_RECORD_FORMAT = 1
_GUARDIAN_SCRIPT = str(Path(__file__).with_name("_guardian.py"))


@attrs.frozen
class RecordedProcess:
    """One role process in ``processes.json``: who it is (``pid`` and ``start_time``, clock
    ticks after boot, from ``/proc/<pid>/stat``), what it runs, and its stop ``grace``."""

    role: str
    uuid: str
    pid: int
    start_time: int
    grace: float
    argv: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {**attrs.asdict(self), "argv": list(self.argv)}

    @classmethod
    def from_dict(cls, doc: Any) -> RecordedProcess:
        """Read the JSON form; raise :class:`ValueError` if it is not one."""
        if not isinstance(doc, dict):
            raise ValueError(f"a process record must be an object, found {doc!r}")
        try:
            record = cls(
                role=str(doc["role"]),
                uuid=str(doc["uuid"]),
                pid=doc["pid"],
                start_time=doc["start_time"],
                grace=float(doc.get("grace", 5.0)),
                argv=tuple(str(a) for a in doc.get("argv", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a process record lacks {exc}") from None
        if not all(type(v) is int and v > 0 for v in (record.pid, record.start_time)):
            raise ValueError("'pid' and 'start_time' must be positive integers")
        if not 0 <= record.grace <= 300:
            raise ValueError("'grace' must be between 0 and 300 seconds")
        return record


def start_time_of(pid: int) -> int | None:
    """Return the start time of *pid* (clock ticks after boot), ``None`` if it is gone."""
    stat = proc_stat(pid)
    return None if stat is None else stat.start_time


class ProcessRecord:
    """``processes.json`` in *state_dir*: the role processes running now (see the module doc).

    :meth:`acquire` takes the directory (raising :class:`SupervisorInUse` if another supervisor
    has it) and returns what an earlier run left recorded; :meth:`add`/:meth:`remove` keep the
    file current; :meth:`release` writes it a last time and lets the directory go. (acquire and
    release block: run them in a thread.)
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir)
        self.path = self.directory / RECORD_FILE_NAME
        self._boot = boot_id()
        self._lock: IO[str] | None = None
        self._running: dict[int, RecordedProcess] = {}
        self._save_lock = trio.Lock()
        #: problems met reading the file of an earlier run (logged; the file is then ignored)
        self.read_error: str | None = None

    def acquire(self) -> list[RecordedProcess]:
        """Lock the directory and return the processes an earlier run recorded (same boot)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = open(self.directory / LOCK_FILE_NAME, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise SupervisorInUse(
                f"{self.directory} is in use by another station ({holder}); one state "
                "directory runs one copy of each role instance"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        self._lock = lock
        return self._read()

    def _read(self) -> list[RecordedProcess]:
        try:
            doc = read_json_file(self.path, "the process record")
        except FileNotFoundError:
            return []
        except ConfigFileError as exc:
            return self._ignore(str(exc))
        if not isinstance(doc, dict) or doc.get("format") != _RECORD_FORMAT:
            return self._ignore(f"not a format {_RECORD_FORMAT} process record")
        if doc.get("boot_id") != self._boot:
            return []  # written before this boot: none of its processes exists any more
        found = doc.get("processes")
        if not isinstance(found, list):
            return self._ignore("'processes' must be a list")
        records = []
        for index, item in enumerate(found):
            try:
                records.append(RecordedProcess.from_dict(item))
            except ValueError as exc:
                self._ignore(f"at $.processes[{index}]: {exc}")
        return records

    def _ignore(self, problem: str) -> list[RecordedProcess]:
        self.read_error = f"{self.path}: {problem}"
        logger.warning("ignoring the record of an earlier run: %s", self.read_error)
        return []

    async def add(self, record: RecordedProcess) -> None:
        """Record a process that was just started."""
        self._running[record.pid] = record
        await self.save()

    async def remove(self, pid: int) -> None:
        """Forget a process that is gone."""
        if self._running.pop(pid, None) is not None:
            await self.save()

    async def save(self) -> None:
        """Write the file as it is now (in a thread; one write at a time, each of the latest
        state, so the last one written is the current one)."""
        async with self._save_lock:
            await trio.to_thread.run_sync(self._write)

    def _write(self) -> None:
        doc = {
            "format": _RECORD_FORMAT,
            "boot_id": self._boot,
            "station_pid": os.getpid(),
            "processes": [r.to_dict() for _, r in sorted(self._running.items())],
        }
        try:
            write_json_atomic(self.path, doc)
        except OSError as exc:
            logger.error("cannot write %s: %s", self.path, exc)

    def release(self) -> None:
        """Write the (normally empty) record and unlock the directory."""
        if self._lock is None:
            return
        self._write()
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None


class Guardian:
    """Runs the guardian process (restarting it if it dies) and tells it what to watch."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[int, float]] = {}
        self._process: trio.Process | None = None
        self._lock = trio.Lock()
        self._closed = trio.Event()
        #: how many times the guardian had to be started again
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The guardian's pid (``None`` before it runs)."""
        return None if self._process is None else self._process.pid

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a guardian running until :meth:`aclose`; ready once the first one was tried."""
        ready = False
        while not self._closed.is_set():
            process = await self._start()
            if not ready:
                ready = True
                task_status.started()
            if process is None:
                await trio.sleep(5.0)
                continue
            status = await process.wait()
            if self._closed.is_set():
                return
            self.restarts += 1
            logger.warning(
                "the guardian of the role processes ended (%s); starting another", status
            )
            await trio.sleep(0.2)  # a guardian that cannot run must not spin

    async def _start(self) -> trio.Process | None:
        """Start a guardian that knows everything watched now (on its command line: it never
        runs without knowing, however soon the station dies after starting it)."""
        async with self._lock:
            watched = [f"{pid}:{start}:{grace}" for pid, (start, grace) in self._watched.items()]
            try:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-I", "-S", _GUARDIAN_SCRIPT, str(os.getpid()), *watched],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                logger.error("cannot start the guardian of the role processes: %s", exc)
                return None
            self._process = process
            return process

    async def watch(self, pid: int, start_time: int, grace: float) -> None:
        """Have the guardian stop process group *pid* if the station dies."""
        self._watched[pid] = (start_time, grace)
        async with self._lock:
            await self._write(f"watch {pid} {start_time} {grace}\n")

    async def forget(self, pid: int) -> None:
        """The group *pid* is gone: stop watching it."""
        if self._watched.pop(pid, None) is not None:
            async with self._lock:
                await self._write(f"forget {pid}\n")

    async def _write(self, text: str) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        # If it died, run() starts another and tells it everything.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await process.stdin.send_all(text.encode("ascii"))

    async def aclose(self) -> None:
        """Close the guardian's stdin (it stops what is still watched) and wait for it."""
        self._closed.set()
        process = self._process
        if process is None:
            return
        async with self._lock:
            if process.stdin is not None:
                await process.stdin.aclose()
        grace = max((g for _, g in self._watched.values()), default=0.0)
        with trio.move_on_after(grace + 5.0):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
