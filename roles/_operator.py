"""Operator keys and signed orders: who may change a station, proved end to end.

Holding the federation key makes a machine a *member*: it may gossip, be elected and relay
requests. It does not make it an *operator*. A change to a station (a new role configuration,
starting or stopping a role) is an :class:`Order` signed with an operator's Ed25519 private key
(``stagemesh keygen --operator PATH``, kept by the AV crew); stations and conductor candidates
are given the public halves (``stagemesh node --operator-keys FILE``). The conductor relays an
order with its signature, and the station verifies it itself, so no node (not even one that
wins or forges the conductor post) can sign in an operator's name.

What is signed: a domain tag and the canonical JSON of every field of the order but the
signature: its ``kind`` (``config`` or ``control``), the ``federation``, the target ``station``
path, the time it was ``issued`` (milliseconds since the Unix epoch, the operator's clock),
and either the configuration and its ``mode`` (``replace``, ``merge``, or ``forget``: "stop
managing this station", for the manager only) or the control
``action`` and the instances it names. A signed order cannot be moved to another station or
federation, edited, or (since stations refuse an order older than what they applied) replayed.

Key files:

* private (``PATH``, mode 0600): PKCS#8 PEM, as written by :meth:`OperatorKey.write`;
* public (``PATH.pub``, and the files given to nodes): one key per line,
  ``ed25519 <base64 of the 32-byte key> [comment]``; a line starting with ``retired`` names a
  key whose signatures are refused from now on (so a lost laptop's key can be retired by
  listing it, as well as by removing its line). ``#`` starts a comment line.

Sans-IO except the small file readers and writers, which touch only the file they are given.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import os
import socket
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mesh._names import InvalidName, check_name
from roles._config import RoleConfig, canonical_json, check_station_path, parse_json
from roles._errors import ConfigFileError, OperatorKeyError, Unauthorized

__all__ = [
    "CONTROL_ACTIONS",
    "MAX_CHAIN",
    "ORDER_FRESHNESS",
    "OperatorKey",
    "OperatorKeyError",
    "OperatorKeyring",
    "OperatorPublicKey",
    "Order",
    "chain_config",
    "chain_digest",
    "chain_issued",
    "merge_chains",
    "now_ms",
    "write_operator_key",
]

_DOMAIN = b"stagemesh operator order v1\n"
_ORDER_VERSION = 1
#: The most orders one chain (a full push and the merges after it) may hold.
MAX_CHAIN = 32
#: The longest order text accepted (characters).
MAX_ORDER_TEXT = 256 * 1024
#: How far (milliseconds) a control order's ``issued`` may be from the station's clock.
ORDER_FRESHNESS = 300_000
_MAX_TIME = 2**53
CONTROL_ACTIONS = ("start", "stop", "restart")
#: How many verified signatures a keyring remembers (see :meth:`OperatorKeyring.verify`).
_VERIFIED_MEMO = 4096
OrderKind = Literal["config", "control"]
OrderMode = Literal["replace", "merge", "forget"]
#: Modes that start a chain over: what came before them no longer counts.
_RESTARTING_MODES = ("replace", "forget")


def now_ms() -> int:
    """Milliseconds since the Unix epoch: the unit of ``issued`` and of role timestamps."""
    return int(time.time() * 1000)


def _key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@attrs.frozen
class OperatorPublicKey:
    """One operator's public key: the 32 ``raw`` bytes, a ``comment`` (who holds it) and
    whether it is ``retired`` (its signatures are refused). ``key_id`` is the first 16 hex
    digits of the SHA-256 of the key, the name orders carry."""

    raw: bytes
    comment: str = ""
    retired: bool = False

    @property
    def key_id(self) -> str:
        """The key's short name (16 hex digits)."""
        return _key_id(self.raw)

    def line(self) -> str:
        """The key's line in a public key file."""
        text = f"ed25519 {base64.b64encode(self.raw).decode()}"
        if self.comment:
            text += f" {self.comment}"
        return f"retired {text}" if self.retired else text

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return whether *signature* is this key's signature of *data*."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form for the status API."""
        return {"key_id": self.key_id, "comment": self.comment, "retired": self.retired}


