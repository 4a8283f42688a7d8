"""``stagemesh node``, ``stagemesh status`` and ``stagemesh keygen``.

``status`` and ``keygen`` must start fast (``stagemesh status`` in well under 150 ms), and they
import this module: the node's heavy imports (trio, the node runtime, zeroconf, the wire codec)
happen inside :class:`NodeCommand`'s methods, and ``status`` reads the nodes with the standard
library's HTTP client.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh._cli import CommandFailed, UsageError, first_cause
from mesh._ports import DEFAULT_BEACON_PORT, DEFAULT_GOSSIP_PORT, GOSSIP_SEARCH

if TYPE_CHECKING:
    from mesh._node import NodeConfig
    from mesh._plugins import ExtensionPlugin

__all__ = [
    "KeygenCommand",
    "NodeCommand",
    "StatusCommand",
    "format_status",
]

DEFAULT_STATUS_TIMEOUT = 2.0
"""Seconds ``stagemesh status`` waits for each node."""


def _bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def bind_address(text: str) -> str:
    """The IPv4 address ``--bind`` names: an address as given, ``localhost`` as 127.0.0.1.

    Other host names are refused (a name may resolve to an address of no interface, such as
    Debian's 127.0.1.1 for the host's own name, or wait on DNS): raises :class:`UsageError`.
    """
    if text.strip().lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise UsageError(
            f"--bind {text}: give an IPv4 address (0.0.0.0 for every interface, 127.0.0.1 for "
            f"this machine only, or one address of this host), not a host name"
        ) from None


class NodeCommand:
    """``stagemesh node``: run a node until SIGINT/SIGTERM, then leave gracefully.

    It defines the node's own flags; each extension the composition root offers (an
    :class:`~mesh._plugins.ExtensionPlugin`) adds its own and builds itself from its typed
    config and the node's.
    """

    name = "node"
    help = "run a stagemesh node"
    environment = {"--bind": "STAGEMESH_NODE_BIND"}
    """``STAGEMESH_BIND`` is the registry's ``HOST:PORT``; the node's address has its own."""

    def __init__(self, extensions: Sequence[ExtensionPlugin[Any]] = ()) -> None:
        self.extensions = list(extensions)

    def configure(self, parser: argparse.ArgumentParser) -> None:
        from mesh._profiles import PROFILES

        search = f"{GOSSIP_SEARCH.start + 1}-{GOSSIP_SEARCH.stop - 1}"
        add = parser.add_argument
        add("--federation", default="default", help="federation name (default: default)")
        add("--orchestra", default=None, help="orchestra name (default: the host name)")
        add("--name", default=None, help="node name (default: the user name)")
        add(
            "--bind",
            default="0.0.0.0",
            help="IPv4 address to bind: 0.0.0.0 (default, every interface), 127.0.0.1 (this "
            "machine only; localhost means the same) or one address of this host",
        )
        add(
            "--port",
            type=int,
            default=None,
            help=f"gossip port (default {DEFAULT_GOSSIP_PORT}, else the first free of {search}, "
            "else any free port; 0 = any free port)",
        )
        add("--interface", action="append", default=[], help="interface for discovery")
        add("--supernode", action="store_true", help="prefer this node as supernode")
        add("--conductor", action="store_true", help="make this node a conductor candidate")
        add("--seed", action="append", default=[], help="static peer HOST:PORT")
        add("--key-file", type=Path, default=None, help="federation key (stagemesh keygen)")
        add("--no-mdns", action="store_true", help="do not use mDNS")
        add("--no-broadcast", action="store_true", help="do not send broadcast beacons")
        add("--broadcast-port", type=int, default=DEFAULT_BEACON_PORT)
        add("--status", type=_bind, default=("127.0.0.1", 0), help="status API HOST:PORT")
        add("--profile", choices=sorted(PROFILES), default=None, help="membership timing")
        add("--state-dir", type=Path, default=None, help="where the node keeps its identity")
        add("--clock-skew", type=float, default=0.0, help="inject clock skew (seconds)")
        add("--clock-drift", type=float, default=0.0, help="inject clock drift (ppm)")
        for plugin in self.extensions:
            plugin.configure(parser)

    def config(self, args: argparse.Namespace) -> NodeConfig:
        """The :class:`NodeConfig` the flags describe, with the extensions they ask for (raises
        :class:`UsageError`, or :class:`CommandFailed` for an extension that cannot start)."""
        import attrs

        from mesh._discovery import InvalidSeed, parse_seed
        from mesh._interfaces import InterfaceError, choose_interfaces, local_addresses
        from mesh._names import InvalidName
        from mesh._node import NodeConfig

        bind = bind_address(args.bind)
        try:
            # The rule discovery applies at start, applied now: a wrong address or interface
            # is a usage error before anything starts (and the message lists what exists).
            choose_interfaces(bind, tuple(args.interface), local_addresses())
        except InterfaceError as exc:
            raise UsageError(str(exc)) from None
        try:
            seeds = tuple(parse_seed(s) for s in args.seed)
        except InvalidSeed as exc:
            raise UsageError(str(exc)) from None
        from mesh._keys import load_keyring

        keyring = load_keyring(args.key_file) if args.key_file else None
        configs = [(plugin, plugin.config(args)) for plugin in self.extensions]
        profile = args.profile or ("loopback" if bind.startswith("127.") else "lan")
        kwargs: dict[str, Any] = {}
        if args.orchestra is not None:
            kwargs["orchestra"] = args.orchestra
        if args.name is not None:
            kwargs["name"] = args.name
        try:
            node = NodeConfig(
                federation=args.federation,
                bind=bind,
                port=DEFAULT_GOSSIP_PORT if args.port is None else args.port,
                port_is_default=args.port is None,
                interfaces=tuple(args.interface),
                supernode=args.supernode,
                conductor=args.conductor,
                seeds=seeds,
                keyring=keyring,
                key_file=args.key_file,
                mdns=not args.no_mdns,
                broadcast=not args.no_broadcast,
                beacon_port=args.broadcast_port,
                status=args.status,
                profile=profile,
                clock_skew=args.clock_skew,
                clock_drift=args.clock_drift,
                state_dir=args.state_dir,
                **kwargs,
            )
        except (InvalidName, ValueError) as exc:
            raise UsageError(str(exc)) from None
        built = (plugin.build(config, node) for plugin, config in configs)
        return attrs.evolve(node, extensions=tuple(e for e in built if e is not None))

    def run(self, args: argparse.Namespace) -> int:
        config = self.config(args)
        import trio

        try:
            return trio.run(self._main, config)
        except BaseException as raised:
            failure = _start_failure(first_cause(raised))
            if failure is None:
                raise
            raise failure from None

    async def _main(self, config: NodeConfig) -> int:
        """Run the node; return 0 after a signal once ready (it left gracefully), 128 + the
        signal's number for a signal during start-up (nothing was left running)."""
        import trio

        from mesh._node import open_node

        ready = False
        stop = trio.Event()
        interrupted: int | None = None
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal interrupted
                    async for signum in signals:
                        if ready:
                            stop.set()
                        else:
                            interrupted = signum
                            nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)
                async with open_node(config) as node:
                    ready = True
                    print(
                        f"ready path={node.path} id={node.id} "
                        f"gossip={node.address[0]}:{node.address[1]} status={node.status_url}",
                        flush=True,
                    )
                    await stop.wait()
                nursery.cancel_scope.cancel()
        return 0 if interrupted is None else 128 + interrupted


