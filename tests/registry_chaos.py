"""Registry chaos: mixed load on a real ``stagemesh registry`` that is killed with ``kill -9``
on a schedule and restarted on the same database; after every restart the registry must hold
every write it acknowledged, and never two conductors.

Used by ``tests/test_registry_chaos.py`` (60 s, a kill every 15 s) and
``bench/registry_chaos.py`` (20 minutes, a kill every minute). The same load runs over **a
fleet** (:func:`run_fleet_load`: several registries on one PostgreSQL database, each worker
on one of them and moving to the next when a call goes unanswered) while a test kills one
of them (``tests/test_netns_registry_fleet.py``), checked the same way.

**The client** (:class:`RegistryApi`, the one place that speaks the registry's API, written
against docs/registry.md and the OpenAPI document) makes these calls, JSON bodies with
``Content-Type: application/json``:

- ``GET /api/v1/openapi.json``: whether the conductor compare-and-set takes the claimant's
  registration ``token`` (sent when the ``ConductorSet`` schema lists it);
- ``POST /api/v1/federations/{f}/registrations`` (``orchestra``, ``name``, ``node_id``,
  ``create``, ``supernode``, ``conductor``);
- ``POST /api/v1/registrations/{token}/heartbeat``, ``DELETE /api/v1/registrations/{token}``;
- ``GET`` and ``POST /api/v1/federations/{f}/conductor`` (``expected_term``, ``holder``: a
  registration claims a free post for its own path, or releases the post it holds);
- ``GET /register`` and ``GET /unregister`` (the 2012 legacy API; legacy paths live in their
  own orchestra so the two APIs never own the same path);
- ``GET /api/v1/federations/{f}`` (the check).

**Load**: ``workers`` tasks, each owning its own JSON and legacy paths (so the expected state
of a path is exact: one writer), each making about ``rate`` calls a second: register (some
with ``supernode``/``conductor``), heartbeat, unregister, register again with the same node
id, claim or release the conductor, legacy register and unregister. Each kill waits (up to a
second) for calls to be in flight, so that it lands on writes rather than between them.

**The log** (:class:`Ledger`): every answer is written as one JSON line: ``ack`` (a 2xx
answer, the write is acknowledged), ``refused`` (a 4xx: nothing changed), ``unknown`` (no
answer: the registry died with the request in flight; either outcome is allowed) and, after a
restart, ``reconciled`` (what the registry said about an unknown write). The expected state is
replayed from that file alone (:func:`expected_from_log`), so the log is the proof.

**The check** after each restart (:func:`check`), with the load paused:

- every path whose last acknowledged write registered it is there (same node id), its token
  still works (a heartbeat answers), and its ``last_seen`` is no earlier than the sending of
  its last acknowledged heartbeat;
- every path whose last acknowledged write unregistered it is absent;
- the conductor's term is at least the highest acknowledged term, and at that term the holder
  is the acknowledged one; at most one registration carries the conductor flag, the holder is
  a present registration, and no term was ever seen with two holders (every answer that names
  the conductor is an observation).

Registrations use a long ``--ttl`` so that nothing expires during a run: expiry is not what is
tested here.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import attrs
import httpx
import trio

from tests.registries import start_registry

__all__ = [
    "ChaosConfig",
    "ChaosResult",
    "FleetUp",
    "Ledger",
    "RegistryApi",
    "check",
    "expected_from_log",
    "run_chaos",
    "run_fleet_load",
]

JSON = {"Content-Type": "application/json"}


class Unanswered(Exception):
    """The registry gave no answer to call *op* (it died, or the connection broke): the
    outcome is unknown."""

    def __init__(self, message: str, op: str) -> None:
        super().__init__(message)
        self.op = op


@attrs.frozen
class Answer:
    """An HTTP answer: status and decoded body (JSON, or the text of a legacy answer)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class RegistryApi:
    """The registry's API as the chaos client uses it (every call it makes is here).

    Every method raises :class:`Unanswered` when no complete answer came back."""

    def __init__(self, http: httpx.AsyncClient, federation: str) -> None:
        self.http = http
        self.federation = federation
        self.cas_takes_token = False

    async def _call(self, op: str, method: str, url: str, **kwargs: Any) -> Answer:
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise Unanswered(f"{method} {url}: {type(exc).__name__}", op) from exc
        kind = response.headers.get("content-type", "")
        body: Any = response.json() if kind.startswith("application/json") else response.text
        return Answer(response.status_code, body)

    async def learn(self) -> None:
        """Read the OpenAPI document: does the conductor compare-and-set take a token?"""
        answer = await self._call("openapi", "GET", "/api/v1/openapi.json")
        schema = answer.body["components"]["schemas"].get("ConductorSet", {})
        self.cas_takes_token = "token" in schema.get("properties", {})

    async def register(
        self, orchestra: str, name: str, node_id: str, *, supernode: bool, conductor: bool
    ) -> Answer:
        body = {
            "orchestra": orchestra,
            "name": name,
            "node_id": node_id,
            "create": True,
            "supernode": supernode,
            "conductor": conductor,
        }
        url = f"/api/v1/federations/{self.federation}/registrations"
        return await self._call("register", "POST", url, content=json.dumps(body), headers=JSON)

    async def heartbeat(self, token: str) -> Answer:
        return await self._call("heartbeat", "POST", f"/api/v1/registrations/{token}/heartbeat")

    async def unregister(self, token: str) -> Answer:
        return await self._call("unregister", "DELETE", f"/api/v1/registrations/{token}")

    async def conductor(self) -> Answer:
        url = f"/api/v1/federations/{self.federation}/conductor"
        return await self._call("conductor_read", "GET", url)

    async def set_conductor(self, token: str, expected_term: int, holder: str | None) -> Answer:
        body: dict[str, Any] = {"expected_term": expected_term, "holder": holder}
        if self.cas_takes_token:
            body["token"] = token
        url = f"/api/v1/federations/{self.federation}/conductor"
        return await self._call(
            "set_conductor", "POST", url, content=json.dumps(body), headers=JSON
        )

    async def legacy_register(self, orchestra: str, name: str, *, conductor: bool) -> Answer:
        params = {
            "federation": self.federation,
            "orchestra": orchestra,
            "name": name,
            "supernode": "no",
            "conductor": "yes" if conductor else "no",
        }
        return await self._call("legacy_register", "GET", "/register", params=params)

    async def legacy_unregister(self, orchestra: str, name: str) -> Answer:
        params = {"federation": self.federation, "orchestra": orchestra, "name": name}
        return await self._call("legacy_unregister", "GET", "/unregister", params=params)

    async def view(self) -> Answer:
        return await self._call("view", "GET", f"/api/v1/federations/{self.federation}")

    async def legacy_create(self, orchestra: str) -> None:
        """Create the federation and *orchestra* with the legacy calls (``create=yes``), as a
        2012 client does before it registers."""
        fed = self.federation
        for url, params in (
            ("/federation", {"federation": fed, "create": "yes"}),
            ("/orchestra", {"federation": fed, "orchestra": orchestra, "create": "yes"}),
        ):
            answer = await self._call("legacy_create", "GET", url, params=params)
            if not answer.ok:
                raise RuntimeError(f"legacy create: {answer}")


