"""Command-line plumbing shared by every ``stagemesh`` subcommand.

Each subcommand is a :class:`Command`: it adds its flags to a parser and runs with the parsed
namespace. :func:`main` builds the parser from the commands it is given (the composition root,
``mesh.__main__``, decides which), applies ``STAGEMESH_<FLAG>`` environment defaults, sets up
logging and maps errors to exit statuses: 0 success, 2 usage error, 1 failure with a one-line
reason on stderr (a traceback only with ``--log-level debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "Command",
    "CommandFailed",
    "UsageError",
    "apply_environment_defaults",
    "configure_logging",
    "main",
]

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """Raised by a command when its arguments are wrong; the CLI exits with status 2."""


class CommandFailed(Exception):
    """Raised by a command that cannot do its job; the CLI prints the message, exits 1."""


class Command(Protocol):
    """One ``stagemesh`` subcommand."""

    name: str
    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's flags to *parser*."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; return the exit status."""


def apply_environment_defaults(
    parser: argparse.ArgumentParser, environ: dict[str, str] | None = None
) -> None:
    """Let ``STAGEMESH_<FLAG>`` set the default of every long flag of *parser*.

    A flag on the command line still wins over the environment, which wins over the built-in
    default. Repeatable flags take a comma-separated list; switches take 1/0, yes/no, true/false.
    """
    env = os.environ if environ is None else environ
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in ("help",):
            continue
        key = "STAGEMESH_" + longs[0][2:].upper().replace("-", "_")
        if key not in env:
            continue
        raw = env[key]
        value: object
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            truthy = raw.strip().lower() in ("1", "yes", "true", "on")
            value = truthy if isinstance(action, argparse._StoreTrueAction) else not truthy
        elif isinstance(action, argparse._AppendAction):
            items = [s.strip() for s in raw.split(",") if s.strip()]
            value = [action.type(s) if callable(action.type) else s for s in items]
        else:
            try:
                value = action.type(raw) if callable(action.type) else raw
            except (TypeError, ValueError) as exc:
                raise UsageError(f"{key}={raw!r}: {exc}") from exc
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


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Set up stdlib logging on stderr: readable lines, or one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        line = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(line, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    """Return the ``stagemesh`` parser with one subparser per command."""
    parser = _Parser(prog="stagemesh", description="Serverless coordination for live events.")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in commands:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(child)
        apply_environment_defaults(child)
    apply_environment_defaults(parser)
    return parser


def main(commands: Sequence[Command], argv: Sequence[str] | None = None) -> int:
    """Parse *argv*, run the chosen command and return the process exit status."""
    args: argparse.Namespace | None = None
    try:
        parser = build_parser(commands)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        configure_logging(args.log_level, args.log_format)
        by_name = {c.name: c for c in commands}
        return by_name[args.command].run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args is not None and getattr(args, "log_level", "info") == "debug":
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