def _start_failure(exc: BaseException) -> Exception | None:
    """The one-line error for what stopped a node from starting (``None``: not ours to
    explain). A wrong address or interface is a usage error; a taken port, a held path or a
    refused file is a runtime failure."""
    from mesh._interfaces import InterfaceError
    from mesh._node import PathHeld
    from mesh._state import PathInUse

    if isinstance(exc, PathInUse | PathHeld):
        return CommandFailed(str(exc))
    if isinstance(exc, InterfaceError):
        return UsageError(str(exc))
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.filename is not None:
            reason = f"{exc.filename}: {reason}"
        if exc.errno == errno.EADDRNOTAVAIL:
            return UsageError(f"cannot start the node: {reason}")
        return CommandFailed(f"cannot start the node: {reason}")
    return None


class StatusCommand:
    """``stagemesh status``: print the view of every node on this machine (or of one).

    Every node that answers is shown; one that does not (frozen, or too busy) is listed as not
    answering. Exit 0 when at least one node answered, 1 when none did.
    """

    name = "status"
    help = "show the view of a running node (default: every node on this machine)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("url", nargs="?", help="status URL of a node")
        parser.add_argument("--json", action="store_true", help="print the raw status JSON")
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_STATUS_TIMEOUT,
            help=f"seconds to wait for each node (default {DEFAULT_STATUS_TIMEOUT:g})",
        )

    def run(self, args: argparse.Namespace) -> int:
        from mesh._state import default_runtime_dir, find_status_files

        if not args.timeout > 0:
            raise UsageError(f"--timeout must be positive, not {args.timeout}")
        if args.url:
            found: list[dict[str, Any]] = [{"url": args.url}]
        else:
            found = [d for d in find_status_files(default_runtime_dir()) if d.get("url")]
        if not found:
            raise CommandFailed("no running node found on this machine; give its status URL")
        answers = read_statuses([str(d["url"]) for d in found], args.timeout)
        if args.url:
            doc, error = answers[0]
            if doc is None:
                raise CommandFailed(f"{args.url} does not answer: {error}")
            print(json.dumps(doc, indent=2) if args.json else format_status(doc))
            return 0
        results: list[dict[str, Any]] = []
        blocks: list[str] = []
        for record, (doc, error) in zip(found, answers, strict=True):
            if doc is not None:
                results.append(doc)
                blocks.append(format_status(doc))
            else:
                path = record.get("path") or "a node"
                results.append({"url": record["url"], "path": record.get("path"), "error": error})
                blocks.append(f"{path}  NOT ANSWERING at {record['url']}: {error}")
        print(json.dumps(results, indent=2) if args.json else "\n\n".join(blocks))
        if all(doc is None for doc, _ in answers):
            raise CommandFailed(f"none of the {len(found)} nodes on this machine answered")
        return 0


