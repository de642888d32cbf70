"""The ASGI app of `transferlab serve`: /predict, /explain, /metadata, /health and the page at /.

Every error is JSON {"error": message, "status": code}: a bad upload is the client's 4xx and
the server goes on serving; nothing a request sends can stop it or leak memory past the limits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import resources
from urllib.parse import quote

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..data.decode import UnreadableImage
from ..errors import TransferlabError
from ..inference.predict import top_classes
from ..trust.unknown import UNKNOWN
from .batcher import Batcher
from .model import ServedModel
from .uploads import Limits, RequestError, bool_param, number_param, read_upload

log = logging.getLogger("transferlab")

PREDICT_PARAMS = {"top_k": "classes per image, default 5 (more than the run has: all of them)",
                  "tta": "true to average ten views"}
EXPLAIN_PARAMS = {"class": "explain this class instead of the predicted one",
                  "layer": "the layer to explain (see `transferlab layers`)",
                  "alpha": "heatmap opacity 0..1, default 0.45"}
# Images decoded or waiting for the network at once: with the byte limit per request, what
# bounds the server's memory under any load (more requests wait for a slot).
IN_FLIGHT_IMAGES = 64


def create_app(model, limits: Limits | None = None, batch_size: int = 8, wait_ms: float = 5.0) -> Starlette:
    """The app serving `model`: a ServedModel, a run directory or a fitted ImageClassifier (any
    ASGI server runs it; `transferlab serve` uses uvicorn)."""
    if not isinstance(model, ServedModel):
        model = ServedModel(model, threads=1)
    limits = limits or Limits()
    batcher = Batcher(model.probabilities, batch_size, wait_ms, model.prepare_thread)
    slots = _Slots(IN_FLIGHT_IMAGES)
    started = time.time()
    counts = {"requests": 0, "errors": 0}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    async def decode_all(images, tta: bool) -> list[np.ndarray]:
        def work(name: str, data: bytes) -> np.ndarray:
            try:
                return model.views(data, tta, limits.max_pixels)
            except UnreadableImage as err:
                raise unreadable(name, err) from None
        return await asyncio.gather(*(asyncio.to_thread(work, n, d) for n, d in images))

    async def predict(request: Request) -> Response:
        counts["requests"] += 1
        upload = await read_upload(request, limits, PREDICT_PARAMS)
        top_k = top_k_param(upload.params, len(model.classes))
        tta = bool_param(upload.params, "tta")
        n = len(upload.images)
        if n > IN_FLIGHT_IMAGES:
            raise RequestError(413, f"{n} images: at most {IN_FLIGHT_IMAGES} per request")
        await slots.take(n)
        batcher.announce(n)
        submitted = 0
        try:
            views = await decode_all(upload.images, tta)
            submitted = n
            rows = await asyncio.gather(*(batcher.submit(v) for v in views))
        finally:
            batcher.announce(-(n - submitted))
            slots.give(n)
        predictions = []
        for (name, _), row in zip(upload.images, rows):
            proba, distance = model.split(row)
            order = np.argsort(-proba, kind="stable")[:top_k]
            answer = {
                "name": name,
                "class": model.classes[order[0]],
                "top": [{"class": model.classes[j], "probability": float(proba[j])} for j in order],
                "probabilities": {c: float(p) for c, p in zip(model.classes, proba)},
            }
            if distance is not None:  # beyond the run's threshold: of no class the model knows
                answer.update(unknown=distance > model.detector.threshold, unknown_score=round(distance, 6))
                if answer["unknown"]:
                    answer["class"] = UNKNOWN
            predictions.append(answer)
        return JSONResponse({"predictions": predictions, "tta": tta, "engine": model.engine})

    async def explain(request: Request) -> Response:
        counts["requests"] += 1
        upload = await read_upload(request, limits, EXPLAIN_PARAMS)
        if len(upload.images) != 1:
            raise RequestError(400, f"/explain takes one image, got {len(upload.images)}")
        alpha = number_param(upload.params, "alpha", 0.45, 0.0, 1.0, float)
        (name, data), = upload.images
        await slots.take(1)
        try:
            done = await batcher.run_alone(model.explain, data, upload.params.get("class"),
                                           upload.params.get("layer"), alpha, limits.max_pixels)
        except UnreadableImage as err:
            raise unreadable(name, err) from None
        except TransferlabError as err:
            raise RequestError(400, str(err)) from None
        finally:
            slots.give(1)
        headers = {"X-Class": quote(done.class_name), "X-Probability": f"{done.probability:.6f}",
                   "X-Layer": quote(done.layer), "Cache-Control": "no-store"}
        return Response(done.png, media_type="image/png", headers=headers)

    async def metadata(request: Request) -> Response:
        return JSONResponse({**model.metadata(), "limits": limits.to_dict(),
                             "batching": {"batch_size": batch_size, "wait_ms": wait_ms}})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "engine": model.engine, "pid": os.getpid(),
                             "uptime_s": round(time.time() - started, 1), **counts,
                             "batches": batcher.batches, "images": batcher.images})

    async def page(request: Request) -> Response:
        html = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
        return Response(html, media_type="text/html; charset=utf-8")

    async def request_error(request: Request, err: RequestError) -> Response:
        counts["errors"] += 1
        return JSONResponse({"error": err.message, "status": err.status}, status_code=err.status)

    async def http_error(request: Request, err: HTTPException) -> Response:
        counts["errors"] += 1
        message = {404: f"no such endpoint: {request.url.path} (try /, /predict, /explain, /metadata, /health)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, err.detail)
        return JSONResponse({"error": message, "status": err.status_code}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    async def server_error(request: Request, err: Exception) -> Response:
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}", "status": 500},
                            status_code=500)

    static = StaticFiles(directory=str(resources.files(__package__).joinpath("static")))
    routes = [Route("/", page), Route("/predict", predict, methods=["POST"]),
              Route("/explain", explain, methods=["POST"]), Route("/metadata", metadata),
              Route("/health", health), Mount("/static", static)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={RequestError: request_error, HTTPException: http_error,
                                        Exception: server_error})
    app.state.counts = counts  # what `transferlab serve` reports once stopped
    return app


def top_k_param(params: dict, classes: int) -> int:
    """top_k as `transferlab predict` takes --top-k: clamped to the classes, refused below 1."""
    top_k = number_param(params, "top_k", 5)
    try:
        return top_classes(top_k, classes, f"top_k={top_k}")
    except TransferlabError as err:
        raise RequestError(400, str(err)) from None


def unreadable(name: str, err: UnreadableImage) -> RequestError:
    """413 for an image too large in pixels, 422 for one that is not a readable image."""
    too_large = err.reason.startswith(("decompression bomb", "too elongated"))
    return RequestError(413 if too_large else 422, f"'{name}': {err.reason}")


class _Slots:
    """A count of images in flight; a request takes all of its images' slots at once or waits, so
    two large requests cannot each hold half and wait for the other."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._changed: asyncio.Condition | None = None

    async def take(self, n: int) -> None:
        self._changed = self._changed or asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        if self._changed is not None:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
