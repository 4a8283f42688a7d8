"""``stagemesh registry`` as a real process: flags, environment, default database, signals."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from registry_bridge._command import default_db_path
from tests.livenodes import wait_for
from tests.netns import Lan
from tests.registries import Databases, registry_http


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
        (
            "postgresql://user:secret@db.example/stagemesh",
            "PostgreSQL support is not in this build",
        ),
        ("sqlite:///x.db", "give the file's path itself"),
        ("sqlite:x.db", "give the file's path itself"),
        ("postgres://user:secret@db.example/stagemesh", "start with postgresql://"),
        ("http://127.0.0.1:5432/x", "not a supported database URL"),
        ("mysql+pymysql://db/x", "not a supported database URL"),
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