def read_statuses(
    urls: Sequence[str], timeout: float
) -> list[tuple[dict[str, Any] | None, str | None]]:
    """``GET /api/status`` of every URL at once; for each, ``(document, None)`` or ``(None,
    why it failed)``. Each read waits at most *timeout* seconds for each step (connect, answer)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        return list(pool.map(lambda url: _read_status(url, timeout), urls))


def _read_status(url: str, timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    import urllib.error
    import urllib.request

    # No proxy: the nodes are on this machine or this network, never behind $http_proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/api/status", timeout=timeout) as response:
            doc = json.load(response)
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return None, f"no answer within {timeout:g} s"
        return None, str(reason.strerror if isinstance(reason, OSError) else reason)
    except TimeoutError:
        return None, f"no answer within {timeout:g} s"
    except OSError as exc:
        return None, exc.strerror or str(exc)
    except ValueError as exc:  # a bad URL, or an answer that is not JSON
        return None, str(exc)
    if not isinstance(doc, dict) or not isinstance(doc.get("node"), dict):
        return None, "the answer is not a stagemesh status document"
    return doc, None


def _security(value: object) -> str | None:
    """The status line of the ``security`` field ("open" or "keyed")."""
    if isinstance(value, Mapping):
        value = next(
            (value[k] for k in ("mode", "federation") if isinstance(value.get(k), str)), None
        )
    if not isinstance(value, str):
        return None
    if value == "open":
        return (
            "security=OPEN: no federation key, any host on the network can join "
            "(stagemesh keygen, then --key-file on every node)"
        )
    return f"security={value}"


def _registry(value: object) -> str | None:
    """The status line of the ``registry`` field (``None`` without a registry)."""
    if not isinstance(value, Mapping):
        return None
    line = f"registry={value.get('url')}  state={value.get('state')}"
    if value.get("registered_as"):
        line += f"  registered_as={value['registered_as']}"
    if value.get("last_error"):
        line += f"  last_error={value['last_error']}"
    return line


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
    lines += [x for x in (_security(doc.get("security")), _registry(doc.get("registry"))) if x]
    rows = [("PATH", "STATE", "ADDRESS", "INC", "POSTS")]
    for m in doc["members"]:
        posts = " ".join(
            p for p, on in (("conductor", m["conductor"]), ("supernode", m["supernode"])) if on
        )
        rows.append((m["path"], m["state"], m["address"], str(m["incarnation"]), posts))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


OperatorKeygen = Callable[[Path, "str | None"], str]
"""Writes an operator key pair to a path (private) and ``<path>.pub`` (public) and returns a
line saying so; raises ``FileExistsError`` or ``OSError``. The composition root passes the
roles package's (the mesh library knows no operator keys)."""


