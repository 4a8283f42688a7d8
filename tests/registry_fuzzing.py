"""Fuzzing a real registry over HTTP (one way, shared by tests/test_registry_fuzz_live.py and
bench/registry_fuzz.py).

- :func:`run_schemathesis` runs schemathesis' ``st run`` against the registry's own OpenAPI
  document (every check, the ``error_says_what_is_wrong`` check of
  ``tests/registry_fuzz_hooks.py``, stateful phase following the document's links) and counts
  every answer from the hooks' log.
- :data:`LEGACY_REQUESTS` is a hypothesis strategy of hostile legacy GETs (unicode, control
  characters and invalid UTF-8 percent-escaped, huge values, missing, duplicated and unknown
  parameters, odd ports, malformed escapes); :func:`legacy_problem` says what is wrong with
  an answer (a 5xx, an error that is not one ``Error: <what is wrong>`` line, a line of a
  ``register`` answer that does not parse in the 2012 format); :func:`fuzz_legacy` sends
  them to a registry (blocking: run it in a thread).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import httpx
import trio
from hypothesis import (
    HealthCheck,
    Phase,
    given,
    seed as hypothesis_seed,
    settings,
    strategies as st,
)

from registry_bridge._app import LEGACY_PATHS
from tests.registry_fuzz_hooks import FIELDS, vague_error

__all__ = [
    "ADMIN_PASSWORD",
    "LEGACY_REQUESTS",
    "REGISTRY_ARGS",
    "REGISTRY_ENV",
    "LegacyRequest",
    "LegacyRun",
    "SchemathesisRun",
    "fuzz_legacy",
    "legacy_problem",
    "masked",
    "prepare_legacy",
    "run_schemathesis",
]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).with_name("registry_fuzz.toml")
ADMIN_PASSWORD = "fuzz-admin-password"
REGISTRY_ARGS = ("--register-rate", "0", "--ttl", "3600")
"""Registration limits off (the fuzz registers thousands of times from one address) and JSON
registrations that outlive the run (the legacy fuzz meets them)."""
REGISTRY_ENV = {"STAGEMESH_ADMIN_PASSWORD": ADMIN_PASSWORD}


def masked(message: str) -> str:
    """*message* with quoted values (but field names), numbers, tokens, paths and methods
    masked: the error's template, to count distinct errors."""

    def value(match: re.Match[str]) -> str:
        return match[0] if match[0][1:-1] in FIELDS else "'…'"

    text = re.sub(r"'(?:[^'\\]|\\.)*'(?:\.\.\.)?|\"(?:[^\"\\]|\\.)*\"", value, message)
    text = re.sub(r"^method [A-Z]+ ", "method M ", text)
    paths = r"/api/v1/[^\s;]*|/federations/[^\s;]*|/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+"
    text = re.sub(paths, "/…", text)
    text = re.sub(r"\b[0-9a-f:.]*[0-9][0-9a-f:.]*\b", "N", text)
    return text


# ------------------------------------------------------------------------------ schemathesis


@dataclasses.dataclass
class SchemathesisRun:
    """What one ``st run`` did: its own report and the answers the hooks logged."""

    returncode: int
    output: str
    seconds: float
    generated: int = 0
    unique_failures: int = 0
    scenarios: int = 0
    links: str = ""
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    operations: dict[str, Counter[int]] = dataclasses.field(default_factory=dict)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def requests(self) -> int:
        """Answers received (every request schemathesis sent)."""
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


