"""The manager's view: the desired role configuration of every station, and their answers.

EventStreamr's manager kept one configuration per station and pushed it. Here the manager is
whichever node conducts, so this view must survive the conductor: :class:`DesiredState` is a
value that merges (commutative, associative, idempotent) and travels in gossip, so a new
conductor has it and can push the same configuration again.

* Per station path (``/room-a/cam1``), a :class:`~roles.RoleConfig`; configurations merge entry
  by entry by timestamp, and removals are tombstones, so edits made on two nodes combine.
* Per station, the last :class:`StationAnswer`: which configuration (by digest) it answered
  about, and whether it applied it or the typed error it raised. Answers merge by ``time``.

Sans-IO: the caller passes ``now`` (federation time) and does the pushing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from mesh._names import InvalidName, check_name
from roles._config import RoleConfig, RoleEntry, canonical_json
from roles._errors import ConfigFileError, RolesError, error_from_wire

__all__ = ["DesiredState", "StationAnswer", "check_station_path"]


def check_station_path(path: object) -> str:
    """Return *path* if it is a node path ``/<orchestra>/<name>``, else raise ``ValueError``."""
    if not isinstance(path, str) or not path.startswith("/") or path.count("/") != 2:
        raise ValueError(f"a station path looks like /<orchestra>/<name>, not {path!r}")
    _, orchestra, name = path.split("/")
    check_name(orchestra, "orchestra")
    check_name(name, "node name")
    return path


@attrs.frozen
class StationAnswer:
    """A station's answer to a pushed configuration: the ``digest`` of that configuration,
    whether it was ``applied``, else the error's ``error_type`` and ``error_message`` (the typed
    error's wire form), and the federation ``time`` it was recorded."""

    digest: str
    applied: bool
    time: float
    error_type: str | None = None
    error_message: str | None = None

    @classmethod
    def ok(cls, digest: str, now: float) -> StationAnswer:
        """The answer "applied configuration *digest*"."""
        return cls(digest=digest, applied=True, time=now)

    @classmethod
    def refused(cls, digest: str, error: RolesError, now: float) -> StationAnswer:
        """The answer "refused configuration *digest* with *error*"."""
        return cls(
            digest=digest,
            applied=False,
            time=now,
            error_type=error.wire_name,
            error_message=error.message,
        )

    def error(self) -> RolesError | None:
        """Return the typed error of a refusal (rebuilt from its wire form), else ``None``."""
        if self.applied:
            return None
        return error_from_wire(self.error_type or "InvalidConfiguration", self.error_message or "")

    def to_dict(self) -> dict[str, Any]:
        """Return a msgpack/JSON-able dict."""
        return {
            "digest": self.digest,
            "applied": self.applied,
            "time": self.time,
            "error_type": self.error_type,
            "error_message": self.error_message,
        }

    def sort_key(self) -> tuple[float, str]:
        """Newer answers win a merge; ties are broken by canonical JSON."""
        return (self.time, canonical_json(self.to_dict()))

    @classmethod
    def from_dict(cls, data: object, *, source: str, path: str) -> StationAnswer:
        """Decode :meth:`to_dict`'s form; raises :class:`~roles.ConfigFileError`."""
        if not isinstance(data, Mapping):
            raise ConfigFileError.at(source, path, "expected an object (a station answer)")
        digest = data.get("digest")
        applied = data.get("applied")
        when = data.get("time")
        error_type = data.get("error_type")
        error_message = data.get("error_message")
        if not isinstance(digest, str):
            raise ConfigFileError.at(source, f"{path}.digest", "expected a string")
        if not isinstance(applied, bool):
            raise ConfigFileError.at(source, f"{path}.applied", "expected true or false")
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise ConfigFileError.at(source, f"{path}.time", "expected a number")
        for name, value in (("error_type", error_type), ("error_message", error_message)):
            if value is not None and not isinstance(value, str):
                raise ConfigFileError.at(source, f"{path}.{name}", "expected a string or null")
        return cls(
            digest=digest,
            applied=applied,
            time=float(when),
            error_type=error_type,
            error_message=error_message,
        )


def _sorted_pairs(pairs: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(pairs, key=lambda p: p[0]))


