"""Role factories and whole-update validation: one test per error type, presets, wire form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from roles import (
    BlockedRole,
    BuildContext,
    ConfigFileError,
    FactoryRegistry,
    InvalidConfiguration,
    InvalidOptions,
    InvalidRequest,
    MissingRoleFactory,
    NotConductor,
    RoleConfig,
    RoleEntry,
    RolesError,
    StaleOrder,
    TooManyInstances,
    Unauthorized,
    default_factories,
    error_family,
    error_from_dict,
    error_from_wire,
    validate_update,
)


def config(*items: tuple[str, str, dict[str, Any]]) -> RoleConfig:
    return RoleConfig(tuple((role, uuid, RoleEntry(1, options)) for role, uuid, options in items))


def refused(cfg: RoleConfig, **kwargs: Any) -> InvalidConfiguration:
    with pytest.raises(InvalidConfiguration) as info:
        validate_update(cfg, default_factories(), **kwargs)
    return info.value


def test_blocked_role_names_role_uuid_and_reason() -> None:
    error = refused(
        config(("stream", "main-hall", {"source": "s", "url": "rtmp://x/y"})),
        blocked_roles={"stream"},
    )
    assert type(error) is BlockedRole
    assert (error.role, error.uuid) == ("stream", "main-hall")
    message = str(error)
    assert "'stream'" in message and "'main-hall'" in message and "blocked" in message


def test_missing_role_factory_names_role_uuid_and_reason() -> None:
    error = refused(config(("recrod", "cam-1", {"device": "d"})))
    assert type(error) is MissingRoleFactory
    assert (error.role, error.uuid) == ("recrod", "cam-1")
    message = str(error)
    assert "'recrod'" in message and "'cam-1'" in message
    assert "no role factory" in message
    assert "did you mean 'record'" in message


def test_too_many_instances_names_role_uuid_limit_and_reason() -> None:
    options = {"input": "in.ts", "output": "out.mp4"}
    error = refused(config(("encode", "job-1", options), ("encode", "job-2", options)))
    assert type(error) is TooManyInstances
    assert error.role == "encode"
    assert error.uuid == "job-2"
    message = str(error)
    assert "'encode'" in message and "'job-1'" in message and "'job-2'" in message
    assert "at most 1" in message and "2 instances" in message


def test_invalid_options_names_role_uuid_option_and_reason() -> None:
    error = refused(config(("record", "cam-1", {"output_dir": "/srv"})))
    assert type(error) is InvalidOptions
    assert (error.role, error.uuid) == ("record", "cam-1")
    message = str(error)
    assert "'record'" in message and "'cam-1'" in message
    assert "required option 'device' is missing" in message


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"device": 3, "output_dir": "/srv"}, "option 'device' must be a string"),
        ({"device": "d", "output_dir": "/srv", "devcie": "x"}, "unknown option 'devcie'"),
        ({"device": "d", "output_dir": "/srv", "restart": "sometimes"}, "option 'restart'"),
        ({"device": "d", "output_dir": "/srv", "command": "run $nothing"}, "$nothing"),
        ({"device": "d", "output_dir": "/srv", "command": "a 'b"}, "cannot be split"),
        ({"device": "d", "output_dir": "/srv", "interval": 0}, "'interval'"),
    ],
)
def test_invalid_options_reasons(options: dict[str, Any], reason: str) -> None:
    error = refused(config(("record", "cam-1", options)))
    assert type(error) is InvalidOptions
    assert reason in str(error)
    assert "'cam-1'" in str(error)


def test_all_problems_are_reported_in_one_message() -> None:
    error = refused(
        config(("zzz", "a", {}), ("stream", "s", {"source": "x", "url": "y"})),
        blocked_roles={"stream"},
    )
    assert type(error) is BlockedRole
    assert "and 1 more problem" in str(error)
    assert "'zzz'" in str(error)


def test_tombstones_are_not_validated_or_counted() -> None:
    cfg = config(("encode", "job-1", {"input": "i", "output": "o"}))
    cfg = cfg.with_removed("encode", "job-0", 5).with_removed("stream", "s", 5)
    specs = validate_update(cfg, default_factories(), blocked_roles={"stream"})
    assert list(specs) == [("encode", "job-1")]


def test_presets_build_argv_lists() -> None:
    specs = validate_update(
        config(
            ("record", "cam", {"device": "/dev/video0", "output_dir": "/srv/rec"}),
            ("encode", "job", {"input": "in.ts", "output": "out.mp4"}),
            ("upload", "up", {"source_dir": "/srv/rec", "destination": "st:/a"}),
            ("stream", "live", {"source": "/dev/video0", "url": "rtmp://h/live"}),
        ),
        default_factories(),
    )
    record = specs[("record", "cam")]
    assert record.argv[0] == "ffmpeg"
    assert "/dev/video0" in record.argv
    assert record.argv[-1] == "/srv/rec/cam_%Y-%m-%d_%H-%M-%S.ts"
    assert record.ensure_dirs == ("/srv/rec",)
    assert record.restart == "always"
    assert specs[("encode", "job")].restart == "on-failure"
    assert specs[("encode", "job")].argv[-1] == "out.mp4"
    upload = specs[("upload", "up")]
    assert upload.argv[0] == "rsync"
    assert upload.argv[-2:] == ("/srv/rec/", "st:/a")
    assert upload.restart == "periodic"
    assert specs[("stream", "live")].argv[-1] == "rtmp://h/live"


def test_command_template_is_filled_per_argument_without_a_shell() -> None:
    specs = validate_update(
        config(
            (
                "command",
                "c1",
                {"command": "echo $greeting ${uuid}-$room $$HOME", "greeting": "hello world"},
            ),
            (
                "record",
                "r1",
                {"device": "d", "output_dir": "/o", "command": ["cp", "$device", "$output_dir"]},
            ),
        ),
        default_factories(),
        variables={"room": "hall"},
    )
    assert specs[("command", "c1")].argv == ("echo", "hello world", "c1-hall", "$HOME")
    assert specs[("record", "r1")].argv == ("cp", "d", "/o")


def test_registry_names_and_duplicates() -> None:
    registry = default_factories()
    assert registry.names() == ("command", "encode", "record", "stream", "upload")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("record"))  # type: ignore[arg-type]
    registry.register(registry.get("command").renamed("slides", max_instances=1))  # type: ignore[union-attr]
    assert "slides" in registry
    spec = registry.get("slides").build(  # type: ignore[union-attr]
        {"command": "true"}, BuildContext(role="slides", uuid="s")
    )
    assert spec.argv == ("true",)
    assert FactoryRegistry().names() == ()


@pytest.mark.parametrize(
    "error",
    [
        BlockedRole("role 'x' is blocked", role="x", uuid="u"),
        MissingRoleFactory("no factory", role="x", uuid="u"),
        TooManyInstances("too many", role="x", uuid="u"),
        InvalidOptions("bad option", role="x", uuid="u"),
        ConfigFileError("f: at $: bad"),
        InvalidConfiguration("generic"),
        InvalidRequest("unknown kind"),
    ],
)
def test_errors_survive_a_network_hop_typed(error: RolesError) -> None:
    wire = msgpack.unpackb(msgpack.packb(error.to_wire()))
    back = error_from_dict(wire)
    assert type(back) is type(error)
    assert back == error
    assert str(back) == str(error)
    again = error_from_wire(wire["type"], wire["message"], wire["role"], wire["uuid"])
    assert again == error


def test_unknown_error_type_from_a_newer_peer_keeps_its_text() -> None:
    error = error_from_wire("QuotaExceeded", "too much")
    assert type(error) is InvalidConfiguration
    assert str(error) == "QuotaExceeded: too much"
    assert type(error_from_dict({"message": 3})) is InvalidConfiguration


def test_command_factory_refuses_non_scalar_extra_options() -> None:
    error = refused(config(("command", "c1", {"command": "true", "args": [1, 2]})))
    assert type(error) is InvalidOptions
    assert "'c1'" in str(error) and "option 'args' is an array" in str(error)


def test_factories_and_specs_are_hashable_values() -> None:
    registry = default_factories()
    assert len({hash(registry.get(name)) for name in registry.names()}) == 5
    spec = validate_update(
        config(("command", "c", {"command": "true", "env": {"TZ": "UTC"}})), registry
    )
    assert hash(spec[("command", "c")]) == hash(spec[("command", "c")])


def test_every_error_carries_the_seeds_family_name() -> None:
    families = {
        ConfigFileError: "InvalidConfiguration",
        InvalidOptions: "InvalidConfiguration",
        TooManyInstances: "InvalidConfiguration",
        BlockedRole: "BlockedRole",
        MissingRoleFactory: "MissingRoleFactory",
        InvalidRequest: "InvalidRequest",
        NotConductor: "NotConductor",
        Unauthorized: "Unauthorized",
        StaleOrder: "Unauthorized",
    }
    for cls, family in families.items():
        error = cls("m")
        assert error.to_wire()["family"] == family
        assert error_family(cls.wire_name) == family
    assert error_family("SomethingNew") == "SomethingNew"


def test_paths_stay_under_the_station_folders_and_env_is_allow_listed(tmp_path: Path) -> None:
    data, extra = tmp_path / "data", tmp_path / "media"
    roots = (str(data), str(extra))

    def build(options: dict[str, Any], role: str = "record") -> Any:
        specs = validate_update(
            config((role, "cam", options)), default_factories(), roots=roots, env_allow={"MY"}
        )
        return specs[(role, "cam")]

    spec = build({"device": "/dev/video0", "output_dir": "rooms/a"})
    assert spec.ensure_dirs == (str(data / "rooms" / "a"),)
    assert any(arg.startswith(str(data / "rooms" / "a") + "/cam_") for arg in spec.argv)
    assert build({"device": "d", "output_dir": str(extra / "x")}).ensure_dirs == (str(extra / "x"),)
    for escape in ("../x", str(tmp_path / "other"), "a/../../../x", "/etc"):
        with pytest.raises(InvalidOptions, match="outside the folders"):
            build({"device": "d", "output_dir": escape})
    (data).mkdir()
    (data / "link").symlink_to("/etc")
    with pytest.raises(InvalidOptions, match="outside the folders"):
        build({"device": "d", "output_dir": "link/x"})  # a symbolic link out is followed
    with pytest.raises(InvalidOptions, match="prefix"):
        build({"device": "d", "output_dir": "r", "prefix": "../../x"})
    command = {"command": ["true"]}
    assert build({**command, "env": {"TZ": "UTC", "MY": "1"}}, "command").env == {
        "TZ": "UTC",
        "MY": "1",
    }
    with pytest.raises(InvalidOptions, match="sets LD_PRELOAD"):
        build({**command, "env": {"LD_PRELOAD": "/x.so"}}, "command")
    with pytest.raises(InvalidOptions, match="control character"):
        build({"command": ["true", "a\x00b"]}, "command")
    assert build({"command": ["sh", "-c", "a\nb\tc"]}, "command").argv[2] == "a\nb\tc"
    with pytest.raises(InvalidOptions, match="'stop_grace'"):
        build({**command, "stop_grace": 1e9}, "command")


def test_a_stand_in_says_what_the_real_command_would_run() -> None:
    spec = validate_update(
        config(("upload", "u", {"source_dir": "r", "destination": "h:/a", "stand_in": True})),
        default_factories(),
    )[("upload", "u")]
    assert spec.argv[1:5] == ("-m", "roles._standin", "periodic", "--")
    assert spec.argv[5] == "rsync" and spec.argv[-1] == "h:/a"