# ----------------------------------------------------------------------------------- the log


@attrs.define
class PathState:
    """What the log says about one path."""

    kind: str  # "json" or "legacy"
    expect: str = "absent"  # "present", "absent" or "unknown"
    token: str | None = None
    node_id: str | None = None
    heartbeat_sent: float = 0.0  # wall time the last acknowledged heartbeat was sent


class Ledger:
    """The client's log of every answer, one JSON line each, and the state it implies.

    The state is kept up to date as lines are written (the workers read it to choose their
    next call); :func:`expected_from_log` rebuilds it from the file alone."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines = 0
        self.paths: dict[str, PathState] = {}
        self.terms: dict[int, str | None] = {}  # every acknowledged or observed term -> holder
        self.max_acked_term = 0
        self.duplicates: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path) -> Iterator[Ledger]:
        """A ledger writing to a new file at *path* (line-buffered: a line is out as soon as
        it is written)."""
        with open(path, "w", buffering=1) as out:
            yield cls(out)

    def write(self, **entry: Any) -> None:
        """Log one line and apply it."""
        entry.setdefault("t", time.time())
        self.out.write(json.dumps(entry) + "\n")
        apply(self, entry)

    def observe(self, term: int, holder: str | None, acked: bool, source: str) -> None:
        """A conductor term and its holder, seen in an answer."""
        self.write(
            op="conductor",
            result="ack" if acked else "seen",
            term=term,
            holder=holder,
            source=source,
        )


def apply(ledger: Ledger, entry: dict[str, Any]) -> None:
    """Apply one log line to *ledger*'s state."""
    op, result = entry["op"], entry["result"]
    key = f"{op}:{result}"
    ledger.counts[key] = ledger.counts.get(key, 0) + 1
    ledger.lines += 1
    if op == "conductor":
        term, holder = int(entry["term"]), entry["holder"]
        if term in ledger.terms and ledger.terms[term] != holder:
            ledger.duplicates.append(
                {"term": term, "holders": [ledger.terms[term], holder], "source": entry["source"]}
            )
        ledger.terms.setdefault(term, holder)
        if result == "ack":
            ledger.max_acked_term = max(ledger.max_acked_term, term)
        return
    path = entry.get("path")
    if path is None:
        return
    state = ledger.paths.setdefault(path, PathState(entry.get("kind", "json")))
    if result in ("unanswered", "ambiguous"):
        if op in ("register", "unregister", "legacy_register", "legacy_unregister"):
            state.expect = "unknown"
        if op == "register":  # if it was applied, the token we hold was replaced
            state.token = None
        return
    if result == "reconciled":
        state.expect = entry["found"]
        if entry["found"] == "absent":
            state.token = None
        return
    if result != "ack":
        return
    if op in ("register", "legacy_register"):
        state.expect = "present"
        state.token = entry.get("token")
        state.node_id = entry.get("node_id")
        state.heartbeat_sent = entry["sent"]
    elif op in ("unregister", "legacy_unregister"):
        state.expect = "absent"
        state.token = None
    elif op == "heartbeat":
        state.heartbeat_sent = max(state.heartbeat_sent, entry["sent"])


