"""Every start-up failure prints its cause in one line (never an ``ExceptionGroup``) and exits 2
for a usage or configuration error, 1 for a runtime one; Ctrl-C during start-up exits 130."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from mesh._ports import GOSSIP_SEARCH
from tests.harness import wait_for
from tests.livenodes import start_nodes

NOT_MINE = "203.0.113.77"  # TEST-NET-3: an address no host here has
QUIET = ["--no-mdns", "--no-broadcast"]


def stagemesh(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mesh ARGS`` with its state and runtime folders under *tmp*."""
    env = {
        **os.environ,
        "STAGEMESH_RUNTIME_DIR": str(tmp / "run"),
        "STAGEMESH_STATE_DIR": str(tmp / "state"),
    }
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def one_error(result: subprocess.CompletedProcess[str], status: int, cause: str) -> str:
    """Check the exit status and that stderr holds one ``error:`` line, with *cause*, and
    no traceback; return that line."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and cause in errors[0], result.stderr
    assert result.stderr.rstrip().endswith(errors[0])
    return errors[0]


@contextlib.contextmanager
def taken_tcp() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_an_unknown_interface_is_a_usage_error_listing_the_interfaces(tmp_path: Path) -> None:
    result = stagemesh(tmp_path, "node", "--bind", "127.0.0.1", "--interface", "nosuch0")
    line = one_error(result, 2, "no interface named 'nosuch0'")
    assert "lo" in line.split("interfaces:")[1]


def test_an_address_of_another_host_lists_this_hosts_addresses(tmp_path: Path) -> None:
    result = stagemesh(tmp_path, "node", "--bind", NOT_MINE, *QUIET)
    line = one_error(result, 2, f"bind address {NOT_MINE} is not an address of this host")
    assert "127.0.0.1 (lo)" in line


def test_a_host_name_to_bind_is_refused_clearly(tmp_path: Path) -> None:
    result = stagemesh(tmp_path, "node", "--bind", "stage-left.example", *QUIET)
    one_error(result, 2, "--bind stage-left.example: give an IPv4 address")


async def test_localhost_binds_loopback(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, ["n1"], ["--bind", "localhost", *QUIET]) as (node,):
        assert node.gossip[0] == "127.0.0.1"


def test_a_taken_status_port_is_named(tmp_path: Path) -> None:
    with taken_tcp() as port:
        result = stagemesh(
            tmp_path, "node", "--bind", "127.0.0.1", "--status", f"127.0.0.1:{port}", *QUIET
        )
    one_error(result, 1, f"status API port {port} on 127.0.0.1: Address already in use")


def test_a_taken_gossip_port_is_named(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = stagemesh(tmp_path, "node", "--bind", "127.0.0.1", "--port", str(port), *QUIET)
    one_error(result, 1, f"gossip port {port} on 127.0.0.1 is taken")


def test_a_taken_registry_port_is_named(tmp_path: Path) -> None:
    with taken_tcp() as port:
        result = stagemesh(
            tmp_path, "registry", "--bind", f"127.0.0.1:{port}", "--db", str(tmp_path / "r.db")
        )
    one_error(result, 1, f"cannot serve on 127.0.0.1:{port}: Address already in use")


def test_a_bad_variable_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    env_result = subprocess.run(
        [sys.executable, "-m", "mesh", "node"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STAGEMESH_PORT": "seventy"},
    )
    one_error(env_result, 2, "STAGEMESH_PORT='seventy'")


def blocked_reading_a_pipe(pid: int) -> bool:
    """Whether process *pid* sleeps in the kernel reading a pipe or FIFO (its wait channel)."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state == "S" and "pipe_read" in wchan


async def test_ctrl_c_while_reading_the_configuration_exits_130(tmp_path: Path) -> None:
    """The node blocks reading its key file (a FIFO nobody writes) when Ctrl-C comes."""
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "mesh", "node", "--bind", "127.0.0.1", *QUIET]
    process = await trio.lowlevel.open_process(
        [*command, "--key-file", str(fifo)], stderr=subprocess.PIPE
    )
    writer: int | None = None
    try:

        def reader_is_waiting() -> bool:
            nonlocal writer
            try:  # succeeds once the node has opened the FIFO to read it
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return False
            return True

        await wait_for(reader_is_waiting, 30, "the node opens its key file")
        # Opening the writer lets the node's open() return; it then reads. A signal that lands
        # between the two is lost (CPython runs its handler at the next bytecode, and the read
        # has begun by then: a second Ctrl-C ends it). Ctrl-C is sent once it is reading.
        await wait_for(lambda: blocked_reading_a_pipe(process.pid), 30, "the node reads the FIFO")
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            status = await process.wait()
        assert process.stderr is not None
        stderr = (await process.stderr.receive_some(65536) or b"").decode()
    finally:
        if writer is not None:
            os.close(writer)
        if process.returncode is None:
            process.kill()
    assert status == 130 and "Traceback" not in stderr, stderr


