"""Reading a request body into its model. As FastAPI reads a JSON body (its content-type rules, Python's
json parser, its error shapes), but one function for every route and for the fast path, and every
malformed body is a 422 naming what is wrong: a JSON syntax error and where, bytes that are not UTF-8,
nesting too deep."""
from __future__ import annotations

import email.message
import json
from typing import TypeVar

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Body = TypeVar("Body", bound=BaseModel)


def read_body(body: bytes, content_type: str | None, model: type[Body]) -> Body:
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not is_json(content_type):
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "input": body.decode(
            "utf-8", "replace"), "msg": "Input should be a valid dictionary or object to extract fields from"}])
    try:
        return model.model_validate(_parse(body), from_attributes=True)
    except ValidationError as e:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in e.errors(include_url=False)]) from None


def _parse(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # Python's parser, as FastAPI's: it takes NaN, Infinity and lone surrogates (the model refuses them with
    # a 422 naming the field) and words its syntax errors as FastAPI's answers do.
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        where, problem = e.pos, e.msg
    except UnicodeDecodeError as e:
        where, problem = e.start, f"not UTF-8 text (byte 0x{body[e.start]:02x})"
    except RecursionError:
        where, problem = 0, "nested too deeply"
    raise RequestValidationError([{"type": "json_invalid", "loc": ("body", where), "msg": "JSON decode error",
                                   "input": {}, "ctx": {"error": problem}}])


def is_json(content_type: str | None) -> bool:
    """application/json or application/*+json; a body without a content-type is not read as JSON (FastAPI's
    strict content type)."""
    if not content_type:
        return False
    if content_type.startswith("application/json"):
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))
