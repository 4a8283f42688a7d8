"""Members reports: what a supernode tells the registry about its orchestra's members.

Only supernodes register, so without reports the registry's pages would list two players
of an event with six. A supernode's bridge sends, with its heartbeat, its orchestra's
members as its own node sees them (path, membership state, posts held); the registry keeps
the last report with its registration (it goes when the registration does) and shows each
member marked as reported by that supernode and as of when.

This module is the one check of a report, for the store (a bad report is refused with a
400 naming the field) and the bridge (which sends at most :data:`MAX_MEMBERS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mesh._names import InvalidName, check_name

__all__ = [
    "MAX_MEMBERS",
    "MAX_POSTS",
    "MEMBER_STATES",
    "DuplicateMember",
    "ForeignMember",
    "InvalidReport",
    "check_members",
    "decode_members",
    "encode_members",
]

MAX_MEMBERS = 256
"""The most members one report may hold (a larger orchestra's supernode sends the first
256 by path); a report of 256 members of the longest paths still fits the registry's 64 KiB
body limit."""
MAX_POSTS = 8
"""The most posts (``supernode``, ``conductor``, ...) one member may be reported holding."""
MEMBER_STATES = ("alive", "suspect", "dead", "left")
"""The membership states a member may be reported in (the node's own view of it)."""


class InvalidReport(ValueError):
    """A members report the registry refuses; the message names the field
    (``members[3].state``) and what is wrong."""


class ForeignMember(InvalidReport):
    """A report names a member of another orchestra: the reporting registration's token
    speaks for its own orchestra only (the registry answers 403)."""


class DuplicateMember(InvalidReport):
    """A report names one path twice (the registry answers 409)."""


def check_members(value: object, orchestra: str) -> list[dict[str, Any]]:
    """Return the report *value* in its stored shape (``path``, ``state``, ``posts``), or
    raise :class:`InvalidReport` (:class:`ForeignMember`, :class:`DuplicateMember`): *value*
    must be a list of at most :data:`MAX_MEMBERS`
    objects, each with exactly ``path`` (``/<orchestra>/<name>`` of the reporting
    supernode's own *orchestra*: a supernode speaks for no one else), ``state`` (one of
    :data:`MEMBER_STATES`) and ``posts`` (at most :data:`MAX_POSTS` distinct names)."""
    if not isinstance(value, list):
        raise InvalidReport("members must be a list of {path, state, posts} objects")
    if len(value) > MAX_MEMBERS:
        raise InvalidReport(f"members holds {len(value)} entries; the limit is {MAX_MEMBERS}")
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        where = f"members[{i}]"
        if not isinstance(entry, dict):
            raise InvalidReport(f"{where} must be an object with path, state and posts")
        unknown = sorted(str(k)[:20] for k in entry if k not in ("path", "state", "posts"))
        if unknown:
            raise InvalidReport(
                f"{where} has unknown field(s) {unknown[:3]}; the fields are: path, posts, state"
            )
        path = entry.get("path")
        checked.append(
            {
                "path": _path(path, f"{where}.path", orchestra),
                "state": _state(entry.get("state"), f"{where}.state"),
                "posts": _posts(entry.get("posts", []), f"{where}.posts"),
            }
        )
        if path in seen:
            raise DuplicateMember(f"{where}.path {path} is already reported in this report")
        seen.add(str(path))
    return checked


def _path(value: object, where: str, orchestra: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value.count("/") != 2:
        shown = repr(value)[:60]
        raise InvalidReport(f"{where} must be a path /<orchestra>/<name>, not {shown}")
    _, orch, name = value.split("/")
    try:
        check_name(orch, f"{where} orchestra")
        check_name(name, f"{where} name")
    except InvalidName as exc:
        raise InvalidReport(str(exc)) from None
    if orch != orchestra:
        raise ForeignMember(
            f"{where} {value} is not of orchestra {orchestra}: the token's registration reports"
            " only its own orchestra's members"
        )
    return value


def _state(value: object, where: str) -> str:
    if value not in MEMBER_STATES:
        shown = repr(value)[:40]
        raise InvalidReport(f"{where} must be one of {', '.join(MEMBER_STATES)}, not {shown}")
    return str(value)


def _posts(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_POSTS:
        raise InvalidReport(f"{where} must be a list of at most {MAX_POSTS} names")
    try:
        posts = [check_name(post, where) for post in value]
    except InvalidName as exc:
        raise InvalidReport(str(exc)) from None
    if len(set(posts)) != len(posts):
        raise InvalidReport(f"{where} names a post twice")
    return posts


def encode_members(members: Sequence[Mapping[str, Any]]) -> str:
    """A checked report as the text the database keeps."""
    return json.dumps(list(members), separators=(",", ":"))


def decode_members(text: str | None) -> list[dict[str, Any]]:
    """The report the database keeps (``[]`` for none, or for text an older registry wrote
    that is not a list)."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []
