"""``stagemesh node``, ``stagemesh status`` and ``stagemesh keygen``."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from mesh._cli import CommandFailed, UsageError
from mesh._discovery import DEFAULT_BEACON_PORT, InvalidSeed, parse_seed
from mesh._extensions import Extension
from mesh._interfaces import InterfaceError
from mesh._names import InvalidName
from mesh._node import DEFAULT_GOSSIP_PORT, NodeConfig, PathHeld, open_node
from mesh._profiles import PROFILES
from mesh._state import PathInUse, default_runtime_dir, find_status_files
from mesh._wire import Keyring

__all__ = [
    "ExtensionFactory",
    "KeygenCommand",
    "NodeCommand",
    "StatusCommand",
    "load_keyring",
    "write_key_file",
]

ExtensionFactory = Callable[[argparse.Namespace], Extension | None]
"""Builds an extension from the parsed ``stagemesh node`` flags (or ``None`` if not asked for).
The composition root passes these to :class:`NodeCommand`."""


def load_keyring(path: Path) -> Keyring:
    """Read a key file: one ``<key id> <hex key>`` per line, the first is the primary key.

    Raises :class:`UsageError` naming the line and what is wrong.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    keys: dict[int, bytes] = {}
    primary: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise UsageError(f"{path}:{number}: expected '<key id> <hex key>'")
        key_id = int(parts[0])
        try:
            key = bytes.fromhex(parts[1])
        except ValueError:
            raise UsageError(f"{path}:{number}: the key is not hexadecimal") from None
        if not 1 <= key_id <= 255 or len(key) < 16:
            raise UsageError(f"{path}:{number}: key id must be 1-255 and the key >= 16 bytes")
        keys[key_id] = key
        primary = key_id if primary is None else primary
    if primary is None:
        raise UsageError(f"{path}: no key in the file")
    return Keyring(keys, primary)


