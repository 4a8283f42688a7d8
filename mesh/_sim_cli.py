"""``stagemesh sim``: run one simulator scenario and report its figures."""

from __future__ import annotations

import argparse
import gc
import json

from mesh._cli import UsageError
from mesh._scenarios import SCENARIOS, ScenarioResult, run_scenario
from mesh._sim_sites import FederationResult, run_federation_join

__all__ = ["SimCommand", "format_federation", "format_result"]


def _fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.3f} {unit}"


def format_result(result: ScenarioResult) -> str:
    """A readable table of one scenario's figures."""
    rows = [
        ("scenario", result.scenario),
        ("nodes", str(result.nodes)),
        ("seed", str(result.seed)),
        ("loss", f"{result.loss:.1%}"),
        ("join known by all", _fmt(result.join_all_s)),
        ("dead/left agreed p50", _fmt(result.dead_all_p50_s)),
        ("dead/left agreed p99", _fmt(result.dead_all_p99_s)),
        ("false deaths", str(result.false_deaths)),
        ("messages per node", f"{result.msgs_per_node_s:.1f} /s"),
        ("bandwidth per node", f"{result.bytes_per_node_s * 8 / 1000:.2f} kbit/s"),
        ("converged", "yes" if result.converged else "NO"),
        ("trace hash", result.trace_hash),
        ("simulated time", _fmt(result.sim_s)),
        ("wall time", _fmt(result.wall_s)),
    ]
    return _table(rows)


def format_federation(result: FederationResult) -> str:
    """A readable table of one federation join (``--sites``)."""
    rows = [
        ("scenario", f"{result.scenario} (federation)"),
        ("nodes", str(result.nodes)),
        ("sites", str(result.sites)),
        ("seed", str(result.seed)),
        ("loss", f"{result.loss:.1%}"),
        ("join known by its site", _fmt(result.join_site_s)),
        ("join known by all", _fmt(result.join_all_s)),
        ("records per member", f"{result.records_per_member:.1f}"),
        ("records per supernode", f"{result.records_per_supernode:.1f}"),
        ("bandwidth per member", f"{result.bytes_per_member_s * 8 / 1000:.2f} kbit/s"),
        ("bandwidth per supernode", f"{result.bytes_per_supernode_s * 8 / 1000:.2f} kbit/s"),
        ("messages per node", f"{result.msgs_per_node_s:.1f} /s"),
        ("converged", "yes" if result.converged else "NO"),
        ("trace hash", result.trace_hash),
        ("simulated time", _fmt(result.sim_s)),
        ("wall time", _fmt(result.wall_s)),
        ("wall time of the join", _fmt(result.join_wall_s)),
        ("peak memory", f"{result.peak_rss_mib:.0f} MiB"),
    ]
    return _table(rows)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class SimCommand:
    """``stagemesh sim``: the deterministic simulator from the command line."""

    name = "sim"
    help = "run a membership scenario in the deterministic simulator"
    environment = {"--seed": "STAGEMESH_SIM_SEED", "--sites": "STAGEMESH_SIM_SITES"}
    """``STAGEMESH_SEED`` is the node's list of static peers and ``STAGEMESH_SITES`` the demo's
    number of sites; the simulator's seed and sites have their own."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--nodes", type=int, default=30, help="group size (default 30)")
        parser.add_argument("--scenario", choices=SCENARIOS, default="join")
        parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
        parser.add_argument("--loss", type=float, default=0.0, help="datagram loss, 0-1")
        parser.add_argument(
            "--stall-every",
            type=float,
            default=0.0,
            help="each node stalls for 1 s on average this often (seconds; 0 = never)",
        )
        parser.add_argument(
            "--duration", type=float, default=3600.0, help="soak length (simulated seconds)"
        )
        parser.add_argument(
            "--sites",
            type=int,
            default=1,
            help="split the nodes into this many sites, each its own LAN and orchestra, joined "
            "only through their supernodes (default 1: one LAN; more: only --scenario join)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def run(self, args: argparse.Namespace) -> int:
        if args.nodes < 2:
            raise UsageError("--nodes must be at least 2")
        if not 0.0 <= args.loss < 1.0:
            raise UsageError("--loss must be in [0, 1)")
        if args.sites < 1:
            raise UsageError("--sites must be at least 1")
        if args.sites > 1:
            return self._run_federation(args)
        result = run_scenario(
            args.scenario,
            args.nodes,
            args.seed,
            args.loss,
            stall_every=args.stall_every,
            duration_s=args.duration,
        )
        if args.json:
            print(json.dumps(result.as_dict()))
        else:
            print(format_result(result))
        return 0 if result.converged else 1

    def _run_federation(self, args: argparse.Namespace) -> int:
        if args.scenario != "join":
            raise UsageError(f"--sites {args.sites} runs only --scenario join")
        if args.nodes < 2 * args.sites:
            raise UsageError("--nodes must be at least 2 per site")
        if args.stall_every:
            raise UsageError("--stall-every is not simulated with --sites")
        result = run_federation_join(args.nodes, args.sites, args.seed, args.loss)
        # The process ends next: its last collection need not walk (and free, one by one)
        # the millions of objects of the simulation, seconds at 100,000 nodes.
        gc.freeze()
        if args.json:
            print(json.dumps(result.as_dict()))
        else:
            print(format_federation(result))
        return 0 if result.converged else 1