class KeygenCommand:
    """``stagemesh keygen``: write a new federation key file, add a key to one or retire one
    (a rotation, see ``docs/security.md``), or write an operator key pair."""

    name = "keygen"
    help = (
        "write a new federation key (pass it to every node with --key-file), add a key to it "
        "or retire one (--add, --retire: rotate the key while nodes run), or with --operator "
        "an operator key pair (sign role changes with it)"
    )
    environment = {
        "--add": "STAGEMESH_ADD_KEY",
        "--retire": "STAGEMESH_RETIRE_KEY",
        "--overlap": "STAGEMESH_KEY_OVERLAP",
    }

    def __init__(self, operator_keygen: OperatorKeygen | None = None) -> None:
        self.operator_keygen = operator_keygen

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "path",
            type=Path,
            nargs="?",
            help="the federation key file: written new (must not exist), or changed by "
            "--add and --retire",
        )
        parser.add_argument(
            "--key-id",
            type=int,
            default=None,
            help="key id, 1-255 (default 1; with --add the next after the file's highest)",
        )
        parser.add_argument(
            "--add",
            action="store_true",
            help="add a new key to the existing file PATH: accepted at once, signing after "
            "--overlap seconds (copy the file to every node before then)",
        )
        parser.add_argument(
            "--overlap",
            type=float,
            default=None,
            metavar="SECONDS",
            help="with --add: seconds until the new key signs (default 600)",
        )
        parser.add_argument(
            "--retire",
            type=int,
            default=None,
            metavar="KEYID",
            help="retire key KEYID in the file PATH: nodes refuse what it signs (once the new "
            "key signs everywhere)",
        )
        parser.add_argument(
            "--operator",
            type=Path,
            default=None,
            metavar="PATH",
            help="write an operator private key to PATH (mode 0600; keep it with the crew) and "
            "its public half to PATH.pub (give it to stations and conductor candidates with "
            "--operator-keys)",
        )
        parser.add_argument(
            "--comment", default=None, help="who holds the operator key (default user@host date)"
        )

    def run(self, args: argparse.Namespace) -> int:
        if (args.path is None) == (args.operator is None):
            raise UsageError("give either PATH (a federation key) or --operator PATH")
        if args.operator is not None:
            return self._operator(args.operator, args.comment)
        if args.add and args.retire is not None:
            raise UsageError("give --add or --retire, not both (retire the old key later)")
        if args.overlap is not None and not args.add:
            raise UsageError("--overlap goes with --add")
        if args.key_id is not None and not 1 <= args.key_id <= 255:
            raise UsageError("--key-id must be in 1..255")
        if args.add:
            return self._add(args.path, args.overlap, args.key_id)
        if args.retire is not None:
            return self._retire(args.path, args.retire)
        from mesh._keys import write_key_file

        key_id = 1 if args.key_id is None else args.key_id
        try:
            write_key_file(args.path, key_id)
        except FileExistsError:
            raise CommandFailed(
                f"{args.path} exists; not overwriting a key (--add adds one to it)"
            ) from None
        except OSError as exc:
            raise CommandFailed(f"cannot write {args.path}: {exc.strerror}") from None
        print(f"wrote federation key {key_id} to {args.path}", file=sys.stderr)
        return 0

    def _add(self, path: Path, overlap: float | None, key_id: int | None) -> int:
        import time

        from mesh._keys import DEFAULT_OVERLAP, add_key, format_entries

        try:
            entry = add_key(
                path, time.time(), DEFAULT_OVERLAP if overlap is None else overlap, key_id
            )
        except OSError as exc:
            raise CommandFailed(f"cannot write {path}: {exc.strerror}") from None
        when = format_entries([entry]).split()[-1]
        print(
            f"added federation key {entry.key_id} to {path}: accepted now, signs from {when}; "
            f"copy {path} to every node before then (running nodes read it again by "
            f"themselves), then retire the old key with --retire",
            file=sys.stderr,
        )
        return 0

    def _retire(self, path: Path, key_id: int) -> int:
        import time

        from mesh._keys import retire_key

        try:
            retire_key(path, key_id, time.time())
        except OSError as exc:
            raise CommandFailed(f"cannot write {path}: {exc.strerror}") from None
        print(
            f"retired federation key {key_id} in {path}: copy {path} to every node; they "
            f"refuse what key {key_id} signs from then on",
            file=sys.stderr,
        )
        return 0

    def _operator(self, path: Path, comment: str | None) -> int:
        if self.operator_keygen is None:
            raise UsageError("--operator is not available in this build")
        try:
            said = self.operator_keygen(path, comment)
        except FileExistsError as exc:
            taken = exc.args[0] if exc.args else path
            raise CommandFailed(f"{taken} exists; not overwriting a key") from None
        except OSError as exc:
            raise CommandFailed(f"cannot write {path}: {exc.strerror or exc}") from None
        print(said, file=sys.stderr)
        return 0
