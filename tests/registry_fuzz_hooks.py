"""schemathesis hooks for fuzzing the registry (``SCHEMATHESIS_HOOKS=tests.registry_fuzz_hooks``).

One check, ``error_says_what_is_wrong``: every 4xx answer is a JSON object whose ``error`` is
one printable line that names what is wrong (:func:`vague_error`). One hook logs every answer
(operation, status, error message) as a JSON line to ``$STAGEMESH_FUZZ_LOG`` when it is set, so
the run's figures count the requests themselves, whatever schemathesis reports.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import schemathesis

__all__ = ["FIELDS", "SUBJECTS", "vague_error"]

FIELDS = (
    "federation",
    "orchestra",
    "name",
    "host",
    "port",
    "node_id",
    "supernode",
    "conductor",
    "create",
    "takeover",
    "token",
    "expected_term",
    "holder",
    "epoch",
    "lineage",
    "members",
    "tag",
    "generation",
)
"""The fields and parameters of the API, JSON and legacy."""
SUBJECTS: dict[int, tuple[str, ...]] = {
    400: (*FIELDS, "body", "json", "content-length", "utf-8", "field", "parameter"),
    401: ("admin", "password", "login", "credentials"),
    403: ("admin", "token", "conductor", "registered", "claim", "release"),
    404: ("federation", "orchestra", "token", "registration", "resource"),
    405: ("method",),
    409: ("already", "term", "registered"),
    413: ("body larger than",),
    415: ("content-type",),
    429: ("too many",),
}
"""Per status, the words of which an error message must hold one (case-insensitive): the
field, parameter or thing it is about. A bare "Bad Request" or "invalid input" holds none."""

MAX_MESSAGE = 400
"""An error message quotes at most a cut of what it refuses, never the whole input."""


def vague_error(status: int, message: object) -> str | None:
    """Why *message*, the error of a *status* answer, does not say what is wrong (``None``
    when it does): empty, not one printable line, too long, or naming nothing of
    :data:`SUBJECTS`."""
    if not isinstance(message, str) or not message.strip():
        return f"the error message is empty or not a string: {message!r}"
    if not message.isprintable():
        return f"the error message is not one printable line: {message[:200]!r}"
    if len(message) > MAX_MESSAGE:
        return f"the error message is {len(message)} characters long: {message[:200]!r}..."
    subjects = SUBJECTS.get(status)
    if subjects is None:
        return f"status {status} is not an answer the registry gives"
    lowered = message.lower()
    if not any(word in lowered for word in subjects):
        return f"a {status} message that names nothing of {subjects}: {message!r}"
    return None


@schemathesis.check
def error_says_what_is_wrong(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx answer is a JSON object whose ``error`` says what is wrong."""
    status = response.status_code
    if not 400 <= status < 500:
        return None
    content_type = response.headers.get("content-type", [""])
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else ""
    if not content_type.startswith("application/json"):
        raise AssertionError(f"a {status} answer of type {content_type!r}, not JSON")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"a {status} answer that is not JSON: {response.content[:200]!r}"
        ) from None
    if not isinstance(body, dict):
        raise AssertionError(f"a {status} answer that is not a JSON object: {body!r}")
    problem = vague_error(status, body.get("error"))
    if problem is not None:
        raise AssertionError(problem)
    return True


_log_lock = threading.Lock()


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """Append ``{"op", "status", "error"}`` to ``$STAGEMESH_FUZZ_LOG`` (if set)."""
    path = os.environ.get("STAGEMESH_FUZZ_LOG")
    if not path:
        return
    error = None
    if response.status_code >= 400:
        try:
            body = json.loads(response.content)
            error = body.get("error") if isinstance(body, dict) else None
        except ValueError:
            error = None
    line = json.dumps(
        {
            "op": f"{case.method.upper()} {case.operation.path}",
            "status": response.status_code,
            "error": error,
        }
    )
    with _log_lock, open(path, "a", encoding="utf-8") as log:
        log.write(line + "\n")
