"""The OpenAPI 3.1 document of the JSON API (written by hand; a test checks it names every
route under ``/api/v1``, and schemathesis checks the registry against it: every status an
operation answers is listed, every body has its schema, every value the server refuses is
outside the request schemas and every value it accepts is inside).

The responses carry OpenAPI links (a created federation to its orchestras and registrations,
a registration's token to its heartbeat, unregister and the conductor's compare-and-set), so a
client generator or a stateful fuzzer can follow the calls a node makes."""

from __future__ import annotations

from typing import Any

from registry_bridge._members import MAX_MEMBERS, MAX_POSTS, MEMBER_STATES

__all__ = ["openapi_document"]

TERM_LIMIT = 2**62
"""The largest ``expected_term`` magnitude the server takes (it stays a SQLite integer)."""
MAX_CLOCK_READING = 1e11
"""The largest magnitude of an offered epoch, in seconds (anything larger is not a clock)."""
MAX_HANDOVERS = 16
"""The most epoch handovers the registry keeps for one federation (one per client address, see
``RegistryStore.offer_epoch``), besides its own epoch."""
NODE_ID_EXCLUDED = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
"""The characters a ``node_id`` may not hold (a regular expression class, the same for the
server and the document): control characters and whatever starts a new line."""


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(
    description: str,
    schema: dict[str, Any],
    status: str = "200",
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if links:
        answer["links"] = links
    return {status: answer}


_ERRORS = {
    400: "bad input: the message names the field, parameter or value",
    401: "admin login required, or a wrong password (with WWW-Authenticate)",
    403: "admin actions disabled (no password configured), or the registration may not make"
    " this change",
    404: "no such federation, orchestra, registration token or holder",
    409: "name taken, path held by another registration, conductor term mismatch (with"
    " 'current'), or a members report naming a path twice",
    413: "body larger than 64 KiB",
    415: "a JSON body needs Content-Type: application/json",
    429: "too many registrations, or wrong admin passwords, from this address (with Retry-After)",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    429: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}},
}


def _errors(*codes: int) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for code in codes:
        answer: dict[str, Any] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        if code in _HEADERS:
            answer["headers"] = _HEADERS[code]
        answers[str(code)] = answer
    return answers


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _link(operation: str, description: str, **fields: Any) -> dict[str, Any]:
    """An OpenAPI link to *operation*; *fields* holds ``parameters`` and ``requestBody``."""
    return {"operationId": operation, "description": description, **fields}


def _object(required: list[str], properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, **more}


_FED = {"name": "federation", "in": "path", "required": True, "schema": _ref("Name")}
_TOKEN = {"name": "token", "in": "path", "required": True, "schema": _ref("Token")}
_NULLSTR = {"type": ["string", "null"]}
_NULLINT = {"type": ["integer", "null"]}
_NULLNUM = {"type": ["number", "null"]}
_NULLTAG = {
    "type": ["string", "null"],
    "description": "the tag handed over with the epoch and lineage (null: none)",
}
_NULLGEN = {
    "type": ["string", "null"],
    "description": "the federation's generation: random, replaced at every reset; keyed nodes"
    " sign it with the epoch they hand over",
}
_FED_OF_BODY = {"federation": "$response.body#/name"}