def _parse_public_line(line: str, where: str) -> OperatorPublicKey:
    parts = line.split(None, 2)
    retired = False
    if parts and parts[0] == "retired":
        retired = True
        parts = line.split(None, 3)[1:]
    if len(parts) < 2 or parts[0] != "ed25519":
        raise OperatorKeyError(f"{where}: expected 'ed25519 <base64 key> [comment]'")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise OperatorKeyError(f"{where}: the key is not base64") from None
    if len(raw) != 32:
        raise OperatorKeyError(f"{where}: an Ed25519 public key is 32 bytes, found {len(raw)}")
    comment = parts[2].strip() if len(parts) > 2 else ""
    return OperatorPublicKey(raw=raw, comment=comment, retired=retired)


def _key_tuple(keys: Iterable[OperatorPublicKey]) -> tuple[OperatorPublicKey, ...]:
    return tuple(keys)


@attrs.frozen
class OperatorKeyring:
    """The operator public keys a node trusts (and those it was told are retired)."""

    keys: tuple[OperatorPublicKey, ...] = attrs.field(default=(), converter=_key_tuple)
    _verified: dict[bytes, None] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    _active: tuple[OperatorPublicKey, ...] = attrs.field(init=False, eq=False, repr=False)

    @_active.default
    def _find_active(self) -> tuple[OperatorPublicKey, ...]:
        retired = {k.raw for k in self.keys if k.retired}
        return tuple(k for k in self.keys if not k.retired and k.raw not in retired)

    def __bool__(self) -> bool:
        return any(not k.retired for k in self.keys)

    def active(self) -> tuple[OperatorPublicKey, ...]:
        """The keys whose signatures are accepted."""
        return self._active

    def find(self, key_id: str) -> OperatorPublicKey | None:
        """The accepted key named *key_id*, or ``None`` (unknown or retired)."""
        for key in self.active():
            if key.key_id == key_id:
                return key
        return None

    def verify(self, order: Order) -> OperatorPublicKey:
        """Return the key that signed *order*; raise :class:`Unauthorized` saying why not."""
        if order.key_id is None or order.signature is None:
            raise Unauthorized(
                f"{order.describe()} carries no operator signature; sign it with an operator "
                "key (stagemesh roles ... --operator-key FILE)"
            )
        key = self.find(order.key_id)
        if key is None:
            retired = any(k.key_id == order.key_id and k.retired for k in self.keys)
            why = "is retired" if retired else "is not one of this node's operator keys"
            raise Unauthorized(
                f"{order.describe()} is signed with operator key {order.key_id}, which {why} "
                f"(trusted: {', '.join(k.key_id for k in self.active()) or 'none'})"
            )
        data = order.signed_bytes()
        # Signatures already checked are remembered (by a hash of key, signature and signed
        # bytes: exact), so a replica of the manager's view that comes back every few seconds
        # costs no Ed25519 verification. Only successes are kept, at most _VERIFIED_MEMO.
        seen = hashlib.sha256(key.raw + order.signature + data).digest()
        if seen in self._verified:
            return key
        if not key.verify(order.signature, data):
            raise Unauthorized(
                f"{order.describe()}: the signature of operator key {order.key_id} does not "
                "match the order (it was altered, or signed by another key)"
            )
        if len(self._verified) >= _VERIFIED_MEMO:
            self._verified.clear()
        self._verified[seen] = None
        return key

    def to_list(self) -> list[dict[str, Any]]:
        """The JSON-able form for the status API."""
        return [k.to_dict() for k in self.keys]

    @classmethod
    def parse(cls, text: str, *, source: str) -> OperatorKeyring:
        """Read the lines of a public key file; raises :class:`OperatorKeyError`."""
        keys = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_parse_public_line(line, f"{source}:{number}"))
        return cls(keys)

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]]) -> OperatorKeyring:
        """Read every public key file of *paths* (``--operator-keys``), in order."""
        keys: list[OperatorPublicKey] = []
        for path in paths:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise OperatorKeyError(
                    f"cannot read operator keys {os.fspath(path)}: {exc}"
                ) from None
            keys.extend(cls.parse(text, source=os.fspath(path)).keys)
        return cls(keys)


