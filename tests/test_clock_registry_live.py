"""Federation time with a real registry that misbehaves (in process: the registry's app,
hypercorn and SQLite, and real nodes on loopback with skewed, drifting clocks and the registry
bridge): the LAN keeps time whatever the registry does, and the registry learns the
federation's time back after a reset or an empty restart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from mesh import Node, NodeConfig, open_node
from registry_bridge import RegistryBridge, RegistryClient, RegistryError
from tests.harness import wait_for
from tests.livenodes import loopback_config
from tests.registries import InProcessRegistry, in_process_registry

FEDERATION = "liveclock"
SKEWS = {"n0": (1.5, 80.0), "n1": (-0.7, -60.0), "n2": (0.4, 30.0)}


def config(tmp: Path, name: str, url: str, seeds: tuple[tuple[str, int], ...] = ()) -> NodeConfig:
    skew, drift = SKEWS[name]
    return loopback_config(
        tmp,
        f"/site/{name}",
        federation=FEDERATION,
        seeds=seeds,
        registry=url,
        conductor=name == "n0",
        status=None,
        clock_skew=skew,
        clock_drift=drift,
        extensions=(RegistryBridge(url, interval=0.2, max_backoff=1.0, timeout=2.0),),
    )


class Watch:
    """Reads every node's federation time beside the host's monotonic clock, every 50 ms:
    never backwards, within 1 +- 0.5% of real time over every half second, no step."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.samples: list[tuple[float, list[float]]] = []
        self.steps = [n.status()["clock"]["steps"] for n in nodes]

    def look(self) -> None:
        now = time.monotonic()
        self.samples.append((now, [n.now() for n in self.nodes]))

    async def run(self, seconds: float) -> None:
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            self.look()
            await trio.sleep(0.05)  # the sampling period (not a synchronisation)

    def check(self) -> tuple[float, float]:
        """(worst |rate - 1| over half-second windows, worst spread); asserts the rules."""
        worst_rate = worst_spread = 0.0
        for (_, before), (_, after) in zip(self.samples, self.samples[1:], strict=False):
            assert all(b <= a for b, a in zip(before, after, strict=True)), "time went back"
        start = 0
        for end in range(len(self.samples)):
            t0, f0 = self.samples[start]
            t1, f1 = self.samples[end]
            if t1 - t0 >= 0.5:
                for a, b in zip(f0, f1, strict=True):
                    worst_rate = max(worst_rate, abs((b - a) / (t1 - t0) - 1.0))
                start = end
        for _, feds in self.samples:
            worst_spread = max(worst_spread, max(feds) - min(feds))
        assert worst_rate <= 0.005, f"federation time ran {worst_rate:.4f} off real time"
        assert [n.status()["clock"]["steps"] for n in self.nodes] == self.steps, "a step"
        return worst_rate, worst_spread


@contextlib.asynccontextmanager
async def site(tmp: Path, url: str) -> AsyncIterator[list[Node]]:
    async with contextlib.AsyncExitStack() as stack:
        n0 = await stack.enter_async_context(open_node(config(tmp, "n0", url)))
        nodes = [n0]
        for name in ("n1", "n2"):
            seeds = (n0.address,)
            nodes.append(await stack.enter_async_context(open_node(config(tmp, name, url, seeds))))
        yield nodes


def agreed(nodes: list[Node], within: float = 0.002) -> bool:
    """Every node synced, one reference, federation times within *within* of each other."""
    if not all(n.clock.synced for n in nodes) or sum(n.clock.is_reference for n in nodes) != 1:
        return False
    times = [n.now() for n in nodes]
    return max(times) - min(times) <= within


LAST_SEEN: dict[str, str] = {}
"""What :func:`registry_has_our_time` saw last, for a failure's message."""


async def registry_has_our_time(reg: InProcessRegistry, node: Node, within: float) -> bool:
    """The registry's federation time is the node's lineage, and within *within* of its
    federation time (read just before and just after the request)."""
    async with RegistryClient(reg.url, timeout=2.0) as client:
        before = node.now()
        try:
            sample = await client.elapsed(FEDERATION)
        except RegistryError as exc:
            LAST_SEEN["registry"] = f"error {exc}"
            return False
        after = node.now()
    theirs = (sample.t2 + sample.t3) / 2
    clock = node.status()["clock"]
    LAST_SEEN["registry"] = (
        f"registry lineage {sample.lineage} at {theirs - (before + after) / 2:+.4f} s from "
        f"{node.path} (read within {after - before:.4f} s), whose clock is {clock}"
    )
    return sample.lineage == clock["lineage"] and before - within <= theirs <= after + within


async def test_an_orchestra_syncs_on_its_lan_with_the_registry_down_and_it_learns_the_time(
    tmp_path: Path,
) -> None:
    async with in_process_registry(tmp_path) as reg:
        bind = reg.bind
        await reg.stopped()  # down when the nodes start
        async with site(tmp_path, reg.url) as nodes:
            took = await wait_for(lambda: agreed(nodes), 10, "the orchestra synced on its LAN")
            assert took <= 2.0, f"synced {took:.2f} s after the last node started"
            assert all(n.status()["registry"]["state"] in ("unreachable", "idle") for n in nodes)
            watch = Watch(nodes)
            await watch.run(1.0)
            await reg.start(bind)  # the registry comes up late: it learns the federation's time
            await wait_for(
                lambda: registry_has_our_time(reg, nodes[0], 0.005), 15, "registry has our time"
            )
            await watch.run(1.0)
            watch.check()
            assert agreed(nodes)


async def reset(reg: InProcessRegistry) -> None:
    assert reg.store is not None
    await trio.to_thread.run_sync(reg.store.reset_federation, FEDERATION)  # an organiser


async def empty_restart(reg: InProcessRegistry) -> None:
    await reg.restart_empty()


@pytest.mark.parametrize("fault", [reset, empty_restart])
async def test_a_reset_or_an_empty_restart_changes_no_tempo_and_elapsed_goes_on(
    tmp_path: Path, fault: Callable[[InProcessRegistry], Awaitable[None]]
) -> None:
    async with in_process_registry(tmp_path) as reg, site(tmp_path, reg.url) as nodes:
        await wait_for(lambda: agreed(nodes), 10, "the orchestra synced")
        await wait_for(
            lambda: registry_has_our_time(reg, nodes[0], 0.005), 15, "registry has our time"
        )
        watch = Watch(nodes)
        await watch.run(1.0)
        await fault(reg)
        try:
            await wait_for(
                lambda: registry_has_our_time(reg, nodes[0], 0.005), 15, "elapsed went on"
            )
        except AssertionError as failed:  # (rare under load: say what the registry had)
            raise AssertionError(f"{failed}; last seen: {LAST_SEEN.get('registry')}") from None
        await watch.run(2.0)
        _, spread = watch.check()
        assert spread <= 0.002 and agreed(nodes)
