"""``stagemesh roles show|push|forget|start|stop|restart|logs``: talk to stations through a node.

Every action goes through the HTTP API of a node on this machine (``--node URL``; default: a
node running here, found like ``stagemesh status`` finds them: one of the station's
federation when nodes of several federations run here, see :func:`choose_node`) with ``POST
/api/request``, which forwards the request into the mesh. That call changes state, so it
carries the node's secret, read by this command from the node's runtime folder (only the
node's user can). ``push`` and ``forget`` go to the conductor (read from the node's
``/api/status``), which records the order and relays it to the station; the other actions go
to the station itself.

Changing a station from another machine takes an operator's signature: ``push`` and
``forget`` (always) and ``start``/``stop``/``restart`` of a station other than the local node
sign an order with the
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from mesh._cli import CommandFailed, UsageError, apply_environment_defaults
from mesh._names import InvalidName, check_name
from mesh._node_cli import read_statuses
from mesh._state import default_runtime_dir, find_status_files
from mesh._status import read_api_secret
from roles._config import (
    RoleConfig,
    check_station_path,
    parse_json,
    parse_role_config,
    read_text_file,
)
from roles._desired import DesiredState
from roles._errors import ConfigFileError, RolesError, error_family
from roles._operator import OperatorKey, OperatorKeyError, Order

__all__ = ["RolesCommand", "choose_node", "read_push_file"]

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
        text = read_text_file(path)
    except FileNotFoundError as exc:
        raise ConfigFileError.at(source, "$", f"cannot read the file: {exc}") from None
    data = parse_json(text, source)
    if isinstance(data, dict) and "roles" in data and set(data) <= _STATION_FILE_KEYS:
        return RoleConfig.from_dict(
            data["roles"], source=f"{source} $.roles", default_timestamp=stamp
        )
    return parse_role_config(text, source=source, default_timestamp=stamp)


def _read_config(path: Path) -> RoleConfig:
    try:
        return read_push_file(path)
    except ConfigFileError as exc:
        raise UsageError(f"ConfigFileError: {exc}") from None


def _pending(station: str, answer: Mapping[str, Any]) -> str:
    """Why a push is pending, and what happens next, in words."""
    if answer.get("error_type") == "NoSuchMember":
        why = f"no live member {station}"
    else:
        why = f"{station} is not reachable now ({answer.get('error_type')})"
    return (
        f"{why}; kept as desired, pushed when it appears (if the path is mistyped: "
        f"stagemesh roles forget {station})"
    )


def _station(text: str) -> str:
    try:
        return check_station_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _federation(text: str) -> str:
    try:
        return check_name(text, "federation")
    except InvalidName as exc:
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


def _knows(status: dict[str, Any], station: str) -> bool:
    """Whether the node of *status* knows *station*: a live member, or a station in the
    desired state of its manager."""
    if any(
        m.get("path") == station and m.get("state") == "alive" for m in status.get("members", [])
    ):
        return True
    manager = (status.get("roles") or {}).get("manager") or {}
    return station in (manager.get("stations") or {})


def choose_node(
    running: list[dict[str, Any]],
    statuses: list[dict[str, Any] | None],
    *,
    federation: str | None,
    stations: list[str],
) -> dict[str, Any]:
    """Pick, among the nodes *running* on this machine (their status records and their
    ``/api/status`` documents, ``None`` for one that did not answer), the node to talk to:
    one of *federation* when given; else, when the nodes belong to several federations, one
    of the federation that knows every station of *stations*. Raises :class:`UsageError`
    naming the federations found when that leaves no node or more than one federation."""
    answering = [(r, s) for r, s in zip(running, statuses, strict=True) if s is not None]
    if not answering:
        raise CommandFailed("no node on this machine answers; give one with --node URL")
    by_federation: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for record, status in answering:
        name = str((status.get("node") or {}).get("federation"))
        by_federation.setdefault(name, []).append((record, status))

    def listed() -> str:
        return ", ".join(
            f"{name} ({', '.join(sorted(str(s['node'].get('path')) for _, s in nodes))})"
            for name, nodes in sorted(by_federation.items())
        )

    if federation is not None:
        if federation not in by_federation:
            raise UsageError(
                f"no node of federation {federation!r} runs on this machine; found: {listed()}"
            )
        return by_federation[federation][0][0]
    if len(by_federation) == 1:
        return answering[0][0]
    knowing = [
        name
        for name, nodes in sorted(by_federation.items())
        if stations and all(any(_knows(s, st) for _, s in nodes) for st in stations)
    ]
    if len(knowing) == 1:
        return by_federation[knowing[0]][0][0]
    if not stations:
        why = "which one do you mean?"
    elif knowing:
        why = f"{', '.join(stations)} is known in {', '.join(knowing)}."
    else:
        why = f"none of them knows {', '.join(stations)}."
    raise UsageError(
        f"nodes of {len(by_federation)} federations run on this machine: {listed()}; {why} "
        "Give --federation NAME (or --node URL)"
    )


def _open_api(
    url: str | None,
    timeout: float,
    *,
    federation: str | None = None,
    stations: list[str] | None = None,
) -> _Api:
    """The API of the node at *url* (default: a node of this machine, see
    :func:`choose_node`), with the secret that node wrote for its user."""
    runtime = default_runtime_dir()
    running = [d for d in find_status_files(runtime) if isinstance(d.get("url"), str)]
    if url is None:
        if not running:
            raise CommandFailed("no running node found on this machine; give one with --node URL")
        if len(running) == 1 and federation is None:
            chosen = running[0]
        else:
            found = read_statuses([str(d["url"]) for d in running], min(timeout, 5.0))
            statuses = [doc for doc, _ in found]
            chosen = choose_node(running, statuses, federation=federation, stations=stations or [])
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
    api = _Api(str(chosen["url"]), timeout, secret)
    if url is not None and federation is not None:
        actual = (api.status().get("node") or {}).get("federation")
        if actual != federation:
            raise UsageError(f"the node at {url} is of federation {actual!r}, not {federation!r}")
    return api


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
        common.add_argument(
            "--federation",
            type=_federation,
            default=None,
            help="talk to a node of this federation (needed only when nodes of several "
            "federations run on this machine and the station does not tell which)",
        )
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
        forget = actions.add_parser(
            "forget",
            parents=[common, signing],
            help="stop managing stations: remove them from the desired state (what they run "
            "is not changed)",
        )
        forget.add_argument(
            "forgotten", metavar="STATION", type=_station, nargs="+", help="station path"
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
        for sub in actions.choices.values():
            apply_environment_defaults(sub)

    def run(self, args: argparse.Namespace) -> int:
        if args.action is None:
            raise UsageError(
                "stagemesh roles: give an action: show, push, forget, start, stop, restart, logs"
            )
        action = args.action
        if action == "push":
            config = _read_config(args.file)  # a usage error before any node is asked
        stations = args.forgotten if action == "forget" else args.station
        if not isinstance(stations, list):
            stations = [stations] if stations is not None else []
        api = _open_api(args.node, args.timeout, federation=args.federation, stations=stations)
        if action == "push":
            return self._push(api, args, config)
        if action == "forget":
            return self._forget(api, args)
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

    def _orders(
        self,
        api: _Api,
        args: argparse.Namespace,
        stations: list[str],
        make: Callable[[str, str], Order],
    ) -> list[tuple[str, Mapping[str, Any]]]:
        """Sign ``make(federation, station)`` for each station with ``--operator-key``, send
        each to the conductor with ``roles.push``; return (station, answer) pairs."""
        key = _operator_key(args.operator_key)
        status = api.status()
        conductor = status.get("conductor")
        if not isinstance(conductor, str):
            raise CommandFailed("there is no conductor now; start a node with --conductor")
        federation = str(status["node"]["federation"])
        answers = []
        for station in stations:
            order = make(federation, station)
            signed = key.sign(order) if key is not None else order
            answer = api.request(conductor, "roles.push", {"order": signed.to_text()})
            if not isinstance(answer, Mapping):
                raise CommandFailed(f"{conductor} answered roles.push with {answer!r}")
            answers.append((station, answer))
        return answers

    def _push(self, api: _Api, args: argparse.Namespace, config: RoleConfig) -> int:
        def make(federation: str, station: str) -> Order:
            return Order.for_config(federation, station, config, merge=args.merge)

        def say(station: str, answer: Mapping[str, Any]) -> str | None:
            if answer.get("applied"):
                changes = ", ".join(
                    f"{key} {len(answer.get(key) or [])}"
                    for key in ("started", "stopped", "restarted", "unchanged")
                )
                return f"{station}: applied {answer.get('digest')} ({changes})"
            if answer.get("pending"):
                return f"{station}: pending {answer.get('digest')}: {_pending(station, answer)}"
            return None

        return _report(args, self._orders(api, args, args.station, make), say)

    def _forget(self, api: _Api, args: argparse.Namespace) -> int:
        def say(station: str, answer: Mapping[str, Any]) -> str | None:
            if not answer.get("forgotten"):
                return None
            was = "" if answer.get("was_desired") else " (it had no desired configuration)"
            return (
                f"{station}: forgotten{was}; the conductor no longer pushes to it, and what it "
                "runs is not changed"
            )

        return _report(args, self._orders(api, args, args.forgotten, Order.for_forget), say)

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
            manager = api.request(conductor, "roles.desired", None)
        try:
            desired_state = DesiredState.from_dict(manager if isinstance(manager, dict) else {})
        except RolesError as exc:
            raise CommandFailed(f"{conductor} answered roles.desired with {exc}") from None
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
        desired = set(desired_state.station_paths())
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
            wanted = "yes" if desired_state.orders_for(path) else "-"
            answer = desired_state.answer_for(path)
            said = "-" if answer is None else (answer.error_type or "applied")
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


def _report(
    args: argparse.Namespace,
    answers: list[tuple[str, Mapping[str, Any]]],
    say: Callable[[str, Mapping[str, Any]], str | None],
) -> int:
    """Print one line per station (*say*'s, ``None`` for a refusal) or the answers as JSON;
    raise :class:`CommandFailed` with every refusal, in one line."""
    failures = []
    for station, answer in answers:
        line = say(station, answer)
        if line is None:
            failures.append(
                _failure(answer.get("error_type"), answer.get("error"), answer.get("error_family"))
            )
        elif not args.json:
            print(line)
    if args.json:
        _print_json([a for _, a in answers] if len(answers) > 1 else answers[0][1])
    if failures:
        raise CommandFailed("; ".join(failures))
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
    """One row per instance; the last error (why it cannot start) last, whole."""
    rows = [("INSTANCE", "STATE", "PID", "RUNS", "LAST EXIT", "LAST ERROR")]
    rows.extend(
        (
            f"{item.get('role')}/{item.get('uuid')}",
            str(item.get("state")),
            str(item.get("pid") or "-"),
            str(item.get("run_count", 0)),
            str(item.get("last_exit_text") or "-"),
            str(item.get("last_error") or "-"),
        )
        for item in (instances if isinstance(instances, list) else [])
        if isinstance(item, dict)
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:5], widths, strict=True)]
        print("  ".join([*cells, row[5]]).rstrip())
