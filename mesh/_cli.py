"""Command-line plumbing shared by every ``stagemesh`` subcommand.

Each subcommand is a :class:`Command`: it adds its flags to a parser and runs with the parsed
namespace. :func:`main` is given :class:`CommandEntry` values (the composition root,
``mesh.__main__``, decides which): a name, a one-line summary and a loader, so that
``stagemesh --help`` imports no command and ``stagemesh status`` imports only ``status``. It
applies the ``STAGEMESH_<FLAG>`` environment defaults of the command that runs (and of no other),
sets up logging (library loggers stay at WARNING unless ``--log-level debug``) and maps errors to
exit statuses:

====  =========================================================================
0     success
1     a runtime failure: a port is taken, a peer holds this path, no node answers
2     a usage or configuration error: a bad flag, variable, name, address or file
130   interrupted by Ctrl-C (SIGINT); 128 + N for another signal N
====  =========================================================================

Errors print one line on stderr, ``error: <cause>``, also when the cause was raised inside a
trio nursery (exception groups are unwrapped); a traceback only with ``--log-level debug``.

This module is imported by every command, so it imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Command",
    "CommandEntry",
    "CommandFailed",
    "UsageError",
    "apply_environment_defaults",
    "configure_logging",
    "environment_variable",
    "first_cause",
    "main",
]

logger = logging.getLogger(__name__)

OWN_LOGGERS = ("mesh", "roles", "registry_bridge", "__main__")
"""Top-level names of the loggers whose INFO lines are shown; every other logger (httpx,
hypercorn, zeroconf...) shows WARNING and above unless ``--log-level debug``."""


class UsageError(Exception):
    """Raised by a command when its arguments are wrong; the CLI exits with status 2."""


class CommandFailed(Exception):
    """Raised by a command that cannot do its job; the CLI prints the message, exits 1."""


class Command(Protocol):
    """One ``stagemesh`` subcommand.

    A command may also have an ``environment`` attribute, a mapping from one of its long flags
    to the environment variable that sets it, for a flag whose ``STAGEMESH_<FLAG>`` another
    command uses with another meaning (``node --bind`` is ``STAGEMESH_NODE_BIND``, because
    ``STAGEMESH_BIND`` is the registry's ``HOST:PORT``).
    """

    name: str
    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's flags to *parser*."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; return the exit status."""


@dataclass(frozen=True)
class CommandEntry:
    """A subcommand as ``stagemesh --help`` lists it: its name and summary, and *load*, which
    imports and builds the :class:`Command` only when that subcommand runs."""

    name: str
    help: str
    load: Callable[[], Command]


def environment_variable(
    action: argparse.Action, names: Mapping[str, str] | None = None
) -> str | None:
    """The environment variable that sets *action*'s flag: the one *names* gives for its long
    option, else ``STAGEMESH_<FLAG>``; ``None`` for positionals, ``--help`` and ``--version``."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if not longs or isinstance(action, argparse._HelpAction | argparse._VersionAction):
        return None
    if names and longs[0] in names:
        return names[longs[0]]
    return "STAGEMESH_" + longs[0][2:].upper().replace("-", "_")


_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off", "")


class _AppendUnlessGiven(argparse._AppendAction):
    """argparse's ``append``, except that the first value given on the command line replaces
    the list the environment gave instead of extending it (a flag beats the environment)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is self.default:
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def _convert(action: argparse.Action, text: str) -> Any:
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"{value!r} is not one of {choices}")
    return value


