"""Layout of the mesh picture on the federation page (pure: a view in, coordinates out).

Orchestras sit on a circle, each drawn as a group; its nodes sit on a smaller circle around
the group's centre. Supernodes and the conductor are marked, and every pair of supernodes is
joined by a line (the supernodes form a full mesh between orchestras).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["mesh_picture"]

WIDTH = 640
HEIGHT = 440


def mesh_picture(view: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"width", "height", "groups", "nodes", "links"}`` for the SVG template.

    *view* is :meth:`RegistryStore.federation`'s answer.
    """
    orchestras = view.get("orchestras", [])
    count = max(1, len(orchestras))
    cx0, cy0 = WIDTH / 2, HEIGHT / 2
    ring = 0.0 if count == 1 else min(WIDTH, HEIGHT) / 2 - 95
    group_r = 80.0 if count == 1 else min(80.0, max(40.0, ring * math.sin(math.pi / count) - 8))
    groups: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    supers: list[tuple[float, float]] = []
    for i, orch in enumerate(orchestras):
        angle = -math.pi / 2 + 2 * math.pi * i / count
        gx = cx0 + ring * math.cos(angle)
        gy = cy0 + ring * math.sin(angle)
        groups.append(
            {"name": orch["name"], "x": round(gx, 1), "y": round(gy, 1), "r": round(group_r, 1)}
        )
        members = orch.get("nodes", [])
        plain = [m for m in members if not m["supernode"]]
        for node in members:
            if node["supernode"]:
                x, y = gx, gy
            else:
                k = plain.index(node)
                a = -math.pi / 2 + 2 * math.pi * (k + 0.5) / len(plain)
                x = gx + (group_r - 16) * math.cos(a)
                y = gy + (group_r - 16) * math.sin(a)
            classes = ["node"]
            if node["supernode"]:
                classes.append("supernode")
                supers.append((x, y))
            if node["conductor"]:
                classes.append("conductor")
            nodes.append(
                {
                    "x": round(x, 1),
                    "y": round(y, 1),
                    "r": 13 if node["supernode"] else 8,
                    "class": " ".join(classes),
                    "label": node["name"],
                    "path": node["path"],
                }
            )
    links = [
        {"x1": round(a[0], 1), "y1": round(a[1], 1), "x2": round(b[0], 1), "y2": round(b[1], 1)}
        for i, a in enumerate(supers)
        for b in supers[i + 1 :]
    ]
    return {"width": WIDTH, "height": HEIGHT, "groups": groups, "nodes": nodes, "links": links}
