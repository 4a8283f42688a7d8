"""The code blocks of ``docs/*.md``: which run, and how (used by ``tests/test_docs.py``).

A fenced block runs when its info string is exactly ``python`` or ``sh``. Any other info string
does not run: ``text``, ``console``, ``json``, no language at all, or a language followed by
``no-run`` (```` ```python no-run ```` for a sketch of an API, ```` ```sh no-run ```` for a
command that needs another machine, a real device or minutes of wall time). ``no-run`` blocks are
still checked: Python must compile (top-level ``await`` allowed), and every ``stagemesh`` command
must parse with the real command-line parser.

Run as a script (``python docsnippets.py SPEC.json``), this file is the driver that runs one
block; the test starts it inside a new network namespace holding only loopback, so whatever a
block starts (nodes bound to 0.0.0.0 included) can reach nothing but that namespace, and fixed
ports (7471, 7480) are free. The driver:

* ``python``: runs the block as a program (time limit 120 s); it must exit 0 with no traceback.
* ``sh``: runs the block line by line (``\\`` continues a line) with ``stagemesh`` meaning this
  checkout. A line ending in ``&``, and every ``stagemesh node``, ``stagemesh registry`` or
  ``stagemesh demo`` (they run until stopped, as in a second terminal), starts in the
  background and must print its ``ready`` line within 60 s; ``kill %1 %2`` stops those jobs
  with SIGTERM. A line that only sets variables (``REGISTRY=http://...``,
  ``export NAME=value``) sets them for the lines after it. Any other line runs in the
  foreground (time limit 120 s) and must exit 0. Jobs left at the end get SIGINT; every job
  must exit 0 (a graceful leave) and no output may hold a traceback.
* Before a block, the driver starts what it uses but does not start itself: a registry on
  127.0.0.1:7480 when the block mentions port 7480, a node when it runs ``stagemesh status`` or
  ``stagemesh roles`` (``stagemesh demo`` starts both).
* Only these programs may run: ``stagemesh``, ``python3``/``python``, ``curl``, ``echo``,
  ``cat``, ``printf`` and ``kill %N``; anything else is an error asking for ``no-run``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RUNNABLE = ("python", "sh")
NO_RUN = "no-run"
PROGRAMS = ("stagemesh", "python3", "python", "curl", "echo", "cat", "printf")
SERVERS = ("node", "registry", "demo")
"""``stagemesh`` subcommands that run until stopped (each prints a ``ready`` line)."""
READY_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is, its info string's language and flags, its text."""

    file: str
    line: int
    lang: str
    flags: tuple[str, ...]
    text: str

    @property
    def id(self) -> str:
        return f"{Path(self.file).name}:{self.line}"

    @property
    def runs(self) -> bool:
        """Whether the block runs (an exact ``python`` or ``sh`` info string)."""
        return self.lang in RUNNABLE and not self.flags

    @property
    def checked(self) -> bool:
        """Whether a block that does not run is still checked (``python no-run``,
        ``sh no-run``)."""
        return self.lang in RUNNABLE and self.flags == (NO_RUN,)


class SnippetError(ValueError):
    """Raised for a fence that is never closed."""


def snippets(path: Path) -> list[Snippet]:
    """The fenced blocks of one Markdown file, in order."""
    found: list[Snippet] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        index += 1
        if not match:
            continue
        fence, indent, start = match["fence"], match["indent"], index
        words = match["info"].split()
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index].removeprefix(indent))
            index += 1
        if index == len(lines):
            raise SnippetError(f"{path}:{start}: the {fence} block is never closed")
        index += 1
        lang = words[0].lower() if words else ""
        found.append(Snippet(str(path), start, lang, tuple(words[1:]), "\n".join(body) + "\n"))
    return found


def commands(text: str) -> list[str]:
    """The command lines of a shell block: continuations joined, blanks and comments out."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append(stripped)
    return out


def words(line: str) -> list[str]:
    """A command line's words without leading ``NAME=value`` assignments and trailing ``&``."""
    parts = shlex.split(line, comments=True)
    while parts and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", parts[0]):
        parts.pop(0)
    if parts and parts[-1] == "&":
        parts.pop()
    return parts


def stagemesh_argv(line: str) -> list[str] | None:
    """The arguments after ``stagemesh`` in *line* (up to a pipe, ``;``, ``&&``, ``||`` or a
    redirection), or ``None`` if it runs something else or its arguments hold a ``$``
    substitution (a value only the shell knows)."""
    parts = words(line)
    if not parts or parts[0] != "stagemesh":
        return None
    argv: list[str] = []
    for part in parts[1:]:
        if part in ("|", "||", "&&", ";") or part.startswith((">", "<", "2>")):
            break
        argv.append(part)
    return None if any("$" in a for a in argv) else argv


# ---------------------------------------------------------------- the driver (in the namespace)


@dataclass
class Job:
    """A background process of a shell block."""

    line: str
    process: subprocess.Popen[str]
    output: list[str]


class Failure(Exception):
    """A block did not do what it says."""


def _pump(process: subprocess.Popen[str], sink: list[str], ready: threading.Event) -> None:
    assert process.stdout is not None
    for text in process.stdout:
        sink.append(text)
        if text.startswith("ready "):
            ready.set()