def apply_environment_defaults(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
) -> None:
    """Let the environment set the default of every long flag of *parser* (see
    :func:`environment_variable` for the names; *names* maps a flag to another variable).

    A flag on the command line still wins over the environment, which wins over the built-in
    default. Repeatable flags take a comma-separated list; switches take 1/0, yes/no,
    true/false, on/off. A value that does not fit raises :class:`UsageError` naming the
    variable. Call it only for the command that runs: ``main`` does, so one command's variable
    never breaks another command.
    """
    env = os.environ if environ is None else environ
    for action in parser._actions:
        key = environment_variable(action, names)
        if key is None or key not in env:
            continue
        raw = env[key]
        value: object
        try:
            if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
                word = raw.strip().lower()
                if word not in _TRUE + _FALSE:
                    raise ValueError("give 1 or 0 (yes/no, true/false, on/off)")
                truthy = word in _TRUE
                value = truthy if isinstance(action, argparse._StoreTrueAction) else not truthy
            elif isinstance(action, argparse._AppendAction):
                items = [s.strip() for s in raw.split(",") if s.strip()]
                value = [_convert(action, s) for s in items]
                action.__class__ = _AppendUnlessGiven
            else:
                value = _convert(action, raw)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"{key}={raw!r}: {exc}") from None
        action.default = value


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _QuietLibraries(logging.Filter):
    """Let through this project's records, and other libraries' warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in OWN_LOGGERS


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Set up stdlib logging on stderr: readable lines, or one JSON object per line. Library
    loggers (httpx, hypercorn, zeroconf...) show only warnings and errors unless *level* is
    ``debug``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        line = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(line, "%H:%M:%S"))
    if level.lower() != "debug":
        handler.addFilter(_QuietLibraries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _Parser(argparse.ArgumentParser):
    """Raises :class:`UsageError` instead of exiting, and runs its *prepare* hook (load the
    command, add its flags, read its environment) the first time it parses: argparse asks a
    subcommand's parser to parse only when that subcommand was chosen."""

    prepare: Callable[[], None] | None = None

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        prepare, self.prepare = self.prepare, None
        if prepare is not None:
            prepare()
        return super().parse_known_args(args, namespace)


def _version() -> str:
    from mesh import __version__

    return f"stagemesh {__version__}"


def build_parser(commands: Sequence[CommandEntry]) -> argparse.ArgumentParser:
    """Return the ``stagemesh`` parser with one subparser per command (each filled in only when
    its command is chosen)."""
    parser = _Parser(prog="stagemesh", description="Serverless coordination for live events.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for entry in commands:
        child = sub.add_parser(entry.name, help=entry.help, description=entry.help)
        assert isinstance(child, _Parser)
        child.prepare = _preparer(entry, child)
    apply_environment_defaults(parser)
    return parser


def _preparer(entry: CommandEntry, parser: argparse.ArgumentParser) -> Callable[[], None]:
    def prepare() -> None:
        command = entry.load()
        command.configure(parser)
        parser.set_defaults(_command=command)
        names: Mapping[str, str] = getattr(command, "environment", None) or {}
        apply_environment_defaults(parser, names=names)
        own = "".join(f"; {flag} from {variable}" for flag, variable in names.items())
        parser.epilog = (
            f"Each flag can also come from the environment, as STAGEMESH_<FLAG>{own}; "
            "a flag beats the environment."
        )

    return prepare


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def first_cause(exc: BaseException) -> BaseException:
    """The exception that explains *exc*: *exc* itself, or for an exception group (a trio
    nursery wraps what its tasks raise, in groups nested as deep as the nurseries) its first
    ``KeyboardInterrupt``, else its first ``Exception``, at any depth."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = list(_leaves(exc))
    for kind in (KeyboardInterrupt, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else exc


def main(commands: Sequence[CommandEntry], argv: Sequence[str] | None = None) -> int:
    """Parse *argv*, run the chosen command and return the process exit status."""
    debug = False
    try:
        parser = build_parser(commands)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        debug = args.log_level == "debug"
        configure_logging(args.log_level, args.log_format)
        command: Command = args._command
        return command.run(args)
    except SystemExit:
        raise  # --help and --version
    except BaseException as raised:
        exc = first_cause(raised)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, UsageError | CommandFailed):
            print(f"error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, UsageError) else 1
        if debug or not isinstance(exc, Exception):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