def expected_from_log(path: Path) -> Ledger:
    """The state the log file at *path* implies (replayed line by line)."""
    with open(os.devnull, "w") as sink, open(path) as log:
        ledger = Ledger(sink)
        for line in log:
            apply(ledger, json.loads(line))
    return ledger


# ----------------------------------------------------------------------------------- the load


@attrs.frozen
class ChaosConfig:
    """What a chaos run does (the defaults are the bench's 20 minutes)."""

    duration: float = 1200.0
    kill_every: float = 60.0
    workers: int = 8
    rate: float = 20.0  # calls per second per worker
    json_paths: int = 12  # per worker
    legacy_paths: int = 4  # per worker
    seed: int = 1
    ttl: float = 3600.0


class _Up:
    """The current registry's API, whether the workers may use it, and how many calls are
    still out."""

    def __init__(self) -> None:
        self.api: RegistryApi | None = None
        self.event = trio.Event()
        self.busy = 0

    def down(self) -> None:
        self.event = trio.Event()
        self.api = None

    def set(self, api: RegistryApi) -> None:
        self.api = api
        self.event.set()

    async def wait(self, index: int = 0) -> RegistryApi:
        """The API worker *index* calls next (once the registry is up)."""
        while self.api is None:
            await self.event.wait()
        return self.api

    def unanswered(self, index: int, api: RegistryApi) -> None:
        """Worker *index*'s call to *api* went unanswered (one registry: nothing to do)."""

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until no worker has a call out (they fail fast once the registry is dead)."""
        with trio.fail_after(timeout):
            while self.busy:
                await trio.sleep(0.01)


async def _worker(
    index: int, up: _Up, ledger: Ledger, config: ChaosConfig, rng: random.Random
) -> None:
    paths = [("json", "o" + str(index % 3), f"w{index}n{i}") for i in range(config.json_paths)]
    paths += [("legacy", "legacy", f"w{index}l{i}") for i in range(config.legacy_paths)]
    node_ids = {name: secrets.token_hex(8) for _, _, name in paths}
    pace = 1.0 / config.rate
    while True:
        api = await up.wait(index)
        kind, orchestra, name = rng.choice(paths)
        path = f"/{orchestra}/{name}"
        up.busy += 1
        try:
            await _one_call(api, ledger, rng, kind, orchestra, name, path, node_ids[name])
        except Unanswered as exc:
            ledger.write(op=exc.op, path=path, kind=kind, result="unanswered", error=str(exc))
            up.unanswered(index, api)
        finally:
            up.busy -= 1
        await trio.sleep(pace * rng.uniform(0.5, 1.5))


async def _one_call(
    api: RegistryApi,
    ledger: Ledger,
    rng: random.Random,
    kind: str,
    orchestra: str,
    name: str,
    path: str,
    node_id: str,
) -> None:
    state = ledger.paths.get(path, PathState(kind))
    sent = time.time()

    def log(op: str, answer: Answer, result: str | None = None, **extra: Any) -> None:
        if result is None:
            result = "ack" if answer.ok else "refused"
        if result != "ack":
            extra["error"] = str(answer.body)[:200]
        ledger.write(op=op, path=path, kind=kind, result=result, status=answer.status, **extra)

    if kind == "legacy":
        if state.expect != "present" or rng.random() < 0.5:
            conductor = rng.random() < 0.1
            answer = await api.legacy_register(orchestra, name, conductor=conductor)
            if answer.ok and str(answer.body).startswith(f"Registered {path} "):
                log("legacy_register", answer, sent=sent)
            elif answer.status == 409:  # conductor refused: registered as a node, or not at all
                log("legacy_register", answer, "ambiguous")
            else:
                log("legacy_register", answer, "refused")
        else:
            log("legacy_unregister", await api.legacy_unregister(orchestra, name))
        return

    if state.expect != "present" or state.token is None or rng.random() < 0.08:
        supernode, conductor = rng.random() < 0.2, rng.random() < 0.2
        answer = await api.register(
            orchestra, name, node_id, supernode=supernode, conductor=conductor
        )
        if answer.status != 201:
            log("register", answer, "refused")
            return
        body = answer.body
        log("register", answer, sent=sent, token=body["token"], node_id=node_id)
        holder = body["conductor"]["path"] if body["conductor"] else None
        granted = body["conductor_granted"]
        ledger.observe(body["conductor_term"], holder, granted, source=f"register {path}")
        return

    token = state.token
    roll = rng.random()
    if roll < 0.62:
        log("heartbeat", await api.heartbeat(token), sent=sent)
    elif roll < 0.80:
        log("unregister", await api.unregister(token))
    else:
        current = await api.conductor()
        if not current.ok:
            return
        term, holder = current.body["term"], current.body["holder"]
        ledger.observe(term, holder, acked=False, source="read")
        if holder is not None and holder != path:
            return  # held by another: nothing this registration may do
        target = path if holder is None else None  # claim a free post, or release our own
        answer = await api.set_conductor(token, term, target)
        if answer.ok:
            ledger.observe(answer.body["term"], answer.body["holder"], True, f"cas {path}")
            return
        log("set_conductor", answer)
        now = answer.body.get("current") if isinstance(answer.body, dict) else None
        if isinstance(now, dict) and "term" in now:
            ledger.observe(now["term"], now.get("holder"), acked=False, source="cas 409")


class FleetUp(_Up):
    """The load's view of a fleet (several registries on one database): worker *i* starts on
    registry ``i mod N`` and moves to the next when one of its calls there goes unanswered.
    :meth:`down` pauses every worker before its next call (then :meth:`idle`), as for one
    registry."""

    def __init__(self, apis: list[RegistryApi]) -> None:
        super().__init__()
        self.apis = apis
        self._at: dict[int, int] = {}
        self.moves = 0
        """Times a worker moved to another registry."""
        self.set(apis[0])

    async def wait(self, index: int = 0) -> RegistryApi:
        await super().wait(index)
        return self.apis[self._at.get(index, index) % len(self.apis)]

    def unanswered(self, index: int, api: RegistryApi) -> None:
        at = self._at.get(index, index)
        if self.apis[at % len(self.apis)] is api:
            self._at[index] = at + 1
            self.moves += 1


async def run_fleet_load(
    urls: list[str],
    federation: str,
    ledger: Ledger,
    config: ChaosConfig,
    *,
    task_status: trio.TaskStatus[FleetUp] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the load (``config.workers`` workers, no kills: the caller kills registries) over
    the registries at *urls*, all on one database, logging every answer to *ledger*, until
    cancelled; started with the :class:`FleetUp` (pause it and wait until idle before
    cancelling, so that no call is cut off unlogged, then :func:`check` on a survivor)."""
    rng = random.Random(config.seed)
    async with contextlib.AsyncExitStack() as stack:
        apis = []
        for url in urls:
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            apis.append(RegistryApi(http, federation))
        for api in apis:
            await api.learn()
        await apis[0].legacy_create("legacy")
        up = FleetUp(apis)
        async with trio.open_nursery() as nursery:
            for index in range(config.workers):
                worker_rng = random.Random(rng.random())
                nursery.start_soon(_worker, index, up, ledger, config, worker_rng)
            task_status.started(up)