def _schemas() -> dict[str, Any]:
    entry_fields: dict[str, Any] = {
        "federation": _ref("Name"),
        "orchestra": _ref("Name"),
        "name": _ref("Name"),
        "path": _ref("Path"),
        "node_id": _NULLSTR,
        "host": {"type": "string"},
        "port": {"type": "integer"},
    }
    node_fields: dict[str, Any] = entry_fields | {
        "supernode": {"type": "boolean"},
        "conductor": {"type": "boolean"},
        "heartbeat": {"type": "boolean", "description": "false: a legacy (2012 API) registration"},
        "registered_at": {"type": "number"},
        "last_seen": {"type": "number"},
        "expires_at": {
            "type": "number",
            "description": "wall-clock time it expires if not renewed",
        },
    }
    summary_fields: dict[str, Any] = {
        "id": {"type": "integer"},
        "name": _ref("Name"),
        "created_at": {"type": "number"},
        "epoch": _NULLNUM,
        "elapsed": {"type": "number"},
        "version": {"type": "integer"},
        "orchestras": {"type": "integer"},
        "registrations": {"type": "integer"},
        "conductor": _ref("Conductor"),
    }
    return {
        "Name": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._-]{1,64}$",
            "not": {"enum": [".", ".."]},
        },
        "Token": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "Path": {
            "type": "string",
            "description": "/<orchestra>/<name>",
            "pattern": "^/[A-Za-z0-9._-]{1,64}/[A-Za-z0-9._-]{1,64}$",
            "not": {"pattern": "^/[.]{1,2}/|/[.]{1,2}$"},
            "example": "/cmu/rbd",
        },
        "Error": _object(
            ["error"],
            {
                "error": {"type": "string", "minLength": 1, "description": "what is wrong"},
                "current": _ref("Conductor"),
            },
        ),
        "Conductor": _object(
            ["holder", "node_id", "host", "port", "term"],
            {
                "holder": {"oneOf": [_ref("Path"), {"type": "null"}]},
                "node_id": _NULLSTR,
                "host": _NULLSTR,
                "port": _NULLINT,
                "term": {"type": "integer", "description": "fencing token; +1 on every change"},
            },
        ),
        "FederationSummary": _object(list(summary_fields), summary_fields),
        "Federation": _object(
            [*summary_fields, "ttl", "legacy_ttl"],
            summary_fields
            | {
                "orchestras": {"type": "array", "items": _ref("OrchestraView")},
                "ttl": {"type": "number", "description": "lifetime of JSON registrations"},
                "legacy_ttl": {"type": "number", "description": "lifetime of legacy ones"},
            },
        ),
        "OrchestraView": _object(
            ["name", "created_at", "supernode", "nodes", "members"],
            {
                "name": _ref("Name"),
                "created_at": {"type": "number"},
                "supernode": {"oneOf": [_ref("Path"), {"type": "null"}]},
                "nodes": {"type": "array", "items": _ref("Node")},
                "members": {
                    "type": "array",
                    "items": _ref("ReportedMember"),
                    "description": "every member as the supernode last reported it",
                },
            },
        ),
        "MemberReport": {
            "type": "object",
            "required": ["path", "state"],
            "additionalProperties": False,
            "properties": {
                "path": {**_ref("Path"), "description": "of the reporting supernode's orchestra"},
                "state": {"enum": list(MEMBER_STATES)},
                "posts": {
                    "type": "array",
                    "items": _ref("Name"),
                    "maxItems": MAX_POSTS,
                    "uniqueItems": True,
                    "default": [],
                    "description": "posts it holds: supernode, conductor",
                },
            },
        },
        "HeartbeatRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "members": {
                    "type": ["array", "null"],
                    "items": _ref("MemberReport"),
                    "maxItems": MAX_MEMBERS,
                    "description": "the supernode's orchestra's members, each path once"
                    " (replaces its last report; null: no report); a member of another"
                    " orchestra is 403, a path named twice 409",
                },
            },
        },
        "ReportedMember": _object(
            ["path", "state", "posts", "reported_by", "reported_at"],
            {
                "path": _ref("Path"),
                "state": {"enum": list(MEMBER_STATES)},
                "posts": {"type": "array", "items": _ref("Name")},
                "reported_by": {**_ref("Path"), "description": "the supernode that reported it"},
                "reported_at": {"type": "number", "description": "wall-clock time of the report"},
            },
        ),
        "Orchestra": _object(
            ["id", "federation", "name", "created_at"],
            {
                "id": {"type": "integer"},
                "federation": _ref("Name"),
                "name": _ref("Name"),
                "created_at": {"type": "number"},
                "registrations": {"type": "integer", "description": "in the list"},
            },
        ),
        "Entry": _object(list(entry_fields), entry_fields),
        "Node": _object(list(node_fields), node_fields),
        "RegistrationRequest": {
            "type": "object",
            "required": ["orchestra", "name"],
            "additionalProperties": False,
            "properties": {
                "orchestra": _ref("Name"),
                "name": _ref("Name"),
                "host": {
                    "type": ["string", "null"],
                    "maxLength": 45,
                    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
                    "description": "an IP address, no host name or %scope; default (or null):"
                    " the caller's address",
                },
                "port": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": 65535,
                    "default": 7471,
                    "description": "null: the default",
                },
                "node_id": {
                    "type": ["string", "null"],
                    "pattern": f"^[^{NODE_ID_EXCLUDED}]{{1,128}}$",
                    "description": "a stable id: the only way to register a held path again"
                    " (null: none)",
                },
                "supernode": {"type": "boolean", "default": False},
                "conductor": {"type": "boolean", "default": False},
                "create": {
                    "type": "boolean",
                    "default": False,
                    "description": "create the federation and orchestra if absent",
                },
                "takeover": {
                    "type": "boolean",
                    "default": False,
                    "description": "a supernode claim replaces the orchestra's supernode",
                },
            },
        },
        "Registration": _object(
            [
                "token",
                "federation",
                "path",
                "epoch",
                "elapsed",
                "ttl",
                "version",
                "supernode",
                "other_supernodes",
                "conductor",
                "conductor_term",
                "supernode_granted",
                "conductor_granted",
            ],
            {
                "token": {**_ref("Token"), "description": "for heartbeat and unregister"},
                "federation": _ref("Name"),
                "path": _ref("Path"),
                "epoch": _NULLNUM,
                "elapsed": {"type": "number"},
                "ttl": {"type": "number"},
                "version": {"type": "integer"},
                "supernode": {"oneOf": [_ref("Entry"), {"type": "null"}]},
                "other_supernodes": {"type": "array", "items": _ref("Entry")},
                "conductor": {"oneOf": [_ref("Entry"), {"type": "null"}]},
                "conductor_term": {"type": "integer"},
                "supernode_granted": {"type": "boolean"},
                "conductor_granted": {"type": "boolean"},
            },
        ),
        "Heartbeat": _object(
            ["elapsed", "epoch", "ttl", "version", "conductor_term"],
            {
                "elapsed": {"type": "number"},
                "epoch": _NULLNUM,
                "ttl": {"type": "number"},
                "version": {"type": "integer", "description": "changes when membership does"},
                "conductor_term": {"type": "integer"},
            },
        ),
        "ConductorSet": {
            "type": "object",
            "required": ["token", "expected_term", "holder"],
            "additionalProperties": False,
            "properties": {
                "token": {
                    **_ref("Token"),
                    "description": "the registration token of the caller: the holder (release,"
                    " hand over) or a registration claiming a free post for itself",
                },
                "expected_term": {
                    "type": "integer",
                    "minimum": -TERM_LIMIT,
                    "maximum": TERM_LIMIT,
                },
                "holder": {
                    "oneOf": [_ref("Path"), {"type": "null"}],
                    "description": "a registered path, null releases",
                },
            },
        },
        "Elapsed": _object(
            [
                "federation",
                "epoch",
                "lineage",
                "tag",
                "handovers",
                "generation",
                "elapsed",
                "t2",
                "t3",
                "clock_t2",
                "clock_t3",
            ],
            {
                "federation": _ref("Name"),
                "epoch": _NULLNUM,
                "elapsed": {"type": "number"},
                "lineage": {
                    "type": ["string", "null"],
                    "description": "the lineage of federation time the epoch belongs to",
                },
                "tag": _NULLTAG,
                "handovers": {
                    "type": "array",
                    "maxItems": MAX_HANDOVERS + 1,
                    "description": "every epoch the registry keeps for the federation, oldest"
                    " first (the first is epoch): a keyed node takes the oldest whose tag"
                    " verifies",
                    "items": _object(
                        ["epoch", "lineage", "tag"],
                        {"epoch": {"type": "number"}, "lineage": _ref("Lineage"), "tag": _NULLTAG},
                    ),
                },
                "generation": _NULLGEN,
                "t2": {"type": "number", "description": "federation time the request arrived"},
                "t3": {"type": "number", "description": "federation time the answer left"},
                "clock_t2": {"type": "number", "description": "the registry's clock, arrival"},
                "clock_t3": {"type": "number", "description": "the registry's clock, answer"},
            },
        ),
        "Lineage": {
            "type": "string",
            "description": "a lineage of federation time (the node that founded it names it)",
            "pattern": "^[A-Za-z0-9._-]{1,64}$",
        },
        "EpochTag": {
            "type": "string",
            "description": "a keyed federation's signature of epoch and lineage (HMAC by the"
            " federation key): kept as it came, handed back with them; the nodes check it",
            "pattern": "^[A-Za-z0-9._-]{1,128}$",
        },
        "EpochOffer": {
            "type": "object",
            "required": ["token", "epoch", "lineage"],
            "additionalProperties": False,
            "properties": {
                "token": {
                    **_ref("Token"),
                    "description": "the registration token of the offering node (of this"
                    " federation)",
                },
                "epoch": {
                    "type": "number",
                    "minimum": -MAX_CLOCK_READING,
                    "maximum": MAX_CLOCK_READING,
                    "description": "the registry's clock reading at federation time 0",
                },
                "lineage": _ref("Lineage"),
                "tag": {"oneOf": [_ref("EpochTag"), {"type": "null"}]},
                "generation": {
                    "oneOf": [_ref("EpochTag"), {"type": "null"}],
                    "description": "the generation the node read (and signed); another than"
                    " the federation's (a reset came between): not taken",
                },
            },
        },
        "EpochAnswer": _object(
            ["federation", "accepted", "epoch", "lineage", "tag", "elapsed", "generation"],
            {
                "federation": _ref("Name"),
                "accepted": {
                    "type": "boolean",
                    "description": "the registry keeps the offer among the federation's"
                    " handovers (new, older than this address's, or signed again)",
                },
                "epoch": _NULLNUM,
                "lineage": {"type": ["string", "null"]},
                "tag": _NULLTAG,
                "elapsed": {"type": "number"},
                "generation": _NULLGEN,
            },
        ),
        "NameBody": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _ref("Name")},
        },
        "Empty": {"type": "object", "additionalProperties": False, "maxProperties": 0},
        "Frame": {
            "type": "string",
            "description": "a signed gossip datagram or exchange (1-32768 bytes), base64",
            "minLength": 4,
            "maxLength": 43692,
            "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        },
        "RelayQueue": {
            "type": "object",
            "required": ["to", "frames"],
            "additionalProperties": False,
            "properties": {
                "to": {**_ref("Path"), "description": "a supernode registered in the federation"},
                "frames": {"type": "array", "minItems": 1, "maxItems": 64, "items": _ref("Frame")},
            },
        },
        "RelayQueued": _object(
            ["to", "queued", "dropped"],
            {
                "to": _ref("Path"),
                "queued": {"type": "integer", "minimum": 1},
                "dropped": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "older frames dropped to keep the queue within 256",
                },
            },
        ),
        "RelayTake": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "wait": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 25,
                    "description": "seconds to wait for a first frame (long poll)",
                }
            },
        },
        "RelayFrames": _object(
            ["frames"],
            {
                "frames": {
                    "type": "array",
                    "items": _object(
                        ["from", "frame", "age"],
                        {
                            "from": _ref("Path"),
                            "frame": _ref("Frame"),
                            "age": {"type": "number", "minimum": 0},
                        },
                    ),
                }
            },
        ),
    }


