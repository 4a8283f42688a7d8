"""Who may change a station from another node: the rule a station and the conductor apply.

=====================  ==========================  =========================================
federation key         operator keys on the node   remote role changes
=====================  ==========================  =========================================
yes (keyed)            one or more                 ``signed``: only orders an operator signed
yes (keyed)            none                        ``refused`` (give the node --operator-keys)
no (open)              any                         ``refused``: anyone on the network could
                                                   join, so nothing remote changes a station
no, with               one or more                 ``signed``
``--insecure-remote-
roles``
no, with               none                        ``unsigned``: anyone on the network can run
``--insecure-remote-                               any command on this station (an isolated
roles``                                            network you control only)
=====================  ==========================  =========================================

A station's own operator (the node's local API, which needs the node's secret) is not
concerned: that is a local change. Sans-IO: :class:`RemoteAuthority` is a value.

A configuration reaches a station relayed by the conductor (``roles.apply``): the station
takes it only from the node it sees as the conductor, at the lease term it knows
(:func:`check_relay`), and only orders an operator signed for it (:func:`check_relayed_orders`).
The roles extension and the manager simulation (:mod:`roles._manager_sim`) both decide with
these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs

from roles._errors import InvalidRequest, NotConductor, RolesError, Unauthorized
from roles._operator import OperatorKeyring, Order

__all__ = ["ChangeRefused", "RemoteAuthority", "RemoteMode", "check_relay", "check_relayed_orders"]

RemoteMode = Literal["signed", "unsigned", "refused"]


@attrs.frozen
class RemoteAuthority:
    """The rule for role changes arriving from other nodes (see the module docstring):
    the node's ``federation``, whether it is ``keyed`` (has a federation key), the operator
    ``keyring`` it trusts, and whether it was started with ``--insecure-remote-roles``."""

    federation: str
    keyed: bool
    keyring: OperatorKeyring = attrs.field(factory=OperatorKeyring)
    insecure: bool = False

    @property
    def mode(self) -> RemoteMode:
        """``signed``, ``unsigned`` or ``refused``."""
        if not self.keyed and not self.insecure:
            return "refused"
        if self.keyring:
            return "signed"
        return "unsigned" if not self.keyed else "refused"

    def reason(self) -> str:
        """One sentence for logs, status and refusals: what is accepted, and why."""
        mode = self.mode
        if mode == "signed":
            keys = ", ".join(k.key_id for k in self.keyring.active())
            open_note = (
                "" if self.keyed else " (the federation is OPEN: --insecure-remote-roles is set)"
            )
            return f"remote role changes need an operator signature (keys {keys}){open_note}"
        if mode == "unsigned":
            return (
                f"INSECURE: federation {self.federation!r} is open and --insecure-remote-roles "
                "is set with no operator key: anyone on this network can make this node run "
                "any command"
            )
        if not self.keyed:
            return (
                f"remote role changes are refused: federation {self.federation!r} is open (no "
                "--key-file), so any host on the network could send them; give every node a "
                "federation key (stagemesh keygen) and operator keys (stagemesh keygen "
                "--operator), or on an isolated network start the node with "
                "--insecure-remote-roles"
            )
        return (
            "remote role changes are refused: this node trusts no operator key; start it with "
            "--operator-keys FILE (the .pub file that stagemesh keygen --operator writes)"
        )

    def check(self, order: Order, *, station: str | None = None) -> None:
        """Raise :class:`~roles.Unauthorized` unless *order* may change *station* (any station
        when ``None``, as on the conductor, which relays to the station it names)."""
        if self.mode == "refused":
            raise Unauthorized(self.reason())
        if order.federation != self.federation:
            raise Unauthorized(
                f"{order.describe()} is for federation {order.federation!r}, not "
                f"{self.federation!r}"
            )
        if station is not None and order.station != station:
            raise Unauthorized(f"{order.describe()} is for {order.station}, not {station}")
        if self.mode == "signed":
            self.keyring.verify(order)

    def accepts(self, order: Order) -> bool:
        """Whether :meth:`check` passes (for filtering a replica of the manager's view)."""
        try:
            self.check(order)
        except Unauthorized:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form for ``/api/status``."""
        return {
            "mode": self.mode,
            "allowed": self.mode != "refused",
            "signed": self.mode == "signed",
            "reason": self.reason(),
            "operator_keys": self.keyring.to_list(),
        }


class ChangeRefused(Exception):
    """Raised by :func:`check_relay` and :func:`check_relayed_orders` when a station refuses a
    relayed change: ``error`` is the typed error to answer with (:class:`~roles.NotConductor`
    or :class:`~roles.Unauthorized`) and ``reason`` the counter it is counted under in
    ``roles.refused_changes`` (``refused``, ``not-conductor``, ``signature``)."""

    def __init__(self, reason: str, error: RolesError) -> None:
        super().__init__(str(error))
        self.reason = reason
        self.error = error


def check_relay(
    authority: RemoteAuthority,
    *,
    station: str,
    sender: str | None,
    term: object,
    conductor: str | None,
    known_term: int | None,
) -> None:
    """Raise :class:`ChangeRefused` unless a ``roles.apply`` from *sender* at lease *term* may
    change *station*: remote changes are allowed at all, and the sender is the *conductor*
    in the station's view, at the term the station knows (*known_term*)."""
    if authority.mode == "refused":
        raise ChangeRefused("refused", Unauthorized(authority.reason()))
    if sender is None or sender != conductor or term != known_term:
        raise ChangeRefused(
            "not-conductor",
            NotConductor(
                f"roles.apply comes only from the conductor: {sender or 'an unknown sender'}"
                f" (term {term!r}) is not the conductor in the view of {station} "
                f"({conductor or 'none'}"
                f"{f' at term {known_term}' if known_term is not None else ''})",
                conductor=conductor,
            ),
        )


def check_relayed_orders(
    authority: RemoteAuthority, *, station: str, orders: Sequence[Order]
) -> None:
    """Raise :class:`ChangeRefused` (``signature``) unless an operator signed every order of
    *orders* for *station* in this federation, and :class:`~roles.InvalidRequest` if one of
    them is not a configuration for a station (a control or ``forget`` order)."""
    for order in orders:
        try:
            authority.check(order, station=station)
        except Unauthorized as exc:
            raise ChangeRefused("signature", exc) from None
        if order.kind != "config" or order.mode == "forget":
            raise InvalidRequest(
                "roles.apply: every order must be a config order (replace or merge)"
            )