async def run_schemathesis(
    url: str,
    workdir: Path,
    *,
    max_examples: int,
    seed: int,
    timeout: float,
    phases: str = "examples,coverage,fuzzing,stateful",
    max_time: int | None = None,
) -> SchemathesisRun:
    """Run ``st run`` against the registry at *url* (started with :data:`REGISTRY_ARGS` and
    :data:`REGISTRY_ENV`): *phases*, every check, *max_examples* per operation, *seed*.
    With *max_time* schemathesis repeats fuzzing and stateful suites until that many seconds
    are spent: a stateful suite ends early (hypothesis sees the registry's state change
    under it as flaky data), so the stateful phase runs that way. Fails
    (``trio.TooSlowError``) after *timeout* seconds."""
    log = workdir / "answers.jsonl"
    report = workdir / "report.json"
    log.unlink(missing_ok=True)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        STAGEMESH_FUZZ_LOG=str(log),  # the hooks are named in CONFIG
    )
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(CONFIG)),
        *("run", f"{url}/api/v1/openapi.json", "--checks", "all"),
        *("--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1"),
        *("--auth", f"admin:{ADMIN_PASSWORD}", "--request-timeout", "10"),
        *("--report", "json", "--report-json-path", str(report), "--phases", phases),
        *(("--max-time", str(round(max_time))) if max_time is not None else ()),
    ]
    start = time.monotonic()
    with trio.fail_after(timeout):
        done = await trio.run_process(
            command,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
            env=env,
            cwd=workdir,
        )
    output = done.stdout.decode(errors="replace")
    run = SchemathesisRun(done.returncode, output, time.monotonic() - start)
    if report.exists():
        doc = json.loads(report.read_text())
        run.generated = doc["test_cases"]["generated"]
        run.unique_failures = doc["test_cases"]["unique_failures"]
    scenarios = re.search(r"Scenarios:\s+(\d+)", output)
    run.scenarios = int(scenarios.group(1)) if scenarios else 0
    links = re.search(r"API Links:\s+(.*)", output)
    run.links = links.group(1).strip() if links else ""
    if log.exists():
        for line in log.read_text().splitlines():
            answer = json.loads(line)
            run.statuses[answer["status"]] += 1
            run.operations.setdefault(answer["op"], Counter())[answer["status"]] += 1
            if answer["error"] is not None and 400 <= answer["status"] < 500:
                run.errors[f"{answer['status']} {masked(answer['error'])}"] += 1
    return run


# ------------------------------------------------------------------------------ legacy GET API

_LEGACY_PATHS = tuple(sorted(LEGACY_PATHS))
_KEYS = ("federation", "orchestra", "name", "supernode", "conductor", "port", "create")
_NAMES = ("sleo", "cmu", "colorado", "rbd", "alice", "json", "json2", "a", "new")
_FLAGS = ("yes", "no", "YES", "No", "true", "false", "1", "0", "", "maybe", "oui", "y")
_PORTS = (
    *("7471", "1", "65535", "0", "65536", "-1", "+80", "080", "00080", "000080", " 80", "80 "),
    *(
        "0x50",
        "1e3",
        "1.0",
        "\u0663",
        "\u00b2",
        "\uff17",
        "99999999999999999999",
        "7471\n",
        "7471;",
        "\u2167",
    ),
)
_HOSTILE_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24
)
_CONTROL = st.text(alphabet=st.characters(max_codepoint=0x9F, categories=("Cc",)), min_size=1)
_HUGE = st.builds(
    lambda c, n: c * n, st.sampled_from(["x", "9", "é", "\n", "%"]), st.integers(65, 9000)
)
VALUES = st.one_of(
    st.sampled_from(_NAMES),
    st.sampled_from(_NAMES),  # twice as likely: registrations must happen
    st.sampled_from(_FLAGS),
    st.sampled_from(_PORTS),
    _HOSTILE_TEXT,
    st.builds(
        lambda a, b, c: a + b + c, st.sampled_from(_NAMES), _CONTROL, st.sampled_from(["", "x"])
    ),
    _HUGE,
    st.sampled_from([".", "..", "a b", "a/b", "a&b=c", "Conductor:", "x\nConductor:", "\u202e"]),
)
"""A parameter's value (before encoding)."""


def _encode(value: str, how: str) -> str:
    """*value* as it appears in a query string: percent-encoded UTF-8, ``+`` for spaces,
    Latin-1 bytes (invalid UTF-8), or with its ``%`` left bare (a malformed escape)."""
    if how == "utf-8":
        return quote(value, safe="")
    if how == "plus":
        return quote_plus(value, safe="")
    if how == "latin-1":
        return quote(value.encode("latin-1", "replace"), safe="")
    return quote(value, safe="%")  # "%" stays bare: "%zz", "%" and "%%" reach the server


@dataclasses.dataclass(frozen=True, repr=False)
class LegacyRequest:
    """One GET of the legacy API: *path* and its raw query string."""

    path: str
    query: str

    def __repr__(self) -> str:
        cut = (
            self.target
            if len(self.target) <= 500
            else f"{self.target[:500]}... ({len(self.target)} characters)"
        )
        return f"GET {cut}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # how hypothesis shows an example: short, never 60 kB

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


_PAIR = st.tuples(
    st.one_of(st.sampled_from(_KEYS), st.sampled_from(_KEYS), st.sampled_from(["", "x", "Name"])),
    VALUES,
    st.sampled_from(["utf-8", "utf-8", "plus", "latin-1", "bare"]),
    st.sampled_from(["=", "=", "=", ""]),  # "": a key without "=" (and without its value)
)