def _paths() -> dict[str, Any]:
    admin: list[dict[str, list[str]]] = [{"basic": []}]
    from_created_federation = {
        "GetFederation": _link("getFederation", "the new federation", parameters=_FED_OF_BODY),
        "CreateOrchestra": _link("createOrchestra", "an orchestra in it", parameters=_FED_OF_BODY),
        "ListOrchestras": _link("listOrchestras", "its orchestras", parameters=_FED_OF_BODY),
        "GetConductor": _link("getConductor", "its conductor", parameters=_FED_OF_BODY),
        "GetElapsed": _link("getElapsed", "its time", parameters=_FED_OF_BODY),
    }
    from_created_orchestra = {
        "Register": _link(
            "register",
            "a registration in the new orchestra",
            parameters={"federation": "$response.body#/federation"},
            requestBody={"orchestra": "$response.body#/name"},
        ),
    }
    reg_fed = {"federation": "$response.body#/federation"}
    token = {"token": "$response.body#/token"}
    from_registration = {
        "Heartbeat": _link(
            "heartbeat", "keep it alive", parameters=token, requestBody={"members": None}
        ),
        "ReportMembers": _link(
            "heartbeat",
            "keep it alive and report the orchestra's members (a supernode's registration)",
            parameters=token,
            requestBody={
                "members": [{"path": "$response.body#/path", "state": "alive", "posts": []}]
            },
        ),
        "Unregister": _link("unregister", "remove it", parameters=token),
        "ClaimConductor": _link(
            "setConductor",
            "claim the conductor for this registration",
            parameters=reg_fed,
            requestBody={
                "token": "$response.body#/token",
                "expected_term": "$response.body#/conductor_term",
                "holder": "$response.body#/path",
            },
        ),
        "ReleaseConductor": _link(
            "setConductor",
            "release the conductor (allowed to its holder)",
            parameters=reg_fed,
            requestBody={
                "token": "$response.body#/token",
                "expected_term": "$response.body#/conductor_term",
                "holder": None,
            },
        ),
        "OfferEpoch": _link(
            "offerEpoch",
            "hand over the federation's time as this registration",
            parameters=reg_fed,
            requestBody={
                "token": "$response.body#/token",
                "epoch": "$response.body#/epoch",
                "lineage": "fuzz",
            },
        ),
        "GetFederation": _link("getFederation", "its federation", parameters=reg_fed),
        "GetConductor": _link("getConductor", "the conductor", parameters=reg_fed),
    }
    return {
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenapi",
                "summary": "This document",
                "responses": _ok("the document", {"type": "object"}),
            }
        },
        "/api/v1/federations": {
            "get": {
                "operationId": "listFederations",
                "summary": "List federations",
                "responses": _ok(
                    "all federations",
                    _object(
                        ["federations"],
                        {"federations": {"type": "array", "items": _ref("FederationSummary")}},
                    ),
                ),
            },
            "post": {
                "operationId": "createFederation",
                "summary": "Create a federation",
                "requestBody": _json_body(_ref("NameBody")),
                "responses": _ok(
                    "created", _ref("FederationSummary"), "201", from_created_federation
                )
                | _errors(400, 409, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}": {
            "parameters": [_FED],
            "get": {
                "operationId": "getFederation",
                "summary": "Show a federation: orchestras, registrations, conductor, elapsed",
                "responses": _ok("the federation", _ref("Federation")) | _errors(400, 404),
            },
            "delete": {
                "operationId": "deleteFederation",
                "summary": "Delete a federation (admin)",
                "security": admin,
                "responses": _ok("deleted", _object(["deleted"], {"deleted": _ref("Name")}))
                | _errors(400, 401, 403, 404, 429),
            },
        },
        "/api/v1/federations/{federation}/reset": {
            "parameters": [_FED],
            "post": {
                "operationId": "resetFederation",
                "summary": "Drop all registrations, release the conductor, clear the epoch (admin)",
                "security": admin,
                "requestBody": _json_body(_ref("Empty")),
                "responses": _ok("reset", _ref("FederationSummary"))
                | _errors(400, 401, 403, 404, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}/orchestras": {
            "parameters": [_FED],
            "get": {
                "operationId": "listOrchestras",
                "summary": "List orchestras",
                "responses": _ok(
                    "orchestras",
                    _object(
                        ["orchestras"],
                        {"orchestras": {"type": "array", "items": _ref("Orchestra")}},
                    ),
                )
                | _errors(400, 404),
            },
            "post": {
                "operationId": "createOrchestra",
                "summary": "Create an orchestra",
                "requestBody": _json_body(_ref("NameBody")),
                "responses": _ok("created", _ref("Orchestra"), "201", from_created_orchestra)
                | _errors(400, 404, 409, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}/registrations": {
            "parameters": [_FED],
            "post": {
                "operationId": "register",
                "summary": "Register a node: token, elapsed time, supernode(s), conductor",
                "requestBody": _json_body(_ref("RegistrationRequest")),
                "responses": _ok("registered", _ref("Registration"), "201", from_registration)
                | _errors(400, 404, 409, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}/conductor": {
            "parameters": [_FED],
            "get": {
                "operationId": "getConductor",
                "summary": "The conductor and its term",
                "responses": _ok("conductor", _ref("Conductor")) | _errors(400, 404),
            },
            "post": {
                "operationId": "setConductor",
                "summary": "Compare-and-set the conductor as a registration (its token); the"
                " term is the fencing token",
                "requestBody": _json_body(_ref("ConductorSet")),
                "responses": _ok("set; term increased by one", _ref("Conductor"))
                | _errors(400, 403, 404, 409, 413, 415),
            },
        },
        "/api/v1/federations/{federation}/elapsed": {
            "parameters": [_FED],
            "get": {
                "operationId": "getElapsed",
                "summary": "Federation time with receive (t2) and send (t3) stamps for clock sync",
                "responses": _ok("elapsed time", _ref("Elapsed")) | _errors(400, 404),
            },
        },
        "/api/v1/federations/{federation}/epoch": {
            "parameters": [_FED],
            "post": {
                "operationId": "offerEpoch",
                "summary": "Hand over the federation's time as a registration (its token):"
                " kept among the federation's handovers, one per client address (the oldest"
                " is the epoch: elapsed goes on after a reset)",
                "requestBody": _json_body(_ref("EpochOffer")),
                "responses": _ok("the federation's time", _ref("EpochAnswer"))
                | _errors(400, 404, 413, 415),
            },
        },
        "/api/v1/registrations/{token}/heartbeat": {
            "parameters": [_TOKEN],
            "post": {
                "operationId": "heartbeat",
                "summary": "Keep a registration alive (it expires after ttl seconds without);"
                " a supernode's may carry its orchestra's members report",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("HeartbeatRequest")}},
                },
                "responses": _ok("alive", _ref("Heartbeat"))
                | _errors(400, 403, 404, 409, 413, 415),
            },
        },
        "/api/v1/registrations/{token}/relay": {
            "parameters": [_TOKEN],
            "post": {
                "operationId": "relayQueue",
                "summary": "Queue signed gossip datagrams for another site's supernode (the"
                " sender: a registration flagged supernode)",
                "requestBody": _json_body(_ref("RelayQueue")),
                "responses": _ok("queued", _ref("RelayQueued"), "202")
                | _errors(400, 403, 404, 413, 415),
            },
        },
        "/api/v1/registrations/{token}/relay/take": {
            "parameters": [_TOKEN],
            "post": {
                "operationId": "relayTake",
                "summary": "Take the datagrams queued for this supernode (only its token's"
                " holder may), waiting up to 'wait' seconds for a first one",
                "requestBody": _json_body(_ref("RelayTake")),
                "responses": _ok(
                    "the frames, oldest first (none after the wait)", _ref("RelayFrames")
                )
                | _errors(400, 403, 404, 413, 415),
            },
        },
        "/api/v1/registrations/{token}": {
            "parameters": [_TOKEN],
            "delete": {
                "operationId": "unregister",
                "summary": "Unregister",
                "responses": _ok(
                    "unregistered",
                    _object(["unregistered"], {"unregistered": {"const": True}}),
                )
                | _errors(404),
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document served at ``/api/v1/openapi.json``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stagemesh registry",
            "version": "1",
            "description": "Federations, orchestras, registrations, conductor and time for "
            "stagemesh nodes. Errors are JSON objects whose 'error' message says what is "
            "wrong.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
    }
