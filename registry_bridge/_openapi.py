"""The OpenAPI 3.1 document of the JSON API (written by hand; a test checks it names every
route under ``/api/v1``)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad input (name, field, type)",
        401: "admin login required or wrong password",
        403: "admin actions disabled (no password configured), or the registration may not"
        " make this change",
        404: "no such federation, orchestra or registration token",
        409: "name taken, path held by another registration, or conductor term mismatch",
        413: "body too large",
        415: "Content-Type must be application/json",
        429: "too many registrations, or wrong admin passwords, from this address (see"
        " Retry-After)",
    }
    return {
        str(c): {
            "description": text[c],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for c in codes
    }


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_FED = {"name": "federation", "in": "path", "required": True, "schema": _ref("Name")}
_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_NULLSTR = {"type": ["string", "null"]}
_NULLINT = {"type": ["integer", "null"]}


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document served at ``/api/v1/openapi.json``."""
    entry = {
        "type": "object",
        "properties": {
            "federation": _ref("Name"),
            "orchestra": _ref("Name"),
            "name": _ref("Name"),
            "path": {"type": "string", "example": "/cmu/rbd"},
            "node_id": _NULLSTR,
            "host": {"type": "string"},
            "port": {"type": "integer"},
            "heartbeat": {
                "type": "boolean",
                "description": "false: a legacy (2012 API) registration",
            },
            "expires_at": {
                "type": "number",
                "description": "wall-clock time it expires unless renewed (federation view)",
            },
        },
    }
    schemas: dict[str, Any] = {
        "Name": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._-]{1,64}$",
            "not": {"enum": [".", ".."]},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "current": _ref("Conductor")},
        },
        "Conductor": {
            "type": "object",
            "properties": {
                "holder": _NULLSTR,
                "node_id": _NULLSTR,
                "host": _NULLSTR,
                "port": _NULLINT,
                "term": {"type": "integer", "description": "fencing token; +1 on every change"},
            },
        },
        "Federation": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "name": _ref("Name"),
                "created_at": {"type": "number"},
                "epoch": {"type": ["number", "null"]},
                "elapsed": {"type": "number"},
                "version": {"type": "integer"},
                "orchestras": {"description": "a count, or the list in the full view"},
                "registrations": {"type": "integer"},
                "conductor": _ref("Conductor"),
                "ttl": {"type": "number", "description": "JSON registrations (full view)"},
                "legacy_ttl": {
                    "type": "number",
                    "description": "legacy registrations (full view)",
                },
            },
        },
        "Orchestra": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "federation": _ref("Name"),
                "name": _ref("Name"),
                "created_at": {"type": "number"},
                "registrations": {"type": "integer"},
            },
        },
        "Entry": entry,
        "RegistrationRequest": {
            "type": "object",
            "required": ["orchestra", "name"],
            "additionalProperties": False,
            "properties": {
                "orchestra": _ref("Name"),
                "name": _ref("Name"),
                "host": {
                    "type": "string",
                    "maxLength": 45,
                    "description": "an IP address, no host name or %scope; default: the"
                    " caller's address",
                },
                "port": {"type": "integer", "default": 7471},
                "node_id": {
                    "type": "string",
                    "maxLength": 128,
                    "description": "a stable id: the only way to register a held path again",
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
        "Registration": {
            "type": "object",
            "properties": {
                "token": {"type": "string", "description": "for heartbeat and unregister"},
                "federation": _ref("Name"),
                "path": {"type": "string"},
                "epoch": {"type": ["number", "null"]},
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
        },
        "Heartbeat": {
            "type": "object",
            "properties": {
                "elapsed": {"type": "number"},
                "epoch": {"type": ["number", "null"]},
                "ttl": {"type": "number"},
                "version": {"type": "integer", "description": "changes when membership does"},
                "conductor_term": {"type": "integer"},
            },
        },
        "ConductorSet": {
            "type": "object",
            "required": ["token", "expected_term", "holder"],
            "additionalProperties": False,
            "properties": {
                "token": {
                    "type": "string",
                    "description": "the registration token of the caller: the holder (release,"
                    " hand over) or a registration claiming a free post for itself",
                },
                "expected_term": {"type": "integer"},
                "holder": {
                    "type": ["string", "null"],
                    "description": "a registered path, null releases",
                },
            },
        },
        "Elapsed": {
            "type": "object",
            "properties": {
                "federation": _ref("Name"),
                "epoch": {"type": ["number", "null"]},
                "elapsed": {"type": "number"},
                "lineage": {
                    "type": ["string", "null"],
                    "description": "the lineage of federation time the epoch belongs to",
                },
                "t2": {"type": "number", "description": "federation time the request arrived"},
                "t3": {"type": "number", "description": "federation time the answer left"},
                "clock_t2": {"type": "number", "description": "the registry's clock, arrival"},
                "clock_t3": {"type": "number", "description": "the registry's clock, answer"},
            },
        },
        "EpochOffer": {
            "type": "object",
            "required": ["token", "epoch", "lineage"],
            "additionalProperties": False,
            "properties": {
                "token": {"type": "string", "description": "a live registration's token"},
                "epoch": {
                    "type": "number",
                    "description": "the registry's clock reading at federation time 0",
                },
                "lineage": {"type": "string"},
            },
        },
        "EpochAnswer": {
            "type": "object",
            "properties": {
                "federation": _ref("Name"),
                "accepted": {"type": "boolean"},
                "epoch": {"type": ["number", "null"]},
                "lineage": {"type": ["string", "null"]},
                "elapsed": {"type": "number"},
            },
        },
        "NameBody": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _ref("Name")},
        },
    }
    admin: list[dict[str, list[str]]] = [{"basic": []}]
    paths: dict[str, Any] = {
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": _ok("the document", {"type": "object"}),
            }
        },
        "/api/v1/federations": {
            "get": {
                "summary": "List federations",
                "responses": _ok(
                    "all federations",
                    {
                        "type": "object",
                        "properties": {
                            "federations": {"type": "array", "items": _ref("Federation")}
                        },
                    },
                ),
            },
            "post": {
                "summary": "Create a federation",
                "requestBody": _json_body(_ref("NameBody")),
                "responses": _ok("created", _ref("Federation"), "201")
                | _errors(400, 409, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}": {
            "parameters": [_FED],
            "get": {
                "summary": "Show a federation: orchestras, registrations, conductor, elapsed",
                "responses": _ok("the federation", _ref("Federation")) | _errors(400, 404),
            },
            "delete": {
                "summary": "Delete a federation (admin)",
                "security": admin,
                "responses": _ok("deleted", {"type": "object"}) | _errors(400, 401, 403, 404, 429),
            },
        },
        "/api/v1/federations/{federation}/reset": {
            "parameters": [_FED],
            "post": {
                "summary": "Drop all registrations, release the conductor, clear the epoch (admin)",
                "security": admin,
                "requestBody": _json_body({"type": "object"}),
                "responses": _ok("reset", _ref("Federation"))
                | _errors(400, 401, 403, 404, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}/orchestras": {
            "parameters": [_FED],
            "get": {
                "summary": "List orchestras",
                "responses": _ok(
                    "orchestras",
                    {
                        "type": "object",
                        "properties": {"orchestras": {"type": "array", "items": _ref("Orchestra")}},
                    },
                )
                | _errors(400, 404),
            },
            "post": {
                "summary": "Create an orchestra",
                "requestBody": _json_body(_ref("NameBody")),
                "responses": _ok("created", _ref("Orchestra"), "201")
                | _errors(400, 404, 409, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}/registrations": {
            "parameters": [_FED],
            "post": {
                "summary": "Register a node: token, elapsed time, supernode(s), conductor",
                "requestBody": _json_body(_ref("RegistrationRequest")),
                "responses": _ok("registered", _ref("Registration"), "201")
                | _errors(400, 404, 409, 413, 415, 429),
            },
        },
        "/api/v1/federations/{federation}/conductor": {
            "parameters": [_FED],
            "get": {
                "summary": "The conductor and its term",
                "responses": _ok("conductor", _ref("Conductor")) | _errors(400, 404),
            },
            "post": {
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
                "summary": "Federation time with receive (t2) and send (t3) stamps for clock sync",
                "responses": _ok("elapsed time", _ref("Elapsed")) | _errors(400, 404),
            },
        },
        "/api/v1/federations/{federation}/epoch": {
            "parameters": [_FED],
            "post": {
                "summary": "Hand over the federation's time: taken when the registry has no "
                "epoch or an older one is offered (elapsed then goes on after a reset)",
                "requestBody": _json_body(_ref("EpochOffer")),
                "responses": _ok("the federation's time", _ref("EpochAnswer"))
                | _errors(400, 404, 413),
            },
        },
        "/api/v1/registrations/{token}/heartbeat": {
            "parameters": [_TOKEN],
            "post": {
                "summary": "Keep a registration alive (it expires after ttl seconds without)",
                "responses": _ok("alive", _ref("Heartbeat")) | _errors(404),
            },
        },
        "/api/v1/registrations/{token}": {
            "parameters": [_TOKEN],
            "delete": {
                "summary": "Unregister",
                "responses": _ok("unregistered", {"type": "object"}) | _errors(404),
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stagemesh registry",
            "version": "1",
            "description": "Federations, orchestras, registrations, conductor and time for "
            "stagemesh nodes. Errors are JSON objects with an 'error' message.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
    }
