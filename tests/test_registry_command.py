"""``stagemesh registry`` as a real process: flags, environment, default database, signals."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from registry_bridge._command import default_db_path
from registry_bridge._database import SCHEMA_VERSION, open_database, shown_target
from registry_bridge._postgres import _MIGRATIONS as _postgres_migrations
from registry_bridge._sqlite import _MIGRATIONS as _sqlite_migrations
from tests.harness import free_port, wait_for
from tests.netns import Lan
from tests.postgres import PASSWORD, Cluster
from tests.registries import MIGRATED_TEMPLATE, Databases, registry_command, registry_http


def test_default_db_follows_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "stagemesh" / "registry.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db_path() == tmp_path / ".local" / "state" / "stagemesh" / "registry.db"


def test_bad_bind_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "registry", "--bind", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr


def test_empty_password_file_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh",
            "registry",
            "--bind",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "r.db"),
            "--admin-password-file",
            str(tmp_path / "pw"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "is empty" in done.stderr


async def test_serves_with_default_db_and_password_file_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    (tmp_path / "pw").write_text("opensesame\n")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("STAGEMESH_ADMIN_PASSWORD", None)
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "mesh",
                "registry",
                "--bind",
                "127.0.0.1:0",
                "--admin-password-file",
                str(tmp_path / "pw"),
                "--ttl",
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            assert proc.stdout is not None
            buf = b""
            while b"\n" not in buf:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk
                buf += chunk
            line = buf.decode().splitlines()[0]
            db = tmp_path / "state" / "stagemesh" / "registry.db"
            assert line.startswith("ready registry=http://127.0.0.1:") and line.endswith(f"db={db}")
            url = line.split()[1].removeprefix("registry=")
            auth = {"Authorization": "Basic " + base64.b64encode(b"x:opensesame").decode()}
            async with httpx.AsyncClient(base_url=url) as http:
                r = await http.post(
                    "/api/v1/federations/f/registrations",
                    json={"orchestra": "o", "name": "n", "create": True},
                )
                assert r.json()["ttl"] == 5.0
                assert (await http.delete("/api/v1/federations/f", headers=auth)).status_code == 200
            assert db.exists()
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.stdout.aclose()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("sqlite:///x.db", "give the file's path itself"),
        ("sqlite:x.db", "give the file's path itself"),
        ("http://user:secret@127.0.0.1:5432/x", "not a supported database URL"),
        ("mysql+pymysql://db/x", "or a postgresql://user@host/dbname URL"),
    ],
)
def test_db_urls_are_refused_in_one_line_and_create_nothing(
    tmp_path: Path, value: str, says: str
) -> None:
    for how in ("flag", "environment"):
        argv = ["--db", value] if how == "flag" else []
        env = dict(os.environ, STAGEMESH_DB=value) if how == "environment" else None
        done = subprocess.run(
            [sys.executable, "-m", "mesh", "registry", "--bind", "127.0.0.1:0", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 2, (how, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "secret" not in done.stderr  # the URL's password is not repeated
        assert list(tmp_path.iterdir()) == [], "a file was created"


async def test_legacy_registrations_expire_unless_they_register_again(
    databases: Databases,
) -> None:
    with trio.fail_after(40):
        async with registry_http(databases.new(), "--legacy-ttl", "1.5") as http:
            where = {"federation": "f", "orchestra": "o"}
            await http.get("/federation", params={"federation": "f", "create": "yes"})
            await http.get("/orchestra", params={**where, "create": "yes"})
            for name in ("kept", "crashed"):
                r = await http.get("/register", params={**where, "name": name, "conductor": "yes"})
                assert r.status_code in (200, 409)
            page = (await http.get("/federations/f")).text
            assert "or 2 s after its last <code>register</code>" in page
            assert page.count("unless it registers again") == 2

            async def only_kept_left() -> bool:
                # the laptop that still runs registers again; the crashed one does not
                assert (await http.get("/register", params={**where, "name": "kept"})).is_success
                view = (await http.get("/api/v1/federations/f")).json()
                return [n["path"] for n in view["orchestras"][0]["nodes"]] == ["/o/kept"]

            await wait_for(only_kept_left, 20, "the crashed laptop's registration expiring")
            view = (await http.get("/api/v1/federations/f")).json()
            assert view["legacy_ttl"] == 1.5
            kept = view["orchestras"][0]["nodes"][0]
            assert kept["heartbeat"] is False and kept["expires_at"] > kept["last_seen"]


def test_bad_lifetimes_and_limits_are_usage_errors(tmp_path: Path) -> None:
    for flags in (
        ["--legacy-ttl", "0"],
        ["--legacy-ttl", "nan"],
        ["--ttl", "inf"],
        ["--register-burst", "0"],
        ["--register-rate", "-1"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mesh", "registry", "--db", str(tmp_path / "r.db"), *flags],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2 and flags[0] in done.stderr, (flags, done.stderr)
    assert not (tmp_path / "r.db").exists()


@pytest.mark.netns
def test_wildcard_bind_prints_the_hosts_urls_loopback_first(tmp_path: Path) -> None:
    # 0.0.0.0 inside a namespace of its own: nothing listens on the machine's real interfaces
    with Lan(1) as lan:
        host = lan.hosts[0]
        registry = lan.spawn(
            host,
            *(sys.executable, "-m", "mesh", "registry", "--bind", "0.0.0.0:0"),
            *("--db", str(tmp_path / "r.db")),
            env=dict(os.environ),
        )
        line = registry.wait_for(lambda text: text.startswith("ready "), timeout=30)
        urls = line.split()[1].removeprefix("registry=").split(",")
        port = urls[0].rpartition(":")[2]
        assert urls == [f"http://127.0.0.1:{port}", f"http://{host.address}:{port}"], line
        for url in urls:  # each one answers
            done = lan.run(host, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/")
            assert done.stdout == "200"
        assert registry.stop() == 0


def test_a_postgres_database_that_cannot_be_used_is_one_line_without_the_password(
    postgres_cluster: Cluster,
) -> None:
    empty = postgres_cluster.new_database()
    newer = postgres_cluster.new_database(template=MIGRATED_TEMPLATE)
    postgres_cluster.sql("UPDATE schema_version SET version = 99", newer.rpartition("/")[2])
    port = postgres_cluster.port
    cases = [
        (f"postgresql://stagemesh:{PASSWORD}@127.0.0.1:{port}/x?nonsense=1", "not a valid"),
        (f"postgresql://stagemesh:{PASSWORD}@127.0.0.1:{free_port()}/x", "Connection refused"),
        (
            postgres_cluster.url(empty.rpartition("/")[2], password="not-the-password"),
            'password authentication failed for user "stagemesh"',
        ),
        (postgres_cluster.url("nonexistent"), 'database "nonexistent" does not exist'),
        (
            empty,
            f"is empty (no registry schema), this stagemesh needs version {SCHEMA_VERSION}; run:"
            " stagemesh",
        ),
        (newer, f"has schema version 99, newer than this stagemesh (version {SCHEMA_VERSION})"),
    ]
    for url, says in cases:
        for action in ([], ["export"]):
            done = registry_command("--bind", "127.0.0.1:0", *action, "--db", url)
            where = (action, url.rpartition("@")[2])
            assert done.returncode == 2, (where, done.stderr)
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and says in lines[0], (where, done.stderr)
            assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
            assert PASSWORD not in done.stderr and "not-the-password" not in done.stderr
            assert f"stagemesh@127.0.0.1:{port}" in lines[0] or "refused" in says


def test_migrate_creates_or_upgrades_a_schema_and_the_registry_then_serves_it(
    databases: Databases,
) -> None:
    """A database of version 1 (made before versioning: the tables, no version row) with a
    federation in it: PostgreSQL's is refused until ``migrate`` upgrades it; a SQLite file is
    upgraded by the registry itself. Either way the federation is kept."""
    db = databases.new(migrated=False)
    if databases.backend == "postgresql":
        created = registry_command("migrate", "--db", db).stdout
        assert f"schema created (version {SCHEMA_VERSION})" in created
        version_1 = databases.new(migrated=False)
        statements = _postgres_migrations[0]
    else:
        version_1 = databases.new()
        statements = _sqlite_migrations[0]
    database = open_database(version_1)
    database.begin()
    for statement in statements:
        database.execute(statement)
    database.execute("INSERT INTO federations (name, created_at) VALUES ('old', 1.0)")
    database.commit()
    database.close()
    if databases.backend == "postgresql":
        refused = registry_command("--db", version_1)
        assert refused.returncode == 2
        assert (
            f"is version 1, this stagemesh needs version {SCHEMA_VERSION}; run: stagemesh"
            " registry migrate" in refused.stderr
        )
    done = registry_command("migrate", "--db", version_1)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == f"database {shown_target(version_1)}: schema upgraded from version 1 to"
        f" {SCHEMA_VERSION}\n"
    )
    again = registry_command("migrate", "--db", version_1)
    assert again.stdout.endswith(f": schema already at version {SCHEMA_VERSION}\n")
    exported = json.loads(registry_command("export", "--db", version_1).stdout)
    assert [f["name"] for f in exported["federations"]] == ["old"]


async def test_export_and_import_move_an_event_from_sqlite_to_postgres_and_back(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    sqlite_db = str(tmp_path / "event.db")
    with trio.fail_after(60):
        async with registry_http(sqlite_db) as http:
            await http.get("/federation", params={"federation": "sleo", "create": "yes"})
            legacy_id = (await http.get("/federation", params={"federation": "sleo"})).text
            for orch in ("cmu", "colorado"):
                await http.get("/orchestra", params={"federation": "sleo", "orchestra": orch})
            base = "/api/v1/federations/sleo/registrations"
            sup = await http.post(
                base,
                json={
                    "orchestra": "cmu",
                    "name": "a",
                    "create": True,
                    "supernode": True,
                    "conductor": True,
                    "node_id": "node-a",
                    "port": 9000,
                },
            )
            await http.post(base, json={"orchestra": "colorado", "name": "b", "create": True})
            await http.get(
                "/register",
                params={
                    "federation": "sleo",
                    "orchestra": "cmu",
                    "name": "laptop",
                    "conductor": "yes",
                },
            )
            await http.post("/api/v1/federations", json={"name": "empty"})
            token = sup.json()["token"]
    exported = tmp_path / "event.json"
    done = registry_command("export", "--db", sqlite_db, str(exported))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("exported 2 federations, 2 orchestras, 3 registrations")
    assert exported.stat().st_mode & 0o777 == 0o600  # it holds the tokens
    first = json.loads(exported.read_text())

    postgres_db = postgres_cluster.new_database()  # no schema: import makes it
    done = registry_command("import", "--db", postgres_db, str(exported))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"imported 2 federations, 2 orchestras, 3 registrations from {exported} into"
        f" {shown_target(postgres_db)}\n"
    )
    second = json.loads(registry_command("export", "--db", postgres_db).stdout)
    back_db = str(tmp_path / "back.db")
    done = registry_command("import", "--db", back_db, "-", stdin=json.dumps(second))
    assert done.returncode == 0, done.stderr
    third = json.loads(registry_command("export", "--db", back_db).stdout)
    for doc in (first, second, third):
        del doc["exported_at"]
    assert first == second == third
    assert first["federations"][0]["conductor"]["path"] == "/cmu/a"

    with trio.fail_after(60):
        async with registry_http(postgres_db) as http:
            # the node keeps its token, the 2012 clients see the same ids
            hb = await http.post(f"/api/v1/registrations/{token}/heartbeat")
            assert hb.status_code == 200 and hb.json()["conductor_term"] == 1
            assert (await http.get("/federation", params={"federation": "sleo"})).text == legacy_id
            made = await http.get(
                "/orchestra", params={"federation": "sleo", "orchestra": "new", "create": "yes"}
            )
            assert int(made.text) == 1 + max(
                o["id"] for f in first["federations"] for o in f["orchestras"]
            )

    refused = registry_command("import", "--db", postgres_db, str(exported))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "already holds 2 federation(s); import needs an empty database" in refused.stderr
    sleo = first["federations"][0]
    a = next(r for r in sleo["registrations"] if r["name"] == "a")
    twice = [dict(a, name=name, token=name * 8, conductor=False) for name in ("x", "y")]
    bad = dict(first, federations=[dict(sleo, registrations=twice)])
    for doc, says in [
        ({"format": "something else"}, "not a registry export"),
        (bad, "registration /cmu/y: orchestra 'cmu' has a supernode already"),
    ]:
        refused = registry_command(
            "import", "--db", str(tmp_path / "new.db"), "-", stdin=json.dumps(doc)
        )
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    refused = registry_command("import", "--db", str(tmp_path / "new.db"), "-", stdin="{")
    assert refused.returncode == 2 and "stdin is not JSON" in refused.stderr


async def _answer(stream: trio.SocketStream, pending: bytes) -> tuple[bytes, bytes]:
    """Read one HTTP/1.1 answer (its head and its Content-Length body) from *stream*, starting
    with the bytes already *pending*; return it and what came after it. EOFError if the
    connection closes first."""
    data = pending
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some()
        if not more:
            raise EOFError(f"the connection closed after {data!r}")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        more = await stream.receive_some()
        if not more:
            raise EOFError(f"the connection closed within the body after {head!r}")
        rest += more
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@pytest.mark.parametrize(
    ("target", "content_type", "status"),
    [
        ("/api/v1/relay/take", "application/json", b"404"),  # no such path
        ("/api/v1/registrations/%2e/relay/take", "application/json", b"404"),  # not a token
        ("/api/v1/federations/f/registrations", "text/plain", b"415"),  # the fast path's
    ],
)
async def test_an_answer_waits_for_the_body_and_the_connection_stays_usable(
    tmp_path: Path, target: str, content_type: str, status: bytes
) -> None:
    """httpx sends a request's head and its body in two writes. An answer that needs no body
    left before the body came, and granian then closed the connection without saying so: the
    client's next call on it failed with no answer (seen in CI as "Server disconnected without
    sending a response" on a relay call). The registry now answers once the body is in, on a
    connection that serves the next request."""
    body = b"{}"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: registry\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with registry_http(tmp_path / "registry.db") as http:
        host, port = http.base_url.host, http.base_url.port
        assert port is not None
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(head)
            early = b""
            with trio.move_on_after(1.0):  # the client's second write is late
                early = await stream.receive_some()
            assert early == b"", f"answered before the body came: {early!r}"
            await stream.send_all(body)
            first, rest = await _answer(stream, b"")
            assert first.startswith(b"HTTP/1.1 " + status), first
            await stream.send_all(b"GET /api/v1/federations HTTP/1.1\r\nHost: registry\r\n\r\n")
            second, _ = await _answer(stream, rest)
            assert second.startswith(b"HTTP/1.1 200"), second