def _start(line: str, env: dict[str, str], cwd: Path) -> Job:
    command = line.removesuffix("&").strip()
    process = subprocess.Popen(
        ["sh", "-c", f"exec {command}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job = Job(line, process, [])
    ready = threading.Event()
    threading.Thread(target=_pump, args=(process, job.output, ready), daemon=True).start()
    argv = stagemesh_argv(line)
    if argv is not None and any(a in SERVERS for a in argv[:3]):
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.wait(0.05):
            if process.poll() is not None:
                why = f"exited {process.returncode} before its ready line"
            elif time.monotonic() > deadline:
                why = f"was not ready within {READY_TIMEOUT:g} s"
            else:
                continue
            time.sleep(0.1)  # the reader thread takes the last lines
            raise Failure(f"{line!r} {why}: {''.join(job.output)[-2000:]}")
    return job


def _stop(job: Job, signum: int) -> None:
    if job.process.poll() is None:
        job.process.send_signal(signum)
    try:
        job.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        job.process.kill()
        job.process.wait()
        raise Failure(
            f"{job.line!r} did not stop within 20 s of {signal.Signals(signum).name}"
        ) from None
    if job.process.returncode != 0:
        raise Failure(
            f"{job.line!r} exited {job.process.returncode}: {''.join(job.output)[-2000:]}"
        )


def _fixtures(snippet: Snippet) -> list[str]:
    lines = commands(snippet.text) if snippet.lang == "sh" else []
    argvs = [a for a in (stagemesh_argv(line) for line in lines) if a is not None]
    starts = {a[0] for a in argvs if a}
    needed = []
    if ":7480" in snippet.text and not starts & {"registry", "demo"}:
        needed.append("stagemesh registry")
    if starts & {"status", "roles"} and not starts & {"node", "demo"}:
        needed.append("stagemesh node --bind 127.0.0.1")
    return needed


def _assignments(line: str) -> dict[str, str] | None:
    """The variables a line such as ``REGISTRY=http://...`` (or ``export ...``) sets, or
    ``None`` when the line runs a command."""
    parts = shlex.split(line, comments=True)
    if parts and parts[0] == "export":
        parts = parts[1:]
    if not parts or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", p) for p in parts):
        return None
    return dict(p.split("=", 1) for p in parts)


def _check_program(line: str) -> None:
    parts = words(line)
    if parts and parts[0] == "kill":
        if not all(re.fullmatch(r"%\d+", p) for p in parts[1:]) or len(parts) < 2:
            raise Failure(f"{line!r}: only 'kill %N...' (a job of this block) can run")
        return
    if not parts or parts[0] not in PROGRAMS:
        raise Failure(
            f"{line!r}: the docs runner runs only {', '.join(PROGRAMS)}; "
            "mark the block 'sh no-run' if it must not run"
        )


def run_block(snippet: Snippet, work: Path, env: dict[str, str]) -> None:
    """Run one block in *work* (see the module docstring); raises :class:`Failure`."""
    jobs: list[Job] = []
    outputs: list[str] = []
    try:
        jobs.extend(_start(fixture, env, work) for fixture in _fixtures(snippet))
        if snippet.lang == "python":
            program = work / "snippet.py"
            program.write_text(snippet.text)
            lines = ["python3 snippet.py"]
        else:
            lines = commands(snippet.text)
        mine: list[Job] = []
        for line in lines:
            assigned = _assignments(line)
            if assigned is not None:  # for the lines after it, as in a shell
                env = {**env, **assigned}
                continue
            _check_program(line)
            parts = words(line)
            if parts[0] == "kill":
                for spec in parts[1:]:
                    _stop(mine[int(spec[1:]) - 1], signal.SIGTERM)
                continue
            argv = stagemesh_argv(line) or []
            if line.endswith("&") or any(a in SERVERS for a in argv[:3]):
                mine.append(_start(line, env, work))
                jobs.append(mine[-1])
                continue
            try:
                done = subprocess.run(
                    ["sh", "-c", line],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                raise Failure(f"{line!r} did not finish within {COMMAND_TIMEOUT:g} s") from None
            outputs.append(done.stdout + done.stderr)
            if done.returncode != 0:
                raise Failure(f"{line!r} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        for job in jobs:
            _stop(job, signal.SIGINT)
    finally:
        for job in jobs:
            if job.process.poll() is None:
                job.process.kill()
                job.process.wait()
    for text in [*outputs, *("".join(j.output) for j in jobs)]:
        if "Traceback (most recent call last)" in text:
            raise Failure(f"a traceback:\n{text}")


def _environment(work: Path) -> dict[str, str]:
    bin_dir = work / "bin"
    bin_dir.mkdir()
    python = shlex.quote(sys.executable)
    for name, target in (
        ("stagemesh", f"{python} -m mesh"),
        ("python3", python),
        ("python", python),
    ):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEMESH_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(work / "home"),
        XDG_STATE_HOME=str(work / "state"),
        XDG_RUNTIME_DIR=str(work / "run"),
        STAGEMESH_STATE_DIR=str(work / "state" / "stagemesh"),
        STAGEMESH_RUNTIME_DIR=str(work / "run" / "stagemesh"),
    )
    return env


def main(spec_path: str) -> int:
    """Run the block described by the JSON file *spec_path* (fields of :class:`Snippet` plus
    ``work``, an empty folder, and ``root``, the checkout) and report on stderr."""
    spec = json.loads(Path(spec_path).read_text())
    work, root = Path(spec.pop("work")), Path(spec.pop("root"))
    snippet = Snippet(**{**spec, "flags": tuple(spec["flags"])})
    for name in ("examples", "docs"):
        (work / name).symlink_to(root / name)
    try:
        run_block(snippet, work, _environment(work))
    except Failure as exc:
        print(f"{snippet.id}: {exc}", file=sys.stderr)
        return 1
    return 0


def spec(snippet: Snippet, work: Path, root: Path) -> str:
    """The JSON the driver reads for *snippet*."""
    return json.dumps({**asdict(snippet), "work": str(work), "root": str(root)})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