def write_key_file(path: Path, key_id: int = 1) -> None:
    """Write a new random 256-bit federation key to *path* (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# stagemesh federation key: copy this file to every node of the federation\n")
        f.write(f"{key_id} {secrets.token_hex(32)}\n")


def _bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


class NodeCommand:
    """``stagemesh node``: run a node until SIGINT/SIGTERM, then leave gracefully."""

    name = "node"
    help = "run a stagemesh node"

    def __init__(self, extensions: Sequence[ExtensionFactory] = ()) -> None:
        self.extensions = list(extensions)

    def configure(self, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--federation", default="default", help="federation name (default: default)")
        add("--orchestra", default=None, help="orchestra name (default: the host name)")
        add("--name", default=None, help="node name (default: the user name)")
        add("--bind", default="0.0.0.0", help="address to bind (127.0.0.1 = loopback only)")
        add("--port", type=int, default=None, help=f"gossip port (default {DEFAULT_GOSSIP_PORT})")
        add("--interface", action="append", default=[], help="interface for discovery")
        add("--supernode", action="store_true", help="prefer this node as supernode")
        add("--conductor", action="store_true", help="make this node a conductor candidate")
        add("--seed", action="append", default=[], help="static peer HOST:PORT")
        add("--registry", default=None, help="registry URL")
        add("--key-file", type=Path, default=None, help="federation key (stagemesh keygen)")
        add("--no-mdns", action="store_true", help="do not use mDNS")
        add("--no-broadcast", action="store_true", help="do not send broadcast beacons")
        add("--broadcast-port", type=int, default=DEFAULT_BEACON_PORT)
        add("--status", type=_bind, default=("127.0.0.1", 0), help="status API HOST:PORT")
        add("--roles", type=Path, default=None, help="station roles file (conference)")
        add("--profile", choices=sorted(PROFILES), default=None, help="membership timing")
        add("--state-dir", type=Path, default=None, help="where the node keeps its identity")
        add("--clock-skew", type=float, default=0.0, help="inject clock skew (seconds)")
        add("--clock-drift", type=float, default=0.0, help="inject clock drift (ppm)")
        add("--osc", default=None, metavar="[HOST:]PORT", help="OSC bridge (on 127.0.0.1)")
        add("--osc-reply", default=None, metavar="HOST:PORT", help="where OSC answers go")
        add("--link", action="store_true", help="align the local Ableton Link session")

    def config(self, args: argparse.Namespace) -> NodeConfig:
        """The :class:`NodeConfig` the flags describe (raises :class:`UsageError`)."""
        try:
            seeds = tuple(parse_seed(s) for s in args.seed)
        except InvalidSeed as exc:
            raise UsageError(str(exc)) from None
        keyring = load_keyring(args.key_file) if args.key_file else None
        extensions = [e for e in (f(args) for f in self.extensions) if e is not None]
        if args.registry and not any(e.name == "registry" for e in extensions):
            raise UsageError("--registry is not available yet in this build")
        if args.roles and not any(e.name == "roles" for e in extensions):
            raise UsageError("--roles is not available yet in this build")
        profile = args.profile or ("loopback" if args.bind.startswith("127.") else "lan")
        kwargs: dict[str, Any] = {}
        if args.orchestra is not None:
            kwargs["orchestra"] = args.orchestra
        if args.name is not None:
            kwargs["name"] = args.name
        try:
            return NodeConfig(
                federation=args.federation,
                bind=args.bind,
                port=DEFAULT_GOSSIP_PORT if args.port is None else args.port,
                port_is_default=args.port is None,
                interfaces=tuple(args.interface),
                supernode=args.supernode,
                conductor=args.conductor,
                seeds=seeds,
                registry=args.registry,
                keyring=keyring,
                mdns=not args.no_mdns,
                broadcast=not args.no_broadcast,
                beacon_port=args.broadcast_port,
                status=args.status,
                profile=profile,
                clock_skew=args.clock_skew,
                clock_drift=args.clock_drift,
                state_dir=args.state_dir,
                extensions=tuple(extensions),
                **kwargs,
            )
        except (InvalidName, ValueError) as exc:
            raise UsageError(str(exc)) from None

    def run(self, args: argparse.Namespace) -> int:
        config = self.config(args)
        try:
            trio.run(self._main, config)
        except (PathInUse, PathHeld) as exc:
            raise CommandFailed(str(exc)) from None
        except InterfaceError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise CommandFailed(f"cannot start the node: {exc.strerror or exc}") from None
        return 0

    async def _main(self, config: NodeConfig) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_node(config) as node:
                print(
                    f"ready path={node.path} id={node.id} "
                    f"gossip={node.address[0]}:{node.address[1]} status={node.status_url}",
                    flush=True,
                )
                async for _ in signals:
                    break


class StatusCommand:
    """``stagemesh status``: print a node's view."""

    name = "status"
    help = "show the view of a running node (default: every node on this machine)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("url", nargs="?", help="status URL of a node")
        parser.add_argument("--json", action="store_true", help="print the raw status JSON")

    def run(self, args: argparse.Namespace) -> int:
        urls = (
            [args.url]
            if args.url
            else [d["url"] for d in find_status_files(default_runtime_dir()) if d.get("url")]
        )
        if not urls:
            raise CommandFailed("no running node found on this machine; give its status URL")
        docs = []
        for url in urls:
            try:
                response = httpx.get(url.rstrip("/") + "/api/status", timeout=5.0)
                response.raise_for_status()
                docs.append(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                raise CommandFailed(f"cannot read {url}: {exc}") from None
        if args.json:
            print(json.dumps(docs[0] if args.url else docs, indent=2))
        else:
            print("\n\n".join(format_status(doc) for doc in docs))
        return 0


def format_status(doc: dict[str, Any]) -> str:
    """A readable table of one status document."""
    node = doc["node"]
    clock = doc.get("clock") or {}
    lines = [
        f"{node['path']}  federation={node['federation']}  id={node['id'][:12]}  "
        f"gossip={node['address']}",
        f"conductor={doc.get('conductor') or 'none'}  "
        f"federation_time={clock.get('federation_time', 0.0):.3f}  "
        f"synced={'yes' if clock.get('synced') else 'no'}",
    ]
    rows = [("PATH", "STATE", "ADDRESS", "INC", "POSTS")]
    for m in doc["members"]:
        posts = " ".join(
            p for p, on in (("conductor", m["conductor"]), ("supernode", m["supernode"])) if on
        )
        rows.append((m["path"], m["state"], m["address"], str(m["incarnation"]), posts))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


class KeygenCommand:
    """``stagemesh keygen``: write a new federation key file."""

    name = "keygen"
    help = "write a new federation key to a file (then pass it to every node with --key-file)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("path", type=Path, help="where to write the key (must not exist)")
        parser.add_argument("--key-id", type=int, default=1, help="key id, 1-255 (default 1)")

    def run(self, args: argparse.Namespace) -> int:
        if not 1 <= args.key_id <= 255:
            raise UsageError("--key-id must be in 1..255")
        try:
            write_key_file(args.path, args.key_id)
        except FileExistsError:
            raise CommandFailed(f"{args.path} exists; not overwriting a key") from None
        except OSError as exc:
            raise CommandFailed(f"cannot write {args.path}: {exc.strerror}") from None
        print(f"wrote federation key {args.key_id} to {args.path}", file=sys.stderr)
        return 0
