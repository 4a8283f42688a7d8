"""What a node's dashboard shows beyond the node's own status: every member's clock and, for
stations, their role processes and the conductor's last push to them.

A node knows its own clock, not its peers' offsets and error bounds, and a station's process
states live on the station. So each node answers a small read-only request,
``dashboard.summary`` (:func:`node_summary` of its status: clock, role instances, and on the
conductor the last push to each station), and the dashboard asks every live member for it
(:class:`FederationSummaries`, at most once a second however many pages are open, each
member given 0.6 s). :func:`dashboard_view` then puts the node's status, the summaries and
the picture of the federation together for the template. Everything but the asking is pure.

The summary holds no command lines and no process output: only states, counts, exit statuses
and one-line errors. In a keyed federation only members can ask for it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from mesh._picture import mesh_picture, orchestras_of

if TYPE_CHECKING:
    from mesh._node import Node
    from mesh._wire import Value

__all__ = [
    "SUMMARY_KIND",
    "FederationSummaries",
    "dashboard_view",
    "install_summary_handler",
    "node_summary",
    "wall_clock",
]

SUMMARY_KIND = "dashboard.summary"
SUMMARY_TTL = 1.0
"""Seconds a round of summaries is reused."""
ASK_TIMEOUT = 0.6
MAX_ASKED = 64
"""Members asked per round (the picture and the table still show every member)."""
_TEXT = 200


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:_TEXT]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def node_summary(status: Mapping[str, Any]) -> dict[str, Any]:
    """The ``dashboard.summary`` answer for a node whose ``/api/status`` is *status*."""
    clock = status.get("clock") or {}
    summary: dict[str, Any] = {
        "clock": {
            "offset": _number(clock.get("offset")),
            "error_bound": _number(clock.get("error_bound")),
            "synced": bool(clock.get("synced")),
            "reference": _short(clock.get("reference")),
            "is_reference": bool(clock.get("is_reference")),
        }
    }
    roles = status.get("roles") or {}
    station = roles.get("station") if isinstance(roles, Mapping) else None
    if isinstance(station, Mapping):
        summary["instances"] = [
            {
                "role": _short(i.get("role")),
                "uuid": _short(i.get("uuid")),
                "state": _short(i.get("state")),
                "run_count": i.get("run_count") if isinstance(i.get("run_count"), int) else 0,
                "last_exit": _short(i.get("last_exit_text")),
                "last_error": _short(i.get("last_error")),
            }
            for i in station.get("instances") or []
            if isinstance(i, Mapping)
        ]
    manager = roles.get("manager") if isinstance(roles, Mapping) else None
    if isinstance(manager, Mapping) and manager.get("active"):
        pushes = {}
        for path, view in (manager.get("stations") or {}).items():
            push = view.get("last_push") or view.get("answer")
            if isinstance(push, Mapping):
                pushes[str(path)] = {
                    "applied": bool(push.get("applied")),
                    "pending": bool(push.get("pending")),
                    "error_type": _short(push.get("error_type")),
                    "error": _short(push.get("error") or push.get("error_message")),
                    "time": _number(push.get("time")),
                }
        summary["pushes"] = pushes
    return summary


def install_summary_handler(node: Node) -> None:
    """Make *node* answer ``dashboard.summary`` (once; later calls do nothing)."""

    async def answer(sender: str | None, payload: Value) -> Value:
        return node_summary(node.status())

    with contextlib.suppress(ValueError):  # already installed
        node.handle(SUMMARY_KIND, answer)


class FederationSummaries:
    """The summaries of a node's live members, asked for at most once per
    :data:`SUMMARY_TTL` (concurrent callers share one round)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._summaries: dict[str, dict[str, Any]] = {}
        self._at = -math.inf
        self._lock = trio.Lock()

    async def get(self) -> dict[str, dict[str, Any]]:
        """path -> summary, this node's own included; members that did not answer in time
        are missing."""
        async with self._lock:
            if trio.current_time() - self._at < SUMMARY_TTL:
                return self._summaries
            node = self.node
            found = {node.path: node_summary(node.status())}
            others = [m.path for m in node.members() if m.is_live and m.path != node.path]
            async with trio.open_nursery() as nursery:
                for path in others[:MAX_ASKED]:
                    nursery.start_soon(self._ask, path, found)
            self._summaries, self._at = found, trio.current_time()
            return found

    async def _ask(self, path: str, found: dict[str, dict[str, Any]]) -> None:
        from mesh._node import RequestError

        try:
            answer = await self.node.request(path, SUMMARY_KIND, None, timeout=ASK_TIMEOUT)
        except (RequestError, ValueError):
            return  # gone, slow, or an older node without the handler
        if isinstance(answer, dict):
            found[path] = answer


def wall_clock(seconds: float) -> str:
    """A Unix time as this machine's time of day (``HH:MM:SS``), for the templates."""
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if abs(seconds) >= 1.0:
        return f"{seconds:+.4f} s"
    return f"{seconds * 1000:+.3f} ms"


def dashboard_view(
    status: Mapping[str, Any], summaries: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """What the dashboard template shows: the node, its members (with each one's clock and
    roles from *summaries*), the stations' instances and last pushes, and the picture."""
    conductor = status.get("conductor")
    roles_status = status.get("roles") or {}
    identities: Mapping[str, Any] = roles_status.get("identities") or {}
    pushes: Mapping[str, Any] = (summaries.get(str(conductor)) or {}).get("pushes") or {}
    rows, stations = [], []
    for member in status.get("members", []):
        path = member["path"]
        summary = summaries.get(path) or {}
        clock = summary.get("clock") or {}
        posts = [p for p in ("conductor", "supernode") if member.get(p)]
        roles = member.get("roles") or {}
        ident = identities.get(path)
        rows.append(
            {
                "path": path,
                "state": member.get("state", ""),
                "address": member.get("address", ""),
                "incarnation": member.get("incarnation", 0),
                "posts": posts,
                "offset": _ms(clock.get("offset")) if clock else "-",
                "error_bound": _ms(clock.get("error_bound")).lstrip("+") if clock else "-",
                "synced": clock.get("synced"),
                "roles": ", ".join(
                    f"{r} {c.get('running', 0)}/{c.get('configured', 0)}"
                    + (f" ({c['failed']} failed)" if c.get("failed") else "")
                    for r, c in sorted(roles.items())
                    if isinstance(c, Mapping)
                ),
                "identity": (
                    f"{ident.get('hostname')} · {ident.get('mac') or 'no MAC'} · "
                    + ", ".join(ident.get("addresses") or [])
                    if isinstance(ident, Mapping)
                    else ""
                ),
            }
        )
        if "instances" in summary or roles:
            stations.append(
                {
                    "path": path,
                    "state": member.get("state", ""),
                    "instances": summary.get("instances"),
                    "push": pushes.get(path),
                }
            )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    node = status["node"]
    return {
        "node": node,
        "conductor": conductor,
        "clock": status.get("clock") or {},
        "security": status.get("security"),
        "remote_changes": roles_status.get("remote_changes"),
        "counts": counts,
        "members": rows,
        "stations": stations,
        "pic": mesh_picture({"orchestras": orchestras_of(status.get("members", []))}, node["path"]),
    }
