"""Reading a request: the images (multipart files, base64 in JSON, or a raw image body) and the
parameters (query string, form fields or JSON keys), each checked against the server's limits,
every problem a RequestError with the HTTP status and a message naming it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
import json
import logging
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

# python-multipart logs a warning for every malformed body it is given: the client's mistake, which
# its 400 answer already names; in the server's log it is noise that any client could flood.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


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
    upload = Upload()
    for key, value in request.query_params.multi_items():
        _add_param(upload, key, value)
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
        raise _too_many(len(upload.images), limits)
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


def _too_many(n: int, limits: Limits) -> RequestError:
    return RequestError(413, f"{n} images in one request: at most {limits.max_files} (the server's --max-files); "
                             "split them over several requests")


def _add_param(upload: Upload, key: str, value: str) -> None:
    if key in upload.params:  # which of the two was meant cannot be known: never pick one
        raise RequestError(400, f"{key} is given twice: give each parameter once (in the query, the form or "
                                "the JSON body)")
    upload.params[key] = value


async def _read_form(request: Request, body: bytes, limits: Limits, upload: Upload) -> None:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    # Without "app" in its scope, Starlette leaves the parser's error to us instead of answering
    # 400 with its own message; its file limit stops the parse at the first file past ours.
    scope = {k: v for k, v in request.scope.items() if k != "app"}
    try:
        form = await Request(scope, replay).form(max_files=limits.max_files, max_fields=100)
    except MultiPartException as err:
        # Off the event loop: a 20 MiB body of empty files takes seconds to count.
        files = await asyncio.to_thread(_count_files, request.headers.get("content-type", ""), body)
        if files > limits.max_files:
            raise _too_many(files, limits) from None
        raise RequestError(400, f"the multipart body could not be read ({err.message.rstrip('.')}): send "
                                "images as multipart/form-data files (curl -F file=@photo.jpg)") from None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                upload.images.append((value.filename or key, await value.read()))
            else:
                _add_param(upload, key, value)
    finally:
        await form.close()


def _count_files(content_type: str, body: bytes) -> int:
    """The file parts of a multipart body, from their headers alone: nothing is kept, so a body of
    thousands of tiny files costs no memory (Starlette makes a temporary file of each one it
    reads). Parts after a malformed one are not counted."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        return 0
    files, name, value = 0, bytearray(), bytearray()

    def header_end():
        nonlocal files
        if name.lower() == b"content-disposition" and b"filename" in parse_options_header(bytes(value))[1]:
            files += 1  # what makes Starlette read a part as a file
        name.clear()
        value.clear()

    parser = MultipartParser(boundary, {"on_header_field": lambda data, start, end: name.extend(data[start:end]),
                                        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
                                        "on_header_end": header_end})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError:
        pass
    return files


JSON_KINDS = {dict: "an object", bool: "true or false", int: "a number", float: "a number", type(None): "null"}


def _read_json(body: bytes, upload: Upload) -> None:
    try:
        document = json.loads(body or b"null", object_pairs_hook=_unique_keys)
    except ValueError as err:
        raise RequestError(400, f"the body is not valid JSON ({err})") from None
    if not isinstance(document, dict) or "images" not in document:
        raise RequestError(400, "a JSON body must be an object with \"images\": a list of base64 strings "
                                "or of {\"name\", \"data\"} objects")
    images = document.pop("images")
    if isinstance(images, str):
        images = [images]  # one image needs no list
    if not isinstance(images, list):
        raise RequestError(400, "\"images\" must be a list of base64 strings or of {\"name\", \"data\"} objects, "
                                f"not {JSON_KINDS.get(type(images), type(images).__name__)}: send "
                                "{\"images\": [\"<base64>\", ...]}")
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
        _add_param(upload, key, value if isinstance(value, str) else json.dumps(value))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refused when a key is given twice (json keeps the last one silently)."""
    document = {}
    for key, value in pairs:
        if key in document:
            raise RequestError(400, f"{key} is given twice in the JSON body: give each key once")
        document[key] = value
    return document


# -- parameters ------------------------------------------------------------------------------

def number_param(params: dict, name: str, default, low=None, high=None, kind: type = int):
    """`params[name]` as an int (or float) in low..high (None: unbounded), else a 400 naming it."""
    if name not in params:
        return default
    try:
        value = kind(params[name])
    except (TypeError, ValueError):
        raise RequestError(400, f"{name}={params[name]!r} is not {'an integer' if kind is int else 'a number'}"
                           ) from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(400, f"{name}={value} is outside {low}..{high}")
    return value


def bool_param(params: dict, name: str) -> bool:
    value = str(params.get(name, "false")).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise RequestError(400, f"{name}={params[name]!r} is not a boolean: use true or false")
