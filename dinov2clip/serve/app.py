"""`pipeline serve`: the HTTP API and the web page, on Starlette and uvicorn.

Starlette rather than FastAPI: six routes whose input is a query string, a path id or an
uploaded file need no request models, and Starlette is what FastAPI runs on, with fewer
dependencies (no pydantic). uvicorn is its standard server.

    GET  /api/search?q=TEXT&k=K      text search through the projector (q: 1,000 characters)
    GET  /api/similar?id=ID&k=K      images most like an indexed one, by DINOv2 features
    POST /api/search_image           the same for an uploaded image (multipart field "image",
                                     or the raw bytes as the body; 20 MiB, 40 M pixels)
    GET  /api/image/ID?size=PX       a JPEG thumbnail (size=0: the original bytes), while the
                                     file is still the one indexed
    GET  /api/heatmap?id=ID&q=TEXT[&head=projector|talk2dino]
                                     a PNG of the image (512 px) with where q matches over it
    GET  /api/info  /healthz  /      what is served; liveness; the page

Bad input is a 4xx with {"error": "..."}; nothing a client sends produces a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dinov2clip.config.values import DENSE_HEADS
from dinov2clip.serve.engine import (
    BadImage,
    ImageTooLarge,
    NoDenseHead,
    SearchEngine,
    UnknownImage,
)

log = logging.getLogger(__name__)
MAX_K = 200
MAX_UPLOAD_BYTES = 20 << 20
MAX_QUERY_CHARS = 1000  # the text tower reads 77 tokens; a longer q is only echoed back
# Uploads decoded at once: each may take a few hundred MB (engine.MAX_UPLOAD_PIXELS), so three
# concurrent 156 M-pixel PNGs once took the server to 5.8 GB. Waiting uploads hold no thread.
MAX_DECODES = 2
# Heatmaps drawn at once (each a DINOv2 pass per window plus a 512 px image and its overlay;
# the forwards themselves take turns on the engine's lock). Waiting requests hold no thread.
MAX_HEATMAPS = 2
THUMBNAIL_PX, MAX_THUMBNAIL_PX = 256, 1024


def create_app(engine: SearchEngine, max_k: int = MAX_K,
               max_upload: int = MAX_UPLOAD_BYTES) -> Starlette:
    decode_slots = anyio.CapacityLimiter(MAX_DECODES)
    heatmap_slots = anyio.CapacityLimiter(MAX_HEATMAPS)

    def int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            if default is None:
                raise HTTPException(400, f"missing parameter {name!r}")
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HTTPException(400, f"{name} must be an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise HTTPException(400, f"{name} must be between {lo} and {hi}, got {value}")
        return value

    def k_param(request: Request) -> int:
        return int_param(request, "k", 20, 1, max_k)

    async def search(request: Request) -> Response:
        t0 = time.perf_counter()
        q = _query(request)
        k = k_param(request)
        scores, ids = await asyncio.wrap_future(engine.search_text(q, k))
        return _results(engine.hits(scores, ids), t0, query=q)

    async def similar(request: Request) -> Response:
        t0 = time.perf_counter()
        _require_dino(engine)
        image_id = int_param(request, "id", None, 0, 2**62)
        k = k_param(request)
        scores, ids = await run_in_threadpool(engine.similar, image_id, k)
        return _results(engine.hits(scores, ids), t0, id=image_id,
                        query_image=engine.describe(image_id))

    async def search_image(request: Request) -> Response:
        t0 = time.perf_counter()
        _require_dino(engine)
        k = k_param(request)
        data = await _upload(request, max_upload)
        scores, ids = await anyio.to_thread.run_sync(engine.search_image, data, k,
                                                     limiter=decode_slots)
        return _results(engine.hits(scores[0], ids[0]), t0)

    async def image(request: Request) -> Response:
        try:
            image_id = int(request.path_params["image_id"])
        except ValueError:
            raise HTTPException(404, "image ids are integers") from None
        size = int_param(request, "size", THUMBNAIL_PX, 0, MAX_THUMBNAIL_PX)
        if size == 0:
            data, kind = await run_in_threadpool(engine.original, image_id)
            return Response(data, media_type=kind, headers=_CACHE)
        if size < 16:
            raise HTTPException(400, "size must be 0 (the original) or 16 to "
                                     f"{MAX_THUMBNAIL_PX} pixels")
        data = await run_in_threadpool(engine.thumbnail, image_id, size)
        return Response(data, media_type="image/jpeg", headers=_CACHE)

    async def heatmap(request: Request) -> Response:
        _require_dino(engine)
        image_id = int_param(request, "id", None, 0, 2**62)
        q = _query(request)
        head = request.query_params.get("head") or "projector"
        if head not in DENSE_HEADS:
            raise HTTPException(400, f"head must be one of {', '.join(DENSE_HEADS)}, got {head!r}")
        png, facts = await anyio.to_thread.run_sync(engine.heatmap, image_id, q, head,
                                                    limiter=heatmap_slots)
        # the cosines the colours stretch over: blue is min, red is max, per image
        return Response(png, media_type="image/png",
                        headers={**_CACHE, "X-Heatmap-Min": f"{facts['min']:.4f}",
                                 "X-Heatmap-Max": f"{facts['max']:.4f}"})

    async def info(request: Request) -> Response:
        return JSONResponse({**engine.info(), "max_k": max_k, "max_upload_bytes": max_upload,
                             "max_upload_pixels": engine.max_upload_pixels,
                             "max_query_chars": MAX_QUERY_CHARS})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "n_images": engine.size})

    async def page(request: Request) -> Response:
        return HTMLResponse(_asset("index.html"))

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    routes = [
        Route("/", page), Route("/healthz", healthz), Route("/api/info", info),
        Route("/api/search", search), Route("/api/similar", similar),
        Route("/api/search_image", search_image, methods=["POST"]),
        Route("/api/image/{image_id}", image), Route("/api/heatmap", heatmap),
        Mount("/static", StaticFiles(packages=[("dinov2clip.serve", "static")]), name="static"),
    ]
    handlers = {HTTPException: _http_error, UnknownImage: _not_found, BadImage: _bad_image,
                ImageTooLarge: _too_large, NoDenseHead: _no_head, Exception: _server_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


_CACHE = {"Cache-Control": "public, max-age=3600"}


def _results(hits: list[dict], t0: float, **extra) -> JSONResponse:
    return JSONResponse({**extra, "results": hits,
                         "took_ms": round(1000 * (time.perf_counter() - t0), 2)})


def _query(request: Request) -> str:
    q = request.query_params.get("q", "").strip()
    if not q:
        raise HTTPException(400, "empty query: give the text to search for as ?q=")
    if len(q) > MAX_QUERY_CHARS:
        raise HTTPException(400, f"query too long: at most {MAX_QUERY_CHARS} characters, "
                                 f"got {len(q)}")
    return q


def _require_dino(engine: SearchEngine) -> None:
    if engine.dino_index is None:
        raise HTTPException(409, "this index has no DINOv2 vectors (built by an older version); "
                                 "rebuild it with `pipeline index --force` for image search")


async def _upload(request: Request, limit: int) -> bytes:
    """The uploaded image's bytes: multipart field "image", or the whole body."""
    length = request.headers.get("content-length")
    if length is None:
        raise HTTPException(411, "send the upload with a Content-Length")
    if not length.isdigit() or int(length) > limit + 4096:  # multipart framing on top
        raise HTTPException(413, f"upload too large: at most {limit} bytes")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        part = form.get("image")
        if part is None or isinstance(part, str):
            raise HTTPException(400, "no file in the form field 'image'")
        data = await part.read()
    else:
        data = await request.body()
    if not data:
        raise HTTPException(400, "empty upload: send an image")
    if len(data) > limit:
        raise HTTPException(413, f"upload too large: at most {limit} bytes")
    return data


def _asset(name: str) -> str:
    return resources.files("dinov2clip.serve").joinpath("static", name).read_text()


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=404)


async def _bad_image(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _too_large(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=413)


async def _no_head(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=409)  # the run lacks it, not the URL


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %r", request.method, request.url.path, exc)
    return JSONResponse({"error": "internal server error"}, status_code=500)