SLOW_START = textwrap.dedent(
    """
    import sys
    import trio
    from mesh._cli import CommandEntry, main
    from mesh._extensions import Extension
    from mesh._node_cli import NodeCommand

    class SlowToStart(Extension):
        name = "slow"

        async def run(self, node, *, task_status=trio.TASK_STATUS_IGNORED):
            print("extension starting", flush=True)  # a camera that takes its time to open
            await trio.sleep_forever()

    class SlowPlugin:
        name = "slow"

        def configure(self, parser):
            pass

        def config(self, args):
            return None

        def build(self, config, node):
            return SlowToStart()

    node = CommandEntry("node", "run a node", lambda: NodeCommand([SlowPlugin()]))
    sys.exit(main([node], sys.argv[1:]))
    """
)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_signal_during_start_up_stops_at_once_without_a_traceback(
    tmp_path: Path, signum: int, status: int
) -> None:
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-c", SLOW_START, "node", "--bind", "127.0.0.1", *QUIET),
            *("--port", "0", "--state-dir", str(tmp_path / "state")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STAGEMESH_RUNTIME_DIR": str(tmp_path / "run")},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        with trio.fail_after(30):
            out = b""
            while b"extension starting" not in out:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the node exited before its extension started"
                out += chunk
            process.send_signal(signum)
            returncode = await process.wait()
            stderr = b""
            while chunk := await process.stderr.receive_some(65536):
                stderr += chunk
    finally:
        if process.returncode is None:
            process.kill()
    assert returncode == status, stderr
    assert b"ready" not in out and b"Traceback" not in stderr, stderr
    assert not list((tmp_path / "run").glob("status-*.json")), "a status file was left behind"


async def test_a_signal_after_ready_leaves_gracefully_with_status_0(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, ["n1"], QUIET) as (node,):
        node.process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await node.process.wait() == 0


def test_the_search_for_a_free_gossip_port_stays_below_the_registry() -> None:
    from mesh._ports import (
        DEFAULT_BEACON_PORT,
        DEFAULT_GOSSIP_PORT,
        DEFAULT_REGISTRY_PORT,
        gossip_port_candidates,
    )
    from registry_bridge._server import DEFAULT_BIND

    assert DEFAULT_BIND.rpartition(":")[2] == str(DEFAULT_REGISTRY_PORT)
    tried = gossip_port_candidates(DEFAULT_GOSSIP_PORT, next_free=True)
    fixed = [p for p in tried if p != 0]
    assert fixed == list(range(7471, 7480)) == list(GOSSIP_SEARCH)
    assert DEFAULT_REGISTRY_PORT not in tried and DEFAULT_BEACON_PORT not in tried
    assert gossip_port_candidates(7475, next_free=False) == [7475]


TEN_NODES = textwrap.dedent(
    """
    import json, socket, sys, tempfile
    from contextlib import AsyncExitStack
    from pathlib import Path
    import trio
    import mesh

    async def main():
        tmp = Path(tempfile.mkdtemp())
        async with AsyncExitStack() as stack:
            ports = []
            for i in range(10):
                config = mesh.NodeConfig(
                    federation="ports", orchestra="o", name=f"n{i}", bind="127.0.0.1",
                    mdns=False, broadcast=False, state_dir=tmp / "state", runtime_dir=tmp / "run",
                )
                node = await stack.enter_async_context(mesh.open_node(config))
                ports.append(node.address[1])
            with socket.socket() as registry:  # the registry's default port is still free
                registry.bind(("127.0.0.1", 7480))
            print(json.dumps(ports))

    trio.run(main)
    """
)


@pytest.mark.netns
def test_the_tenth_node_on_a_machine_leaves_the_registry_port_free(tmp_path: Path) -> None:
    """In a namespace of its own (only loopback), so the fixed ports are free."""
    done = subprocess.run(
        [
            *("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"),
            *(sys.executable, "-c", TEN_NODES),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ports = [int(p) for p in done.stdout.strip().strip("[]").split(",")]
    assert ports[:9] == list(range(7471, 7480))
    assert ports[9] not in (7470, 7480) and ports[9] > 7480
