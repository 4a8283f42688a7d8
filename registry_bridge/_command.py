"""``stagemesh registry``: run the registry server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

import trio

from mesh._cli import CommandFailed, UsageError
from registry_bridge._app import create_app
from registry_bridge._server import DEFAULT_BIND, parse_bind, serve_registry
from registry_bridge._store import DEFAULT_TTL, RegistryStore

__all__ = ["RegistryCommand", "default_db_path"]

logger = logging.getLogger(__name__)


def default_db_path() -> Path:
    """``$XDG_STATE_HOME/stagemesh/registry.db``, else ``~/.local/state/stagemesh/registry.db``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "stagemesh" / "registry.db"


def _read_password(args: argparse.Namespace) -> str | None:
    if args.admin_password_file:
        try:
            text = Path(args.admin_password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandFailed(f"cannot read admin password file: {exc}") from None
        password = text.strip("\r\n")
        if not password:
            raise CommandFailed(f"admin password file {args.admin_password_file} is empty")
        return password
    return os.environ.get("STAGEMESH_ADMIN_PASSWORD") or None


class RegistryCommand:
    """``stagemesh registry``: the HTTP registry (JSON API, legacy text API, HTML pages)."""

    name = "registry"
    help = "run the HTTP registry that joins orchestras on different networks"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--bind",
            default=DEFAULT_BIND,
            metavar="HOST:PORT",
            help="address to listen on (default %(default)s; 0.0.0.0:7480 exposes it to the "
            "network)",
        )
        parser.add_argument(
            "--db", default=None, metavar="PATH", help=f"SQLite file (default {default_db_path()})"
        )
        parser.add_argument(
            "--admin-password-file",
            default=None,
            metavar="PATH",
            help="file holding the admin password (else STAGEMESH_ADMIN_PASSWORD; "
            "without either, delete and reset are refused)",
        )
        parser.add_argument(
            "--ttl",
            type=float,
            default=DEFAULT_TTL,
            metavar="SECONDS",
            help="a registration expires this long after its last heartbeat (default %(default)s)",
        )

    def run(self, args: argparse.Namespace) -> int:
        try:
            parse_bind(args.bind)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not args.ttl > 0:
            raise UsageError(f"--ttl must be positive, not {args.ttl}")
        db = Path(args.db) if args.db else default_db_path()
        password = _read_password(args)
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            store = RegistryStore(db, ttl=args.ttl)
        except Exception as exc:
            raise CommandFailed(f"cannot open database {db}: {exc}") from None
        try:
            trio.run(self._serve, store, args.bind, db, password)
        except OSError as exc:
            raise CommandFailed(f"cannot serve on {args.bind}: {exc}") from None
        finally:
            store.close()
        return 0

    async def _serve(self, store: RegistryStore, bind: str, db: Path, password: str | None) -> None:
        app = create_app(store, password)
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    lambda task_status: serve_registry(
                        app, bind, shutdown_trigger=stop.wait, task_status=task_status
                    )
                )
                if password is None:
                    logger.warning("no admin password configured: delete and reset are disabled")
                print(f"ready registry={url} db={db}", flush=True)
                async for signum in signals:
                    logger.info("stopping on %s", signal.Signals(signum).name)
                    stop.set()
                    break