_GENTLE_PAIR = st.tuples(
    st.sampled_from(["supernode", "conductor", "port", "create", "name", "orchestra"]),
    st.sampled_from(["yes", "no", "true", "0", "7471", "9000", "65535", *_NAMES]),
    st.just("utf-8"),
    st.just("="),
)
"""Parameters that mostly make sense: so that many requests register, and their answers are
read line by line."""


def _query(pairs: list[tuple[str, str, str, str]], separators: list[str]) -> str:
    parts = [
        _encode(key, how) + (eq + _encode(value, how) if eq else "")
        for key, value, how, eq in pairs
    ]
    out = ""
    for i, part in enumerate(parts):
        out += (separators[i % len(separators)] if i else "") + part
    return out


def _complete(path: str, pairs: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """Most requests carry every parameter their path needs (valid or not), then the extras."""
    needs = {"/federation": 1, "/orchestra": 2, "/register": 3, "/unregister": 3}[path]
    base = [
        (k, v, "utf-8", "=")
        for k, v in zip(_KEYS[:needs], ("sleo", "cmu", "rbd")[:needs], strict=True)
    ]
    return base + pairs


MAX_QUERY = 16_000
"""Query strings are cut there: a request line over 64 KiB gets the HTTP layer's own 431 (an
empty body, before the app sees it), and httpx refuses to send one."""

LEGACY_REQUESTS = st.builds(
    lambda path, pairs, complete, seps: LegacyRequest(
        path, _query(_complete(path, pairs) if complete else pairs, seps)[:MAX_QUERY]
    ),
    st.sampled_from((*_LEGACY_PATHS, "/register")),
    st.one_of(
        st.lists(_PAIR, max_size=8),
        st.lists(_GENTLE_PAIR, max_size=4),
        st.lists(_GENTLE_PAIR, max_size=4),
    ),
    st.sampled_from([True, True, True, False]),
    st.lists(st.sampled_from(["&", "&", "&", "&&", ";"]), min_size=1, max_size=3),
)
"""Hostile legacy GETs: every path, parameters in any order, missing, duplicated (the last
one counts, as for a 2012 client), unknown, oddly separated or encoded."""


_NAME = r"[A-Za-z0-9._-]{1,64}"
_PATH = rf"/{_NAME}/{_NAME}"
_ROLE = r"(node|supernode|node and conductor|supernode and conductor)"
_FIRST = re.compile(
    rf"Registered (?P<path>{_PATH}) as (?P<role>{_ROLE}) in federation (?P<fed>{_NAME})"
    rf"(?:, not as supernode: {_PATH} is already orchestra {_NAME}'s supernode)?"
    rf"(?:(?:, |; )not as conductor: {_PATH} already is the conductor)?\Z"
)
_ELAPSED = re.compile(r"Elapsed: [0-9]+\.[0-9]{6}\Z")
_ENTRY = re.compile(rf"(?P<fed>{_NAME}) {_NAME} {_PATH} (?P<host>\S+) (?P<port>[0-9]{{1,5}})\Z")


def register_answer_problem(text: str, query: dict[str, str]) -> str | None:
    """What in *text*, a ``register`` answer (200 or 409), does not parse in the 2012 format or
    does not match the request's (last) parameters *query*; ``None`` if all is well."""
    if not text.endswith("\n"):
        return "the answer does not end with a newline"
    lines = text[:-1].split("\n")
    first = _FIRST.match(lines[0])
    if first is None:
        return f"first line does not parse: {lines[0]!r}"
    if first["path"] != f"/{query.get('orchestra')}/{query.get('name')}":
        return (
            f"registered {first['path']}, asked for /{query.get('orchestra')}/{query.get('name')}"
        )
    if first["fed"] != query.get("federation"):
        return f"registered in {first['fed']}, asked for {query.get('federation')}"
    if len(lines) < 2 or _ELAPSED.match(lines[1]) is None:
        return f"second line is not 'Elapsed: <seconds>': {lines[1:2]!r}"
    section = None
    counts: Counter[str] = Counter()
    for line in lines[2:]:
        if line in ("Other supernodes:", "Your supernode:", "Conductor:"):
            if line in counts or (section == "Conductor:"):
                return f"section {line!r} out of order"
            section = line
            counts[line] = 0
            continue
        entry = _ENTRY.match(line)
        if section is None or entry is None:
            return f"line does not parse as an entry: {line!r}"
        if entry["fed"] != first["fed"]:
            return f"an entry of another federation: {line!r}"
        try:
            ipaddress.ip_address(entry["host"])
        except ValueError:
            return f"an entry whose address is not an IP address: {line!r}"
        if not 1 <= int(entry["port"]) <= 65535:
            return f"an entry whose port is out of range: {line!r}"
        counts[section] += 1
    for single in ("Your supernode:", "Conductor:"):
        if counts.get(single, 1) != 1:
            return f"section {single!r} holds {counts[single]} entries"
    if "Other supernodes:" in counts and "Your supernode:" in counts:
        return "both 'Other supernodes:' and 'Your supernode:'"
    return None


def legacy_problem(
    request: LegacyRequest, status: int, content_type: str, body: bytes
) -> str | None:
    """What is wrong with the registry's answer to *request*; ``None`` if nothing is."""
    if status >= 500:
        return f"status {status}"
    if not content_type.startswith("text/plain"):
        return f"content type {content_type!r}"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"an answer that is not UTF-8: {body[:200]!r}"
    query = dict(parse_qsl(request.query, keep_blank_values=True))
    if text.startswith("Error: "):
        if status not in (400, 403, 409):
            return f"an error with status {status}: {text[:200]!r}"
        if not text.endswith("\n") or text.count("\n") != 1:
            return f"an error that is not one line: {text[:200]!r}"
        return vague_error(status, text[len("Error: ") : -1])
    if status == 400:
        return f"a 400 that is not 'Error: ...': {text[:200]!r}"
    if request.path in ("/federation", "/orchestra"):
        if status != 200 or re.fullmatch(r"-?[0-9]+\n", text) is None:
            return f"a {request.path} answer that is not one number: {status} {text[:200]!r}"
        return None
    if request.path == "/unregister":
        return None if (status, text) == (200, "OK\n") else f"unregister: {status} {text[:200]!r}"
    if status not in (200, 409):
        return f"a register answer with status {status}"
    if status == 409 and "not as conductor" not in text.split("\n", 1)[0]:
        return f"a 409 that says nothing of the conductor: {text[:200]!r}"
    return register_answer_problem(text, query)


@dataclasses.dataclass
class LegacyRun:
    """What :func:`fuzz_legacy` sent and got."""

    seconds: float = 0.0
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    paths: dict[str, Counter[int]] = dataclasses.field(default_factory=dict)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    registered: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


async def prepare_legacy(http: httpx.AsyncClient) -> None:
    """Federation ``sleo`` with orchestras ``cmu`` and ``colorado``, and two paths held by JSON
    registrations (with tokens) at IPv6 addresses: the fuzz meets them in its answers and in
    its refusals."""
    for url in (
        "/federation?federation=sleo&create=yes",
        "/orchestra?federation=sleo&orchestra=cmu&create=yes",
        "/orchestra?federation=sleo&orchestra=colorado&create=yes",
    ):
        assert (await http.get(url)).status_code == 200
    for body in (
        {"orchestra": "cmu", "name": "json", "host": "2001:db8::7", "supernode": True},
        {
            "orchestra": "colorado",
            "name": "json2",
            "host": "::ffff:192.0.2.1",
            "port": 65535,
            "supernode": True,
            "conductor": True,
            "node_id": "n2 ü 'q' \"x\" <b>",
        },
    ):
        r = await http.post("/api/v1/federations/sleo/registrations", json=body)
        assert r.status_code == 201, r.text


def fuzz_legacy(url: str, *, examples: int, seed: int) -> LegacyRun:
    """Send *examples* requests of :data:`LEGACY_REQUESTS` to the registry at *url* (prepared
    with :func:`prepare_legacy`); raise ``AssertionError`` (hypothesis' shrunk example) on the
    first answer :func:`legacy_problem` finds wrong. Blocking."""
    run = LegacyRun()
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=10) as client:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @hypothesis_seed(seed)
        @given(request=LEGACY_REQUESTS)
        def one(request: LegacyRequest) -> None:
            target = httpx.URL(url).copy_with(raw_path=request.target.encode("ascii"))
            response = client.get(target)
            sent = LegacyRequest(request.path, response.request.url.query.decode("ascii"))
            run.statuses[response.status_code] += 1
            run.paths.setdefault(request.path, Counter())[response.status_code] += 1
            content_type = response.headers.get("content-type", "")
            if response.text.startswith("Error: "):
                run.errors[f"{response.status_code} {masked(response.text[7:-1])}"] += 1
            elif request.path == "/register":
                run.registered += 1
            problem = legacy_problem(sent, response.status_code, content_type, response.content)
            assert problem is None, f"{sent!r} -> {response.status_code}: {problem}"

        one()
    run.seconds = time.monotonic() - start
    return run
