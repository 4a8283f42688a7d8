"""Issue #18: validation matches application. Any configuration ``roles.check`` accepts,
``roles.apply`` applies without raising; any it refuses, apply refuses with the same error.

Configurations are drawn with hostile values everywhere (control characters and NUL, ``..``
and absolute paths, huge and negative numbers, unknown options, environment variables) for
every built-in role factory, and go through a real station with real processes. What an
accepted instance runs is harmless: a ``command`` whose program is ``true`` or missing, or the
preset's own command behind a stand-in (``stand_in``), so every builder runs too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from roles import (
    BackoffPolicy,
    ConfigFileError,
    InvalidConfiguration,
    RoleConfig,
    StationIdentity,
    open_station,
)

IDENTITY = StationIdentity(hostname="test-host", mac=None, addresses=())
FAST = BackoffPolicy(base=0.05, max_delay=0.2, failed_retry=0.5)

hostile_text = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", "a\x00b", "a\nb", "a\tb", "x\x1b[2J", "$x", "${y}", "$$", "-rf", "é"]),
)
paths = st.one_of(
    st.sampled_from(["rec", "a/b", ".", "..", "../x", "a/../../b", "/etc", "/tmp", "", "a\x00b"]),
    st.text(max_size=8),
)
numbers = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 5, 60, 300, 301]),
)
env = st.dictionaries(
    st.sampled_from(["TZ", "LANG", "LD_PRELOAD", "PATH", "1X", "A=B", ""]), hostile_text, max_size=2
)
programs = st.sampled_from(["true", "/nonexistent/program", "tr\x00ue", "tru\ne", ""])
REQUIRED = {
    "command": {},
    "record": {"device": hostile_text, "output_dir": paths},
    "encode": {"input": paths, "output": paths},
    "upload": {"source_dir": paths, "destination": hostile_text},
    "stream": {"source": hostile_text, "url": hostile_text},
    "nosuch": {},
}
OPTIONAL = {
    "env": env,
    "cwd": paths,
    "restart": st.sampled_from(["always", "on-failure", "periodic", "sometimes", 3]),
    "interval": numbers,
    "stop_grace": st.one_of(numbers, hostile_text),
    "format": hostile_text,
    "prefix": st.one_of(hostile_text, st.sampled_from(["..", "a/b", "cam"])),
    "segment_seconds": numbers,
    "extra_args": st.lists(hostile_text, max_size=3),
    "bwlimit_kbps": numbers,
    "exclude": st.lists(hostile_text, max_size=2),
    "room": hostile_text,
    "devcie": hostile_text,
}


@st.composite
def instances(draw: st.DrawFn, role: str) -> dict[str, Any]:
    options: dict[str, Any] = {name: draw(value) for name, value in REQUIRED[role].items()}
    for name in draw(st.sets(st.sampled_from(sorted(OPTIONAL)), max_size=3)):
        options[name] = draw(OPTIONAL[name])
    if role == "command" or draw(st.booleans()):
        options["command"] = [draw(programs), *draw(st.lists(hostile_text, max_size=3))]
    else:
        options["stand_in"] = True
    return options


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    roles = draw(st.sets(st.sampled_from(sorted(REQUIRED)), max_size=3))
    return {
        role: {
            uuid: draw(instances(role))
            for uuid in draw(st.sets(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2))
        }
        for role in roles
    }


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=configs())
async def test_what_check_accepts_apply_applies(tmp_path: Path, data: dict[str, Any]) -> None:
    state_dir = tmp_path / f"s{trio.current_time():.6f}"
    with trio.fail_after(60):
        async with open_station(state_dir, identity=IDENTITY, backoff=FAST) as station:
            try:
                config = RoleConfig.from_dict(data, source="roles.check payload")
            except ConfigFileError:
                return  # refused at the edge by both, before either runs
            try:
                station.check(config)
            except InvalidConfiguration as refused:
                try:
                    await station.apply(config)
                except InvalidConfiguration as also:
                    assert (type(also), str(also)) == (type(refused), str(refused))
                else:
                    raise AssertionError(f"apply accepted what check refused: {refused}")
                return
            result = await station.apply(config)  # must not raise
            assert result.digest == config.digest()
            assert {(s.role, s.uuid) for s in station.snapshot().processes} == {
                (r, u) for r, u, _ in config.active()
            }
            for spec in station.policy.validate(config).values():
                assert all("\x00" not in arg for arg in spec.argv)
                assert not spec.ensure_dirs or all(
                    Path(d).is_relative_to(station.data_dir) for d in spec.ensure_dirs
                )
                assert set(spec.env) <= {"TZ", "LANG"}
