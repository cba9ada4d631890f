"""The API's body parser: JSON only (application/json or a +json type), UTF-8 without a byte-order mark.

Anything else is refused before validation with a status and a message saying what is
allowed (415 for another content type, 400 for the rest), so a client never gets a body
silently reinterpreted. NaN and Infinity (which Python's parser accepts) reach validation,
where every schema refuses non-finite numbers naming the field (api/schemas.py, 422).
"""
from __future__ import annotations

import codecs
import json

from django.http import HttpRequest
from ninja.parser import Parser


class BodyRejected(ValueError):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or (content_type.startswith("application/") and content_type.endswith("+json"))


class StrictJsonParser(Parser):
    def parse_body(self, request: HttpRequest):
        content_type = request.content_type or ""
        if not is_json_type(content_type):
            raise BodyRejected(415, f"Content-Type must be application/json, got {content_type or 'none'}")
        body = request.body
        if body.startswith(codecs.BOM_UTF8):
            raise BodyRejected(400, "the body starts with a byte-order mark: send UTF-8 JSON without one")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyRejected(400, "the body is not UTF-8") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BodyRejected(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
