"""``stagemesh roles show|push|start|stop|restart|logs``: talk to stations through a node.

Every action goes through the HTTP API of a node on this machine (``--node URL``; default: the
first node running here, found like ``stagemesh status`` finds them) with ``POST
/api/request``, which forwards the request into the mesh. That call changes state, so it
carries the node's secret, read by this command from the node's runtime folder (only the
node's user can). ``push`` goes to the conductor (read from the node's ``/api/status``), which
records the order and relays it to the station; the other actions go to the station itself.

Changing a station from another machine takes an operator's signature: ``push`` (always) and
``start``/``stop``/``restart`` of a station other than the local node sign an order with the
private key of ``--operator-key FILE`` (``stagemesh keygen --operator``). The station's own
operator, running this on the station, needs no key.

A typed error from a station is printed as one line, ``error: <Type>: <message>``, or
``error: <Type> [<family>]: <message>`` when its family (the seed's name:
``InvalidConfiguration``, ``MissingRoleFactory``, ``BlockedRole``) differs, and the command
exits 1; a usage error exits 2.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from mesh._cli import CommandFailed, UsageError, apply_environment_defaults
from mesh._state import default_runtime_dir, find_status_files
from mesh._status import read_api_secret
from roles._config import RoleConfig, check_station_path, parse_role_config
from roles._errors import ConfigFileError, error_family
from roles._operator import OperatorKey, OperatorKeyError, Order

__all__ = ["RolesCommand", "read_push_file"]

_STATION_FILE_KEYS = {"roles", "blocked_roles", "variables"}


def read_push_file(path: Path, *, now_ms: int | None = None) -> RoleConfig:
    """Read the configuration to push: a bare role configuration, or a station file (whose
    ``roles`` are pushed; ``blocked_roles`` and ``variables`` stay local to the station).
    Entries without ``timestamp`` get *now_ms* (default: now).

    Raises :class:`~roles.ConfigFileError` naming the file, the place and the problem.
    """
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError.at(source, "$", f"cannot read the file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError.at(
            source, f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}"
        ) from None
    if isinstance(data, dict) and "roles" in data and set(data) <= _STATION_FILE_KEYS:
        return RoleConfig.from_dict(
            data["roles"], source=f"{source} $.roles", default_timestamp=stamp
        )
    return parse_role_config(text, source=source, default_timestamp=stamp)


def _station(text: str) -> str:
    try:
        return check_station_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _failure(error_type: object, message: object, family: object = None) -> str:
    """``<Type>: <message>``, with ``[<family>]`` after the type when the family differs."""
    kind = str(error_type)
    fam = family if isinstance(family, str) else error_family(kind)
    label = kind if fam in (None, kind) else f"{kind} [{fam}]"
    return f"{label}: {message}"


class _Api:
    """The HTTP API of one node of this machine, with its secret."""

    def __init__(self, url: str, timeout: float, secret: str) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.secret = secret

    def status(self) -> dict[str, Any]:
        try:
            response = httpx.get(self.url + "/api/status", timeout=10.0)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CommandFailed(f"cannot read {self.url}/api/status: {exc}") from None
        if not isinstance(doc, dict):
            raise CommandFailed(f"{self.url}/api/status is not a status document")
        return doc

    def request(self, path: str, kind: str, payload: Any) -> Any:
        """Send *kind* to *path* through the node; return the answer or raise CommandFailed
        with ``<Type>: <message>``."""
        body = {"path": path, "kind": kind, "payload": payload, "timeout": self.timeout}
        try:
            response = httpx.post(
                self.url + "/api/request",
                json=body,
                headers={"Authorization": f"Bearer {self.secret}"},
                timeout=self.timeout + 5,
            )
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CommandFailed(f"cannot reach the node at {self.url}: {exc}") from None
        if not isinstance(doc, dict):
            raise CommandFailed(f"{self.url} answered {doc!r}")
        if not doc.get("ok"):
            raise CommandFailed(
                _failure(doc.get("error_type"), doc.get("error"), doc.get("error_family"))
            )
        return doc.get("payload")


def _open_api(url: str | None, timeout: float) -> _Api:
    """The API of the node at *url* (default: the first node of this machine), with the
    secret that node wrote for its user."""
    runtime = default_runtime_dir()
    running = [d for d in find_status_files(runtime) if isinstance(d.get("url"), str)]
    if url is None:
        if not running:
            raise CommandFailed("no running node found on this machine; give one with --node URL")
        chosen = running[0]
    else:
        matches = [d for d in running if str(d["url"]).rstrip("/") == url.rstrip("/")]
        if not matches:
            raise CommandFailed(
                f"no node of this machine serves {url} (looked in {runtime}): stagemesh roles "
                "talks to a node on this machine, as the node's user, with the node's secret "
                "(set STAGEMESH_RUNTIME_DIR if the node runs with another runtime folder)"
            )
        chosen = matches[0]
    secret = read_api_secret(runtime, str(chosen.get("node_id")))
    if secret is None:
        raise CommandFailed(
            f"cannot read the API secret of the node at {chosen['url']} in {runtime}: run "
            "this as the node's user"
        )
    return _Api(str(chosen["url"]), timeout, secret)


def _operator_key(path: Path | None) -> OperatorKey | None:
    if path is None:
        return None
    try:
        return OperatorKey.load(path)
    except OperatorKeyError as exc:
        raise UsageError(str(exc)) from None


class RolesCommand:
    """``stagemesh roles``: show, push, start, stop, restart and read the logs of the roles of
    stations, through any node's HTTP API."""

    name = "roles"
    help = "show and change the roles of conference stations (through a node's API)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument(
            "--node", default=None, help="a node's status URL (default: a node on this machine)"
        )
        common.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait for an answer (60)"
        )
        common.add_argument("--json", action="store_true", help="print the raw answer as JSON")
        signing = argparse.ArgumentParser(add_help=False)
        signing.add_argument(
            "--operator-key",
            type=Path,
            default=None,
            help="operator private key (stagemesh keygen --operator) to sign the change with; "
            "needed to change a station from another machine",
        )
        actions = parser.add_subparsers(dest="action", metavar="ACTION")
        show = actions.add_parser(
            "show", parents=[common], help="the manager's view, or one station's configuration"
        )
        show.add_argument("--station", type=_station, default=None, help="station path")
        push = actions.add_parser(
            "push",
            parents=[common, signing],
            help="make a file the desired configuration of stations",
        )
        push.add_argument("file", type=Path, help="role configuration (or station file) JSON")
        push.add_argument(
            "--station",
            type=_station,
            action="append",
            required=True,
            help="station path such as /room-a/cam1 (repeatable)",
        )
        push.add_argument(
            "--merge",
            action="store_true",
            help="merge into the desired configuration by timestamp instead of replacing it",
        )
        for action in ("start", "stop", "restart"):
            sub = actions.add_parser(
                action, parents=[common, signing], help=f"{action} role instances on a station"
            )
            sub.add_argument("--station", type=_station, required=True, help="station path")
            sub.add_argument("--role", default=None, help="only this role's instances")
            sub.add_argument("--uuid", default=None, help="only this instance (with --role)")
        logs = actions.add_parser("logs", parents=[common], help="an instance's output tail")
        logs.add_argument("--station", type=_station, required=True, help="station path")
        logs.add_argument("--role", required=True, help="role name")
        logs.add_argument("--uuid", required=True, help="instance uuid")
        logs.add_argument("--lines", type=int, default=100, help="how many lines (100)")
        for sub in (show, push, logs, *(actions.choices[a] for a in ("start", "stop", "restart"))):
            apply_environment_defaults(sub)

    def run(self, args: argparse.Namespace) -> int:
        if args.action is None:
            raise UsageError(
                "stagemesh roles: give an action: show, push, start, stop, restart, logs"
            )
        api = _open_api(args.node, args.timeout)
        action = args.action
        if action == "push":
            return self._push(api, args)
        if action == "show":
            return self._show(api, args)
        if action == "logs":
            if args.lines < 0:
                raise UsageError("--lines must be >= 0")
            asked = {"role": args.role, "uuid": args.uuid, "lines": args.lines}
            answer = api.request(args.station, "roles.logs", asked)
            if args.json:
                _print_json(answer)
            else:
                for line in answer.get("lines", []):
                    print(line)
            return 0
        if args.uuid is not None and args.role is None:
            raise UsageError("--uuid needs --role")
        key = _operator_key(args.operator_key)
        status = api.status()
        payload: dict[str, Any] = {
            k: v for k, v in (("role", args.role), ("uuid", args.uuid)) if v is not None
        }
        if args.station != status.get("node", {}).get("path"):
            # Another machine's station: an operator's order, signed when a key is given.
            order = Order.for_control(
                str(status["node"]["federation"]), args.station, action, args.role, args.uuid
            )
            payload = {"order": (key.sign(order) if key is not None else order).to_text()}
        answer = api.request(args.station, f"roles.{action}", payload)
        if args.json:
            _print_json(answer)
        else:
            _print_instances(answer.get("instances", []))
        return 0

    def _push(self, api: _Api, args: argparse.Namespace) -> int:
        try:
            config = read_push_file(args.file)
        except ConfigFileError as exc:
            raise UsageError(f"ConfigFileError: {exc}") from None
        key = _operator_key(args.operator_key)
        status = api.status()
        conductor = status.get("conductor")
        if not isinstance(conductor, str):
            raise CommandFailed("there is no conductor now; start a node with --conductor")
        federation = str(status["node"]["federation"])
        answers = []
        failures = []
        for station in args.station:
            order = Order.for_config(federation, station, config, merge=args.merge)
            signed = key.sign(order) if key is not None else order
            answer = api.request(conductor, "roles.push", {"order": signed.to_text()})
            if not isinstance(answer, Mapping):
                raise CommandFailed(f"{conductor} answered roles.push with {answer!r}")
            answers.append(answer)
            if answer.get("applied"):
                changes = ", ".join(
                    f"{key} {len(answer.get(key) or [])}"
                    for key in ("started", "stopped", "restarted", "unchanged")
                )
                if not args.json:
                    print(f"{station}: applied {answer.get('digest')} ({changes})")
            elif answer.get("pending"):
                if not args.json:
                    print(
                        f"{station}: pending {answer.get('digest')} (not live now; the "
                        "conductor pushes it when it is)"
                    )
            else:
                failures.append(
                    _failure(
                        answer.get("error_type"), answer.get("error"), answer.get("error_family")
                    )
                )
        if args.json:
            _print_json(answers if len(answers) > 1 else answers[0])
        if failures:
            raise CommandFailed("; ".join(failures))
        return 0

    def _show(self, api: _Api, args: argparse.Namespace) -> int:
        if args.station is not None:
            answer = api.request(args.station, "roles.show", {})
            if args.json:
                _print_json(answer)
                return 0
            print(f"{args.station}  digest={answer.get('digest')}")
            blocked = ", ".join(answer.get("blocked_roles") or []) or "none"
            print(f"blocked roles: {blocked}")
            print(json.dumps(answer.get("config"), indent=2, sort_keys=True))
            _print_instances((answer.get("status") or {}).get("instances", []))
            return 0
        status = api.status()
        conductor = status.get("conductor")
        manager: Any = None
        if isinstance(conductor, str):
            conductor_status = api.request(conductor, "roles.desired", None)
            manager = conductor_status
        stations = {
            m["path"]: m.get("roles") or {}
            for m in status.get("members", [])
            if m.get("state") == "alive" and m.get("roles")
        }
        identities = (status.get("roles") or {}).get("identities") or {}
        if args.json:
            _print_json(
                {
                    "conductor": conductor,
                    "desired": manager,
                    "stations": stations,
                    "identities": identities,
                }
            )
            return 0
        print(f"conductor={conductor or 'none'}")
        desired = (manager or {}).get("stations", {}) if isinstance(manager, dict) else {}
        answers = (manager or {}).get("answers", {}) if isinstance(manager, dict) else {}
        rows = [
            (
                "STATION",
                "HOST",
                "MAC",
                "ADDRESSES",
                "ROLES (configured/running/failed)",
                "DESIRED",
                "ANSWER",
            )
        ]
        for path in sorted(set(stations) | set(desired) | set(identities)):
            ident = identities.get(path) or {}
            summary = " ".join(
                f"{role}={_counts(counts)}"
                for role, counts in sorted(stations.get(path, {}).items())
            )
            wanted = "yes" if path in desired else "-"
            answer = answers.get(path) or {}
            said = (
                "applied"
                if answer.get("applied")
                else (f"{answer.get('error_type')}" if answer else "-")
            )
            rows.append(
                (
                    path,
                    str(ident.get("hostname") or "-"),
                    str(ident.get("mac") or "-"),
                    ",".join(ident.get("addresses") or []) or "-",
                    summary or "-",
                    wanted,
                    said,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0


def _counts(counts: Any) -> str:
    if isinstance(counts, dict):
        return f"{counts.get('configured', 0)}/{counts.get('running', 0)}/{counts.get('failed', 0)}"
    if isinstance(counts, list) and len(counts) == 3:
        return "/".join(str(c) for c in counts)
    return "?"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _print_instances(instances: Any) -> None:
    rows = [("INSTANCE", "STATE", "PID", "RUNS", "LAST EXIT")]
    rows.extend(
        (
            f"{item.get('role')}/{item.get('uuid')}",
            str(item.get("state")),
            str(item.get("pid") or "-"),
            str(item.get("run_count", 0)),
            str(item.get("last_exit_text") or "-"),
        )
        for item in (instances if isinstance(instances, list) else [])
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
