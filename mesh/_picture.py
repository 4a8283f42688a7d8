"""Layout of the picture of a federation (pure: a view in, coordinates out).

Both dashboards draw it: a node's (from the node's view of its members) and the registry's
federation page (from the registrations). Orchestras sit on a circle (side by side when there
are two), each drawn as a group; its supernode sits at the group's centre and its other nodes
on a circle around it. Each node is linked to its orchestra's supernode, and every pair of
supernodes is linked (the supernodes talk for their orchestras to each other). The template
``mesh/templates/picture.html`` turns the result into SVG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HEIGHT", "WIDTH", "mesh_picture", "orchestras_of"]

WIDTH = 640
HEIGHT = 440
STATES = ("alive", "suspect", "dead", "left")


def orchestras_of(members: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group a node's members (``/api/status`` ``members``: path, state, supernode,
    conductor) by orchestra, in the shape :func:`mesh_picture` takes."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for member in members:
        _, orchestra, name = str(member["path"]).split("/", 2)
        groups.setdefault(orchestra, []).append({**member, "name": name})
    return [
        {"name": name, "nodes": sorted(nodes, key=lambda n: n["path"])}
        for name, nodes in sorted(groups.items())
    ]


def _group_radius(count: int, nodes: int) -> float:
    if count == 1:
        return max(80.0, min(190.0, 4.5 * nodes + 40))
    return max(70.0, min(140.0, 4.5 * nodes + 40))


def mesh_picture(view: Mapping[str, Any], self_path: str | None = None) -> dict[str, Any]:
    """Return ``{"width", "height", "groups", "nodes", "links"}`` for the SVG template.

    *view* has ``orchestras``: each ``{"name", "nodes": [{"path", "name", "supernode",
    "conductor", "state"?}]}`` (the registry's federation view, or :func:`orchestras_of`).
    A node's ``class`` holds ``node``, ``supernode``, ``conductor``, its state when it has
    one, and ``self`` for *self_path*. Links are ``supernode`` (between supernodes) or
    ``spoke`` (a node to its supernode).
    """
    orchestras = list(view.get("orchestras", []))
    count = max(1, len(orchestras))
    height = HEIGHT
    if count <= 2:  # one row: as tall as its largest group
        largest = max((len(o.get("nodes", [])) for o in orchestras), default=0)
        height = min(HEIGHT, round(2 * _group_radius(count, largest) + 70))
    cx0, cy0 = WIDTH / 2, height / 2 + 8
    ring = 0.0 if count == 1 else min(WIDTH, HEIGHT) / 2 - 85
    if count == 2:
        ring = WIDTH / 4 - 10
    start = math.pi if count == 2 else -math.pi / 2
    groups: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    supers: list[tuple[float, float]] = []
    for i, orch in enumerate(orchestras):
        members = list(orch.get("nodes", []))
        angle = start + 2 * math.pi * i / count
        gx = cx0 + ring * math.cos(angle)
        gy = cy0 + ring * math.sin(angle)
        radius = _group_radius(count, len(members))
        if count > 2:
            radius = min(radius, max(40.0, ring * math.sin(math.pi / count) - 8))
        groups.append(
            {"name": orch["name"], "x": round(gx, 1), "y": round(gy, 1), "r": round(radius, 1)}
        )
        hub = next((m for m in members if m.get("supernode")), None)
        plain = [m for m in members if m is not hub]
        for node in members:
            if node is hub:
                x, y = gx, gy
            else:
                k = plain.index(node)
                a = -math.pi / 2 + 2 * math.pi * (k + 0.5) / len(plain)
                x = gx + (radius - 24) * math.cos(a)
                y = gy + (radius - 24) * math.sin(a)
                if hub is not None:
                    links.append(_line("spoke", (gx, gy), (x, y)))
            classes = ["node"]
            if node.get("supernode"):
                classes.append("supernode")
                supers.append((x, y))
            if node.get("conductor"):
                classes.append("conductor")
            if node.get("state") in STATES:
                classes.append(str(node["state"]))
            if node["path"] == self_path:
                classes.append("self")
            nodes.append(
                {
                    "x": round(x, 1),
                    "y": round(y, 1),
                    "r": 13 if node.get("supernode") else 8,
                    "class": " ".join(classes),
                    "label": node["name"],
                    "path": node["path"],
                    "state": node.get("state", ""),
                }
            )
    links += [_line("supernode", a, b) for i, a in enumerate(supers) for b in supers[i + 1 :]]
    return {"width": WIDTH, "height": height, "groups": groups, "nodes": nodes, "links": links}


def _line(kind: str, a: tuple[float, float], b: tuple[float, float]) -> dict[str, Any]:
    return {
        "class": "link" if kind == "supernode" else "spoke",
        "x1": round(a[0], 1),
        "y1": round(a[1], 1),
        "x2": round(b[0], 1),
        "y2": round(b[1], 1),
    }