@attrs.frozen
class OperatorKey:
    """An operator's private key: what ``stagemesh roles`` signs orders with."""

    private: Ed25519PrivateKey = attrs.field(eq=False, repr=False)

    @classmethod
    def generate(cls) -> OperatorKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    def public(self, comment: str = "") -> OperatorPublicKey:
        """The public half (what nodes are given)."""
        return OperatorPublicKey(raw=_raw_public(self.private.public_key()), comment=comment)

    @property
    def key_id(self) -> str:
        """The short name of this key (that of its public half)."""
        return self.public().key_id

    def sign(self, order: Order) -> Order:
        """Return *order* signed with this key."""
        unsigned = attrs.evolve(order, key_id=self.key_id, signature=None)
        return attrs.evolve(unsigned, signature=self.private.sign(unsigned.signed_bytes()))

    def write(self, path: Path, comment: str | None = None) -> Path:
        """Write the private key to *path* (mode 0600, never over an existing file) and the
        public half to ``<path>.pub``; return the public file's path."""
        if comment is None:
            comment = f"{getpass.getuser()}@{socket.gethostname()} {time.strftime('%Y-%m-%d')}"
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_path = path.with_name(path.name + ".pub")
        if public_path.exists():
            raise FileExistsError(public_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        public_path.write_text(
            "# stagemesh operator public key: give this file to every station and conductor\n"
            "# candidate (stagemesh node --operator-keys FILE); keep the private half secret\n"
            f"{self.public(comment).line()}\n"
        )
        return public_path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OperatorKey:
        """Read a private key written by :meth:`write`. Refuses a file that other users can
        read (like ssh does), since whoever reads it can run anything on every station."""
        name = os.fspath(path)
        try:
            mode = os.stat(name).st_mode
            data = Path(name).read_bytes()
        except OSError as exc:
            raise OperatorKeyError(
                f"cannot read operator key {name}: {exc.strerror or exc}"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise OperatorKeyError(
                f"operator key {name} can be read by other users (mode {stat.S_IMODE(mode):o}); "
                f"run: chmod 600 {name}"
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise OperatorKeyError(
                f"{name} is not an operator private key (stagemesh keygen --operator): {exc}"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise OperatorKeyError(f"{name} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)


def write_operator_key(path: Path, comment: str | None = None) -> str:
    """Write a new operator key pair (``stagemesh keygen --operator PATH``): the private key
    to *path* (0600) and the public half to ``<path>.pub``; return a line saying so. Raises
    ``FileExistsError`` (never overwrites a key) or ``OSError``."""
    key = OperatorKey.generate()
    public = key.write(path, comment)
    return (
        f"wrote operator key {key.key_id}: private {path} (keep it secret: whoever holds it "
        f"can run anything on every station), public {public} (give it to stations and "
        "conductor candidates: stagemesh node --operator-keys FILE)"
    )


def _fail(source: str, path: str, problem: str) -> ConfigFileError:
    return ConfigFileError.at(source, path, problem)


def _opt_name(value: object, what: str, source: str) -> str | None:
    if value is None:
        return None
    try:
        return check_name(value, what)
    except InvalidName as exc:
        raise _fail(source, f"$.{what}", str(exc)) from None


@attrs.frozen
class Order:
    """An operator's instruction to one station, signed or not (see the module docstring).

    ``kind="config"``: run ``config`` (``mode="replace"``: exactly its live entries;
    ``"merge"``: merged into the previous orders by timestamp); ``mode="forget"`` (with an
    empty ``config``) tells the manager to drop the station from its desired state, and is
    never relayed to a station. ``kind="control"``: ``action``
    (start, stop, restart) on every instance, a ``role``'s or one (``role`` + ``uuid``).
    ``key_id`` and ``signature`` are ``None`` on an unsigned order.
    """

    kind: OrderKind
    federation: str
    station: str
    issued: int
    mode: OrderMode = "replace"
    config: RoleConfig = attrs.field(factory=RoleConfig)
    action: str | None = None
    role: str | None = None
    uuid: str | None = None
    key_id: str | None = None
    signature: bytes | None = None
    _memo: dict[str, Any] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    @classmethod
    def for_config(
        cls,
        federation: str,
        station: str,
        config: RoleConfig,
        *,
        merge: bool = False,
        issued: int | None = None,
    ) -> Order:
        """An unsigned configuration order (sign it with :meth:`OperatorKey.sign`)."""
        return cls(
            kind="config",
            federation=federation,
            station=station,
            issued=now_ms() if issued is None else issued,
            mode="merge" if merge else "replace",
            config=config,
        )

    @classmethod
    def for_forget(cls, federation: str, station: str, *, issued: int | None = None) -> Order:
        """An unsigned forget order: the manager stops managing *station* (``stagemesh roles
        forget``); what the station runs is not changed."""
        return cls(
            kind="config",
            federation=federation,
            station=station,
            issued=now_ms() if issued is None else issued,
            mode="forget",
        )

    @classmethod
    def for_control(
        cls,
        federation: str,
        station: str,
        action: str,
        role: str | None = None,
        uuid: str | None = None,
        *,
        issued: int | None = None,
    ) -> Order:
        """An unsigned control order (start, stop or restart)."""
        return cls(
            kind="control",
            federation=federation,
            station=station,
            issued=now_ms() if issued is None else issued,
            action=action,
            role=role,
            uuid=uuid,
        )

    def _fields(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "v": _ORDER_VERSION,
            "kind": self.kind,
            "federation": self.federation,
            "station": self.station,
            "issued": self.issued,
            "key": self.key_id,
        }
        if self.kind == "config":
            doc.update(mode=self.mode, config=self.config.to_dict())
        else:
            doc.update(action=self.action, role=self.role, uuid=self.uuid)
        return doc

    def signed_bytes(self) -> bytes:
        """What the signature covers: a domain tag and every field but the signature
        (computed once per order: orders are frozen)."""
        data = self._memo.get("signed")
        if data is None:
            data = self._memo["signed"] = _DOMAIN + canonical_json(self._fields()).encode()
        return data

    def sort_key(self) -> tuple[int, str]:
        """Orders of one station sort by issue time, then by content (deterministic)."""
        return (self.issued, self.digest())

    def digest(self) -> str:
        """A short hash (16 hex digits) of the order, signature included."""
        digest = self._memo.get("digest")
        if digest is None:
            sig = self.signature.hex() if self.signature is not None else ""
            digest = hashlib.sha256(self.signed_bytes() + sig.encode()).hexdigest()[:16]
            self._memo["digest"] = digest
        return digest

    def describe(self) -> str:
        """A short human description for messages."""
        if self.kind == "control":
            what = f"{self.action} order"
        elif self.mode == "forget":
            what = "forget order"
        else:
            what = f"{self.mode} configuration"
        return f"the {what} for {self.station} issued at {self.issued}"

    def to_dict(self) -> dict[str, Any]:
        """The transport form (JSON- and msgpack-able; the signature in base64)."""
        doc = self._fields()
        doc["sig"] = (
            base64.b64encode(self.signature).decode() if self.signature is not None else None
        )
        return doc

    def to_text(self) -> str:
        """The form orders travel in (a JSON string: one opaque, signed document, however
        deeply its configuration nests)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_text(cls, text: object, *, source: str = "order") -> Order:
        """Decode :meth:`to_text`'s form; raises :class:`~roles.ConfigFileError`."""
        if not isinstance(text, str) or len(text) > MAX_ORDER_TEXT:
            raise _fail(
                source, "$", f"expected an order: a JSON string of at most {MAX_ORDER_TEXT}"
            )
        return cls.from_dict(parse_json(text, source), source=source)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "order") -> Order:
        """Decode :meth:`to_dict`'s form, checking every field (it crossed a network).

        Raises :class:`~roles.ConfigFileError` naming *source*, the field and the problem.
        """
        if not isinstance(data, Mapping):
            raise _fail(source, "$", "expected an object (a signed order)")
        if data.get("v") != _ORDER_VERSION:
            raise _fail(source, "$.v", f"not a version {_ORDER_VERSION} order")
        kind = data.get("kind")
        if kind not in ("config", "control"):
            raise _fail(source, "$.kind", "must be 'config' or 'control'")
        federation = data.get("federation")
        try:
            check_name(federation, "federation")
        except InvalidName as exc:
            raise _fail(source, "$.federation", str(exc)) from None
        try:
            station = check_station_path(data.get("station"))
        except ValueError as exc:
            raise _fail(source, "$.station", str(exc)) from None
        assert isinstance(federation, str)
        issued = data.get("issued")
        if isinstance(issued, bool) or not isinstance(issued, int) or not 0 <= issued < _MAX_TIME:
            raise _fail(source, "$.issued", "must be an integer, milliseconds since the epoch")
        key_id = data.get("key")
        if key_id is not None and (
            not isinstance(key_id, str)
            or len(key_id) != 16
            or any(c not in "0123456789abcdef" for c in key_id)
        ):
            raise _fail(source, "$.key", "must be 16 hex digits (an operator key id) or null")
        sig_text = data.get("sig")
        signature: bytes | None = None
        if sig_text is not None:
            if not isinstance(sig_text, str) or len(sig_text) > 200:
                raise _fail(source, "$.sig", "must be a base64 signature or null")
            try:
                signature = base64.b64decode(sig_text, validate=True)
            except (binascii.Error, ValueError):
                raise _fail(source, "$.sig", "is not base64") from None
        if (key_id is None) != (signature is None):
            raise _fail(source, "$.sig", "a signature needs its key id and the other way round")
        if kind == "config":
            mode = data.get("mode")
            if mode not in ("replace", "merge", "forget"):
                raise _fail(source, "$.mode", "must be 'replace', 'merge' or 'forget'")
            config = RoleConfig.from_dict(data.get("config"), source=f"{source} $.config")
            if mode == "forget" and len(config):
                raise _fail(source, "$.config", "a forget order carries no configuration")
            return cls(
                kind="config",
                federation=federation,
                station=station,
                issued=issued,
                mode=mode,
                config=config,
                key_id=key_id,
                signature=signature,
            )
        action = data.get("action")
        if action not in CONTROL_ACTIONS:
            raise _fail(source, "$.action", f"must be one of {', '.join(CONTROL_ACTIONS)}")
        role = _opt_name(data.get("role"), "role", source)
        uuid = _opt_name(data.get("uuid"), "uuid", source)
        if uuid is not None and role is None:
            raise _fail(source, "$.uuid", "give 'role' with 'uuid'")
        return cls(
            kind="control",
            federation=federation,
            station=station,
            issued=issued,
            action=action,
            role=role,
            uuid=uuid,
            key_id=key_id,
            signature=signature,
        )


def chain_config(chain: Sequence[Order]) -> RoleConfig:
    """The configuration a chain of config orders (sorted, as :func:`merge_chains` makes it)
    describes: the last ``replace`` order's configuration with every later ``merge`` order
    merged in by timestamp (a chain with no ``replace`` starts from nothing, as does a
    ``forget``)."""
    config = RoleConfig()
    for order in chain:
        if order.mode in _RESTARTING_MODES:
            config = order.config
        else:
            config = config.merge(order.config)
    return config


def merge_chains(*chains: Iterable[Order]) -> tuple[Order, ...]:
    """The union of chains of one station's config orders, sorted by :meth:`Order.sort_key`,
    without the orders a later ``replace`` (or ``forget``) made obsolete. Commutative,
    associative and idempotent, so replicas of the manager's view can merge in any order."""
    union = {order.digest(): order for chain in chains for order in chain}
    ordered = sorted(union.values(), key=Order.sort_key)
    last_replace = max(
        (i for i, order in enumerate(ordered) if order.mode in _RESTARTING_MODES), default=0
    )
    return tuple(ordered[last_replace:])


def chain_digest(chain: Sequence[Order]) -> str:
    """A short hash (16 hex digits) naming a chain by its orders: two chains whose
    configurations have the same digest are told apart (a merge of nothing, a full push of
    what a merge made)."""
    return hashlib.sha256(",".join(o.digest() for o in chain).encode()).hexdigest()[:16]


def chain_issued(chain: Sequence[Order]) -> int:
    """When the newest order of *chain* was issued (0 for an empty chain)."""
    return max((order.issued for order in chain), default=0)