# ----------------------------------------------------------------------------------- the check


async def check(api: RegistryApi, ledger: Ledger) -> list[dict[str, Any]]:
    """Compare the registry with the log (see the module docstring); reconcile unknown writes
    (logged); return the problems found (an empty list: nothing lost, no second conductor)."""
    problems: list[dict[str, Any]] = []
    answer = await api.view()
    if not answer.ok:
        return [{"problem": "federation unreadable", "status": answer.status}]
    view = answer.body
    present = {n["path"]: n for o in view["orchestras"] for n in o["nodes"]}
    for path, state in sorted(ledger.paths.items()):
        node = present.get(path)
        if state.expect == "unknown":
            found = "absent" if node is None else "present"
            ledger.write(
                op="reconcile", path=path, kind=state.kind, result="reconciled", found=found
            )
            continue
        if state.expect == "present":
            if node is None:
                problems.append({"problem": "acknowledged registration lost", "path": path})
                continue
            if state.kind == "json" and node["node_id"] != state.node_id:
                problems.append(
                    {
                        "problem": "registration replaced",
                        "path": path,
                        "node_id": node["node_id"],
                        "expected": state.node_id,
                    }
                )
            seen = node.get("last_seen")
            if state.kind == "json" and seen is not None and seen < state.heartbeat_sent - 1e-3:
                problems.append(
                    {
                        "problem": "acknowledged heartbeat lost",
                        "path": path,
                        "last_seen": seen,
                        "heartbeat_sent": state.heartbeat_sent,
                    }
                )
        elif state.expect == "absent" and node is not None:
            problems.append({"problem": "acknowledged unregister lost", "path": path})
    # Tokens survive: each present JSON registration's token still heartbeats.
    for path, state in sorted(ledger.paths.items()):
        if state.kind == "json" and state.expect == "present" and state.token is not None:
            sent = time.time()
            beat = await api.heartbeat(state.token)
            if beat.ok:
                ledger.write(
                    op="heartbeat",
                    path=path,
                    kind="json",
                    result="ack",
                    sent=sent,
                    status=beat.status,
                )
            else:
                problems.append(
                    {"problem": "acknowledged token refused", "path": path, "status": beat.status}
                )
    conductor = view["conductor"]
    term, holder = int(conductor["term"]), conductor["holder"]
    flagged = sorted(p for p, n in present.items() if n["conductor"])
    if len(flagged) > 1:
        problems.append({"problem": "two conductor flags", "paths": flagged})
    if holder is not None and flagged != [holder]:
        problems.append({"problem": "holder not flagged", "holder": holder, "flagged": flagged})
    if holder is not None and holder not in present:
        problems.append({"problem": "conductor without registration", "holder": holder})
    if term < ledger.max_acked_term:
        problems.append(
            {
                "problem": "acknowledged conductor term lost",
                "term": term,
                "acked": ledger.max_acked_term,
            }
        )
    elif term == ledger.max_acked_term and ledger.terms.get(term, holder) != holder:
        problems.append(
            {
                "problem": "acknowledged conductor lost",
                "term": term,
                "holder": holder,
                "acked": ledger.terms.get(term),
            }
        )
    before = len(ledger.duplicates)
    ledger.observe(term, holder, acked=False, source="check")
    problems.extend({"problem": "two holders of one term", **d} for d in ledger.duplicates[before:])
    return problems


