"""Extensions bring their own flags: ``stagemesh node`` defines only the node's, each plugin adds
its own (in a help group of its own) and builds its extension from a typed config; the plugin
modules stay light, so adding flags to ``stagemesh node`` loads no extension."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.__main__ import node_extensions
from mesh._bridges import LINK, OSC, LinkConfig, OscConfig
from mesh._cli import UsageError
from mesh._node import NodeConfig
from mesh._node_cli import NodeCommand
from registry_bridge import RegistryConfig
from roles import RolesConfig

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_MODULES = (
    "mesh/_bridges.py",
    "mesh/_plugins.py",
    "roles/_plugin.py",
    "registry_bridge/_plugin.py",
)
LIGHT = {"__future__", "argparse", "ipaddress", "pathlib", "typing", "attrs", "mesh._cli"}
"""What a plugin module may import when it loads (the rest inside ``build``, or for types)."""

FLAGS = {
    "roles": ["--roles", "--operator-keys", "--insecure-remote-roles"],
    "registry": ["--registry"],
    "osc": ["--osc", "--osc-reply"],
    "link": ["--link"],
}


def node_parser(command: NodeCommand) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="node")
    command.configure(parser)
    return parser


def test_the_node_command_defines_no_flag_of_an_extension() -> None:
    bare = node_parser(NodeCommand())
    every = {flag for flags in FLAGS.values() for flag in flags}
    assert every.isdisjoint(bare._option_string_actions)
    with pytest.raises(SystemExit):  # argparse: unrecognized arguments
        bare.parse_args(["--registry", "http://127.0.0.1:7480"])


def test_each_extension_adds_its_flags_in_a_group_of_its_own() -> None:
    plugins = node_extensions()
    assert [p.name for p in plugins] == list(FLAGS)
    parser = node_parser(NodeCommand(plugins))
    for plugin in plugins:
        alone = node_parser(NodeCommand([plugin]))
        assert set(FLAGS[plugin.name]) <= set(alone._option_string_actions)
        others = {f for name, flags in FLAGS.items() if name != plugin.name for f in flags}
        assert others.isdisjoint(alone._option_string_actions)
    groups = [[a.option_strings[0] for a in g._group_actions] for g in parser._action_groups]
    assert all(flags in groups for flags in FLAGS.values())


def test_node_help_lists_every_flag_of_every_extension() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "node", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for title in ("conference station roles:", "registry bridge:", "OSC bridge:", "Ableton Link:"):
        assert f"\n{title}\n" in done.stdout
    for flags in FLAGS.values():
        for flag in flags:
            assert f"  {flag}" in done.stdout, flag


def test_no_flag_builds_no_extension(tmp_path: Path) -> None:
    parser = node_parser(NodeCommand(node_extensions()))
    args = parser.parse_args(["--bind", "127.0.0.1", "--state-dir", str(tmp_path)])
    configs = {p.name: p.config(args) for p in node_extensions()}
    assert configs == {
        "roles": RolesConfig(),
        "registry": RegistryConfig(),
        "osc": OscConfig(),
        "link": LinkConfig(),
    }
    node = NodeConfig(bind="127.0.0.1", state_dir=tmp_path)
    assert all(p.build(configs[p.name], node) is None for p in node_extensions())
    assert NodeCommand(node_extensions()).config(args).extensions == ()


def test_the_typed_configs_are_read_from_the_flags_in_one_place(tmp_path: Path) -> None:
    parser = node_parser(NodeCommand(node_extensions()))
    args = parser.parse_args(
        [
            *("--roles", "station.json", "--operator-keys", "a.pub", "--operator-keys", "b.pub"),
            *("--insecure-remote-roles", "--registry", "https://registry.example"),
            *("--osc", "9000", "--osc-reply", "127.0.0.1:9001", "--link"),
        ]
    )
    plugins = {p.name: p for p in node_extensions()}
    assert plugins["roles"].config(args) == RolesConfig(
        Path("station.json"), (Path("a.pub"), Path("b.pub")), insecure_remote_roles=True
    )
    assert plugins["registry"].config(args) == RegistryConfig("https://registry.example")
    assert OSC.config(args) == OscConfig(("127.0.0.1", 9000), ("127.0.0.1", 9001))
    assert LINK.config(args) == LinkConfig(enabled=True)
    with pytest.raises(ValueError, match="reply address needs an OSC bind"):
        OscConfig(reply_to=("127.0.0.1", 9001))
    with pytest.raises(UsageError, match=r"^--osc-reply needs a port$"):
        OSC.config(parser.parse_args(["--osc", "9000", "--osc-reply", "127.0.0.1:0"]))


@pytest.mark.parametrize("path", PLUGIN_MODULES)
def test_a_plugin_module_imports_nothing_heavy(path: str) -> None:
    """``configure`` and ``config`` must stay cheap: the heavy imports wait for ``build``."""
    tree = ast.parse((ROOT / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        assert set(names) <= LIGHT, f"{path} imports {names} when it loads"
