"""Reading a request: the images (multipart files, base64 in JSON, or a raw image body) and the
parameters (query string, form fields or JSON keys), each checked against the server's limits,
every problem a RequestError with the HTTP status and a message naming it."""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from dataclasses import dataclass, field

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_files: int = 16
    max_bytes: int = 20 * 2**20  # the whole request body
    max_pixels: int = 40_000_000  # each image, from its header, before decoding

    def to_dict(self) -> dict:
        return {"max_files": self.max_files, "max_bytes": self.max_bytes, "max_pixels": self.max_pixels}


@dataclass
class Upload:
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name, encoded bytes)
    params: dict[str, str] = field(default_factory=dict)


async def read_upload(request: Request, limits: Limits, known: dict[str, str]) -> Upload:
    """The request's images and parameters. `known` maps each parameter name to its help."""
    body = await _bounded_body(request, limits.max_bytes)
    upload = Upload(params=dict(request.query_params))
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        await _read_form(request, body, limits, upload)
    elif kind == "application/json":
        _read_json(body, upload)
    elif kind.startswith("image/") or kind == "application/octet-stream":
        if body:
            upload.images.append(("image", body))
    else:
        raise RequestError(415, f"content type '{kind or 'none'}' is not accepted: send multipart/form-data "
                                "files, JSON {\"images\": [base64, ...]}, or the image itself as image/*")
    unknown = sorted(set(upload.params) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RequestError(400, f"unknown parameter '{unknown[0]}'{hint}: this endpoint takes "
                                + ", ".join(f"{k} ({v})" for k, v in known.items()))
    if not upload.images:
        raise RequestError(400, "no image in the request: send files as multipart/form-data, "
                                "JSON {\"images\": [base64, ...]}, or an image/* body")
    if len(upload.images) > limits.max_files:
        raise RequestError(413, f"{len(upload.images)} images in one request: at most {limits.max_files} "
                                "(the server's --max-files); split them over several requests")
    for name, data in upload.images:
        if not data:
            raise RequestError(422, f"'{name}' is empty (0 bytes): send the image file's contents")
    return upload


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, refused once it passes `limit` bytes (before reading the rest of it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request is {int(declared)} bytes: at most {limit} (the server's --max-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request is over {limit} bytes (the server's --max-mb): send fewer "
                                    "or smaller images")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_form(request: Request, body: bytes, limits: Limits, upload: Upload) -> None:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=limits.max_files + 1, max_fields=100)
    except MultiPartException as err:
        raise RequestError(400 if "Too many" not in str(err) else 413, f"multipart body: {err}") from None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                upload.images.append((value.filename or key, await value.read()))
            else:
                upload.params[key] = value
    finally:
        await form.close()


def _read_json(body: bytes, upload: Upload) -> None:
    try:
        document = json.loads(body or b"null")
    except ValueError as err:
        raise RequestError(400, f"the body is not valid JSON ({err})") from None
    if not isinstance(document, dict) or "images" not in document:
        raise RequestError(400, "a JSON body must be an object with \"images\": a list of base64 strings "
                                "or of {\"name\", \"data\"} objects")
    images = document.pop("images")
    if not isinstance(images, list):
        images = [images]
    for k, item in enumerate(images):
        name, data = f"images[{k}]", item
        if isinstance(item, dict):
            name, data = str(item.get("name", name)), item.get("data")
        if not isinstance(data, str):
            raise RequestError(400, f"{name}: expected a base64 string, got {type(data).__name__}")
        if data.startswith("data:") and "," in data:  # a data URL, as a browser's FileReader gives
            data = data.split(",", 1)[1]
        try:
            upload.images.append((name, base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{name}: not valid base64") from None
    for key, value in document.items():
        upload.params[key] = value if isinstance(value, str) else json.dumps(value)


# -- parameters ------------------------------------------------------------------------------

def number_param(params: dict, name: str, default, low, high, kind: type = int):
    """`params[name]` as an int (or float) in low..high, else a 400 naming it."""
    if name not in params:
        return default
    try:
        value = kind(params[name])
    except (TypeError, ValueError):
        raise RequestError(400, f"{name}={params[name]!r} is not {'an integer' if kind is int else 'a number'}"
                           ) from None
    if not low <= value <= high:
        raise RequestError(400, f"{name}={value} is outside {low}..{high}")
    return value


def bool_param(params: dict, name: str) -> bool:
    value = str(params.get(name, "false")).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise RequestError(400, f"{name}={params[name]!r} is not a boolean: use true or false")