@attrs.frozen
class DesiredState:
    """Desired configuration per station path, and each station's last answer (frozen)."""

    stations: tuple[tuple[str, RoleConfig], ...] = attrs.field(default=(), converter=_sorted_pairs)
    answers: tuple[tuple[str, StationAnswer], ...] = attrs.field(
        default=(), converter=_sorted_pairs
    )

    # --- reading -----------------------------------------------------------------------------

    def station_paths(self) -> tuple[str, ...]:
        """Return every station path with a desired configuration or an answer."""
        return tuple(sorted({p for p, _ in self.stations} | {p for p, _ in self.answers}))

    def config_for(self, path: str) -> RoleConfig:
        """Return the desired configuration of *path* (empty if none): what to push."""
        return dict(self.stations).get(path, RoleConfig())

    def answer_for(self, path: str) -> StationAnswer | None:
        """Return *path*'s last answer, or ``None``."""
        return dict(self.answers).get(path)

    def in_sync(self, path: str) -> bool:
        """Return whether *path* last applied exactly its current desired configuration."""
        answer = self.answer_for(path)
        return (
            answer is not None
            and answer.applied
            and answer.digest == self.config_for(path).digest()
        )

    def out_of_sync(self) -> tuple[str, ...]:
        """Return the stations whose desired configuration is not known to be applied."""
        return tuple(p for p, _ in self.stations if not self.in_sync(p))

    # --- changing (each returns a new value) ------------------------------------------------

    def _with_config(self, path: str, config: RoleConfig) -> DesiredState:
        check_station_path(path)
        others = tuple((p, c) for p, c in self.stations if p != path)
        return attrs.evolve(self, stations=(*others, (path, config)))

    def set_entry(
        self, path: str, role: str, uuid: str, options: Mapping[str, Any], timestamp: int
    ) -> DesiredState:
        """Return a copy where station *path* should run (*role*, *uuid*) with *options*."""
        config = self.config_for(path).merge(
            RoleConfig(((role, uuid, RoleEntry(timestamp=timestamp, options=options)),))
        )
        return self._with_config(path, config)

    def remove_entry(self, path: str, role: str, uuid: str, timestamp: int) -> DesiredState:
        """Return a copy where (*role*, *uuid*) is removed from *path* (a tombstone)."""
        config = self.config_for(path).merge(
            RoleConfig(((role, uuid, RoleEntry.tombstone(timestamp)),))
        )
        return self._with_config(path, config)

    def merge_config(self, path: str, config: RoleConfig) -> DesiredState:
        """Return a copy with *config* merged into *path*'s (entry by entry, by timestamp)."""
        return self._with_config(path, self.config_for(path).merge(config))

    def replace_config(self, path: str, config: RoleConfig, timestamp: int) -> DesiredState:
        """Return a copy where *path*'s live entries are those of *config*: entries of
        *config* are merged in, and live entries it lacks get tombstones dated *timestamp*
        (a "push this file" edit)."""
        current = self.config_for(path)
        removed = RoleConfig(
            tuple(
                (role, uuid, RoleEntry.tombstone(timestamp))
                for role, uuid, entry in current
                if not entry.deleted and (role, uuid) not in config
            )
        )
        return self._with_config(path, current.merge(config).merge(removed))

    def record_answer(self, path: str, answer: StationAnswer) -> DesiredState:
        """Return a copy with *answer* recorded for *path* (unless a newer one is there)."""
        check_station_path(path)
        current = self.answer_for(path)
        if current is not None and current.sort_key() >= answer.sort_key():
            return self
        others = tuple((p, a) for p, a in self.answers if p != path)
        return attrs.evolve(self, answers=(*others, (path, answer)))

    def merge(self, other: DesiredState) -> DesiredState:
        """Return the merge of two views (commutative, associative, idempotent)."""
        result = self
        for path, config in other.stations:
            result = result._with_config(path, result.config_for(path).merge(config))
        for path, answer in other.answers:
            result = result.record_answer(path, answer)
        return result

    # --- transport ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"stations": {path: config}, "answers": {path: answer}}`` (plain dicts)."""
        return {
            "stations": {path: config.to_dict() for path, config in self.stations},
            "answers": {path: answer.to_dict() for path, answer in self.answers},
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str = "desired state") -> DesiredState:
        """Decode :meth:`to_dict`'s form; raises :class:`~roles.ConfigFileError` naming the
        source, the path and the problem."""
        if not isinstance(data, Mapping):
            raise ConfigFileError.at(source, "$", "expected an object with 'stations'")
        stations_raw = data.get("stations", {})
        answers_raw = data.get("answers", {})
        if not isinstance(stations_raw, Mapping) or not isinstance(answers_raw, Mapping):
            raise ConfigFileError.at(source, "$", "'stations' and 'answers' must be objects")
        stations: list[tuple[str, RoleConfig]] = []
        for path, config in stations_raw.items():
            where = f'$.stations["{path}"]'
            try:
                check_station_path(path)
            except (ValueError, InvalidName) as exc:
                raise ConfigFileError.at(source, where, str(exc)) from None
            stations.append((path, RoleConfig.from_dict(config, source=f"{source} {where}")))
        answers: list[tuple[str, StationAnswer]] = []
        for path, answer in answers_raw.items():
            where = f'$.answers["{path}"]'
            try:
                check_station_path(path)
            except (ValueError, InvalidName) as exc:
                raise ConfigFileError.at(source, where, str(exc)) from None
            answers.append((path, StationAnswer.from_dict(answer, source=source, path=where)))
        return cls(stations=stations, answers=answers)
