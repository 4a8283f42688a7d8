"""``stagemesh sim`` as a real subprocess: the JSON contract, the table, and usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KEYS = {
    "scenario",
    "nodes",
    "seed",
    "loss",
    "join_all_s",
    "dead_all_p50_s",
    "dead_all_p99_s",
    "false_deaths",
    "msgs_per_node_s",
    "bytes_per_node_s",
    "trace_hash",
    "wall_s",
    "sim_s",
}
# The figures each scenario produces; the others must be null.
PRODUCES = {
    "join": {"join_all_s"},
    "crash": {"dead_all_p50_s", "dead_all_p99_s"},
    "leave": {"dead_all_p50_s", "dead_all_p99_s"},
    "partition": {"join_all_s"},
    "churn": {"join_all_s"},
}
FIGURES = {"join_all_s", "dead_all_p50_s", "dead_all_p99_s"}


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", "sim", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("scenario", sorted(PRODUCES))
def test_json_has_exactly_the_documented_keys(scenario: str) -> None:
    out = sim("--nodes", "8", "--scenario", scenario, "--seed", "3", "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1  # one JSON object, nothing else on stdout
    doc = json.loads(lines[0])
    assert set(doc) == KEYS
    assert doc["scenario"] == scenario and doc["nodes"] == 8 and doc["seed"] == 3
    assert doc["loss"] == 0.0 and doc["false_deaths"] == 0
    for key in FIGURES:
        if key in PRODUCES[scenario]:
            assert isinstance(doc[key], float) and doc[key] >= 0.0
        else:
            assert doc[key] is None
    assert doc["msgs_per_node_s"] > 0 and doc["bytes_per_node_s"] > 0
    assert isinstance(doc["trace_hash"], str) and len(doc["trace_hash"]) == 32
    assert doc["sim_s"] > 3.0 and doc["wall_s"] > 0.0


def test_same_seed_same_output_and_loss_is_reported() -> None:
    args = ("--nodes", "10", "--scenario", "crash", "--seed", "9", "--loss", "0.05", "--json")
    first, again = (json.loads(sim(*args).stdout) for _ in range(2))
    for doc in (first, again):
        del doc["wall_s"]
    assert first == again
    assert first["loss"] == 0.05
    other = json.loads(sim(*args[:5], "10", *args[6:]).stdout)
    assert other["seed"] == 10 and other["trace_hash"] != first["trace_hash"]


def test_table_names_every_figure() -> None:
    out = sim("--nodes", "6", "--scenario", "crash", "--seed", "2")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for label in (
        "scenario",
        "join known by all",
        "dead/left agreed p50",
        "dead/left agreed p99",
        "false deaths",
        "bandwidth per node",
        "trace hash",
        "simulated time",
        "wall time",
    ):
        assert label in text
    assert "converged" in text and "yes" in text


def test_console_script_matches_python_m_mesh() -> None:
    args = ["--nodes", "5", "--scenario", "leave", "--seed", "4", "--json"]
    script = subprocess.run(
        ["stagemesh", "sim", *args], capture_output=True, text=True, timeout=120
    )
    module = sim(*args)
    assert script.returncode == module.returncode == 0
    a, b = json.loads(script.stdout), json.loads(module.stdout)
    assert a["trace_hash"] == b["trace_hash"]


FEDERATION_KEYS = {
    "scenario",
    "nodes",
    "sites",
    "seed",
    "loss",
    "join_site_s",
    "join_all_s",
    "records_per_member",
    "records_per_supernode",
    "bytes_per_member_s",
    "bytes_per_supernode_s",
    "msgs_per_node_s",
    "trace_hash",
    "wall_s",
    "join_wall_s",
    "peak_rss_mib",
    "sim_s",
}


def test_sites_run_a_federation_join_with_its_documented_keys() -> None:
    out = sim("--nodes", "60", "--sites", "3", "--seed", "2", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == FEDERATION_KEYS
    assert doc["nodes"] == 60 and doc["sites"] == 3 and doc["scenario"] == "join"
    assert 0.0 < doc["join_site_s"] <= doc["join_all_s"]
    assert doc["records_per_member"] >= 20 and doc["records_per_supernode"] >= 23
    table = sim("--nodes", "60", "--sites", "3", "--seed", "2")
    assert table.returncode == 0, table.stderr
    for label in ("sites", "join known by its site", "join known by all", "records per member"):
        assert label in table.stdout
    assert doc["trace_hash"] in table.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nodes", "1"], "--nodes"),
        (["--nodes", "x"], "--nodes"),
        (["--scenario", "bogus"], "--scenario"),
        (["--loss", "1.5"], "--loss"),
        (["--loss", "-0.1"], "--loss"),
        (["--seed", "abc"], "--seed"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--sites", "0"], "--sites"),
        (["--sites", "4", "--nodes", "7"], "--nodes"),
        (["--sites", "2", "--scenario", "crash"], "--sites"),
        (["--sites", "2", "--stall-every", "5"], "--stall-every"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], needle: str) -> None:
    out = sim(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in out.stderr