# ----------------------------------------------------------------------------------- a run


@attrs.define
class ChaosResult:
    """What a chaos run did and found."""

    config: ChaosConfig
    kills: int = 0
    checks: int = 0
    problems: list[dict[str, Any]] = attrs.field(factory=list)
    counts: dict[str, int] = attrs.field(factory=dict)
    restart_seconds: list[float] = attrs.field(factory=list)
    replayed_ok: bool = False
    log_lines: int = 0
    duplicates: list[dict[str, Any]] = attrs.field(factory=list)
    terms_seen: int = 0

    def acknowledged(self) -> int:
        """Acknowledged writes (heartbeats and conductor changes included)."""
        return sum(v for k, v in self.counts.items() if k.endswith(":ack"))


async def run_chaos(
    config: ChaosConfig,
    tmp: Path,
    log_path: Path,
    progress: Callable[[str], None] = lambda text: None,
) -> ChaosResult:
    """Run the load against a registry on database ``tmp/registry.db``, killing and
    restarting it every ``kill_every`` seconds for ``duration`` seconds; check after every
    restart and at the end. Every answer is logged to *log_path*."""
    db = tmp / "registry.db"
    federation = f"chaos{secrets.token_hex(3)}"
    rng = random.Random(config.seed)
    result = ChaosResult(config)
    up = _Up()
    args = ("--ttl", str(config.ttl))
    kills = max(1, round(config.duration / config.kill_every))
    with Ledger.open(log_path) as ledger:
        proc, url = await start_registry(db, *args)
        http = httpx.AsyncClient(base_url=url, timeout=10)
        try:
            api = RegistryApi(http, federation)
            await api.learn()
            await api.legacy_create("legacy")
            async with trio.open_nursery() as nursery:
                for index in range(config.workers):
                    worker_rng = random.Random(rng.random())
                    nursery.start_soon(_worker, index, up, ledger, config, worker_rng)
                begin = trio.current_time()
                for kill in range(1, kills + 1):
                    up.set(api)
                    await trio.sleep_until(begin + kill * config.kill_every)  # the schedule
                    # Kill while calls are in flight (for at most a second), so that the kill
                    # lands on writes, not between them.
                    with trio.move_on_after(1.0):
                        while up.busy < 2:
                            await trio.sleep(0.001)
                    os.kill(proc.pid, signal.SIGKILL)
                    up.down()
                    await proc.wait()
                    result.kills += 1
                    await up.idle()
                    await http.aclose()
                    restarted = trio.current_time()
                    proc, url = await start_registry(db, *args)
                    result.restart_seconds.append(trio.current_time() - restarted)
                    http = httpx.AsyncClient(base_url=url, timeout=10)
                    api = RegistryApi(http, federation)
                    await api.learn()
                    found = await check(api, ledger)
                    result.checks += 1
                    result.problems.extend(found)
                    acks = sum(v for k, v in ledger.counts.items() if k.endswith(":ack"))
                    progress(
                        f"{trio.current_time() - begin:6.1f} s: kill {kill}, restarted in "
                        f"{result.restart_seconds[-1]:.2f} s, {acks} acknowledged writes so "
                        f"far, {len(found)} problems"
                    )
                nursery.cancel_scope.cancel()
        finally:
            await http.aclose()
            if proc.returncode is None:
                proc.kill()  # checked already: the last one goes as the others did
            await proc.wait()
        result.counts = dict(sorted(ledger.counts.items()))
        result.duplicates = list(ledger.duplicates)
        result.terms_seen = len(ledger.terms)
    replayed = expected_from_log(log_path)
    result.replayed_ok = {p: attrs.asdict(s) for p, s in replayed.paths.items()} == {
        p: attrs.asdict(s) for p, s in ledger.paths.items()
    } and replayed.terms == ledger.terms
    result.log_lines = replayed.lines
    return result
