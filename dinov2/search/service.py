"""The search service of an archive index: a web page and a JSON API on FastAPI, served by uvicorn.

Endpoints (``python -m dinov2.search serve --index DIR``; the ``service`` extra installs FastAPI,
uvicorn and python-multipart):

- ``GET /``: the page (``static/index.html`` with its script and style, no external resources): pick or
  drop an image, choose k, see the k nearest indexed images as a grid with their distances and labels.
- ``POST /api/search?k=N``, body = the image file's bytes (``Content-Length`` required), and
  ``POST /api/search/upload?k=N``, a multipart form with the image in the field ``file`` (what the page
  sends): ``{"results": [{"rank", "id", "path", "distance", "labels"}], "k", "nbits"}``. 400 for bytes
  that are not a readable image or a bad k, 411 without a length, 413 above the upload limit (the
  whole request body, form fields included).
- ``GET /api/health``: ``{"status": "ok", "count", "nbits"}``.
- ``GET /images/<id>``: the indexed image of that integer id (formats browsers do not show, such as
  TIFF, as PNG; a parquet dataset's row from its shard). URL paths are never mapped to file paths, so
  only the indexed images can be read.
- ``GET /docs`` and ``GET /openapi.json``: the API's OpenAPI description (``/docs`` loads Swagger UI
  from its CDN into the reader's browser).

Anything else is 404 (405 for a known path with another method); every error is ``{"error": message}``.
The limits are declared once, in ``UploadLimit``; searches run in worker threads under the searcher's lock.
"""

import asyncio
import importlib.util
import io
import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Any, Dict

from PIL import Image

from dinov2.data import ImageLoadError
from dinov2.data.datasets import ParquetError, load_image_rgb
from dinov2.search.archive import ArchiveError, ArchiveSearcher

try:
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        # FastAPI reads the upload form with python-multipart, and would only fail at the first route.
        raise ImportError("No module named 'python_multipart'")
    from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:
    raise ArchiveError(
        f"the search service needs FastAPI, uvicorn and python-multipart: pip install 'sdsh[service]' ({exc})"
    ) from None

logger = logging.getLogger("dinov2")

DEFAULT_K = 10
MAX_K = 1000
DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
# A client that announced an oversize body has it read and dropped up to this size before the 413, so that
# closing the connection does not reset it before the answer arrives; beyond it, the answer comes at once.
_DRAIN_LIMIT = 64 * 1024 * 1024
# Seconds a client may stay silent while sending its body (against stalled uploads).
BODY_TIMEOUT_S = 60
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Served as they are; other formats (TIFF, ...) are converted to PNG for the browser.
_BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}
_CSP = "default-src 'none'; img-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
_K_RULE = f"k must be one integer from 1 to {MAX_K}"


# ---------------------------------------------------------------------------------------------------
# Limits and headers, declared once for every route
# ---------------------------------------------------------------------------------------------------


async def _send_error(send, status: int, message: str) -> None:
    await JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})(
        {"type": "http"}, None, send
    )


class UploadLimit:
    """ASGI middleware: a body is announced by ``Content-Length`` (411 otherwise), at most ``max_bytes`` (413),
    and arrives without a silence of more than ``BODY_TIMEOUT_S`` seconds (408)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is None:
            return await _send_error(send, 411, "Content-Length is required (the image file's size)")
        text = length.decode("latin-1").strip()
        if not text.isdigit() or len(text) > 18:
            return await _send_error(send, 400, f"bad Content-Length: {text!r}")
        size = int(text)
        if size > self.max_bytes:
            if size <= _DRAIN_LIMIT:
                await self._drain(receive)
            return await _send_error(send, 413, f"upload of {size} bytes exceeds the limit of {self.max_bytes}")

        async def timed_receive():
            try:
                return await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"no request data for {BODY_TIMEOUT_S} s") from None

        return await self.app(scope, timed_receive, send)

    @staticmethod
    async def _drain(receive) -> None:
        try:
            while True:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
        except asyncio.TimeoutError:
            return


class SecurityHeaders:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every answer, and one log line per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
                client = scope.get("client") or ("-", 0)
                logger.info("%s %s %s %d", client[0], scope["method"], scope["path"], message["status"])
            await send(message)

        return await self.app(scope, receive, send_with_headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        name = error["loc"][-1] if error.get("loc") else "request"
        if name == "k":
            problems.append(f"{_K_RULE}, got {request.query_params.getlist('k')}")
        else:
            problems.append(f"{name}: {error.get('msg', 'invalid')}")
    return JSONResponse({"error": "; ".join(problems)}, status_code=400)


# ---------------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------------

router = APIRouter()


def get_searcher(request: Request) -> ArchiveSearcher:
    return request.app.state.searcher


def search_k(request: Request, k: int = Query(DEFAULT_K, ge=1, le=MAX_K, description="how many results")) -> int:
    """The ``k`` of a search, given at most once."""
    if len(request.query_params.getlist("k")) > 1:
        raise HTTPException(400, f"{_K_RULE}, got {request.query_params.getlist('k')}")
    return k


async def run_search(searcher: ArchiveSearcher, data: bytes, k: int) -> Dict[str, Any]:
    """Decode an uploaded image and search it; 400 when the bytes are not an image."""
    try:
        image = await run_in_threadpool(load_image_rgb, io.BytesIO(data), "upload")
    except ImageLoadError as exc:
        cause = exc.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        raise HTTPException(400, f"the uploaded {len(data)} bytes are not a readable image ({reason})") from None
    try:
        results = await run_in_threadpool(searcher.search, image, k)
    except Exception:
        logger.exception("search failed")
        raise HTTPException(500, "the search failed (see the server log)") from None
    return {"results": results, "k": len(results), "nbits": searcher.nbits}


_RAW_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image file's bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/api/search", openapi_extra=_RAW_BODY, summary="Search with the image file as the request body")
async def search_body(request: Request, k: int = Depends(search_k), searcher=Depends(get_searcher)):
    return await run_search(searcher, await request.body(), k)


@router.post("/api/search/upload", summary="Search with the image as a multipart form field 'file'")
async def search_upload(file: UploadFile = File(...), k: int = Depends(search_k), searcher=Depends(get_searcher)):
    return await run_search(searcher, await file.read(), k)


@router.get("/api/health", summary="Index size and code length")
def health(searcher=Depends(get_searcher)):
    return {"status": "ok", "count": searcher.count, "nbits": searcher.nbits}


def browser_image(data: bytes):
    """(body, media type): the bytes as they are when browsers show the format, otherwise re-encoded as PNG."""
    with Image.open(io.BytesIO(data)) as image:
        kind = image.format
    if kind in _BROWSER_FORMATS:
        return data, _BROWSER_FORMATS[kind]
    buffer = io.BytesIO()
    load_image_rgb(io.BytesIO(data)).save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


@router.get("/images/{image_id:int}", summary="An indexed image by id")
def indexed_image(image_id: int, searcher=Depends(get_searcher)):
    if image_id >= searcher.count:
        raise HTTPException(404, f"not found: /images/{image_id}")
    try:
        body, media_type = browser_image(searcher.image_data(image_id))
    except (OSError, ImageLoadError, ParquetError) as exc:
        logger.warning(f"indexed image {image_id} cannot be served: {exc}")
        raise HTTPException(404, f"image {image_id} is not available") from None
    return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=3600"})


@router.get("/", include_in_schema=False)
@router.get("/index.html", include_in_schema=False)
def page():
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _CSP})


def create_app(searcher: ArchiveSearcher, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The application over one searcher, with the upload limit and error format of the module docstring."""
    app = FastAPI(title="SDSH archive search", summary="Nearest indexed images of an uploaded image", redoc_url=None)
    app.state.searcher = searcher
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    app.add_middleware(SecurityHeaders)
    return app


# ---------------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SearchServer:
    """uvicorn on a socket bound (and listening) at construction, so the port is known before serving.

    ``serve_forever`` runs until ``shutdown`` (from another thread) or an interrupt; ``server_close``
    closes the socket.
    """

    def __init__(self, app: FastAPI, host: str, port: int):
        import uvicorn

        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self.socket = socket.socket(family, kind, proto)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind(address)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        config = uvicorn.Config(app, log_config=None, access_log=False, timeout_keep_alive=5, limit_concurrency=256)
        self.server = uvicorn.Server(config)

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.socket])

    def shutdown(self) -> None:
        self.server.should_exit = True

    def server_close(self) -> None:
        self.socket.close()


def make_server(
    searcher: ArchiveSearcher, host: str = "127.0.0.1", port: int = 0, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> SearchServer:
    """A bound server (port 0: a free one, see ``server.server_address``); call ``serve_forever``."""
    if not is_loopback(host):
        logger.warning(
            f"binding {host}: the index and its images can be searched and downloaded by anyone who can reach "
            "this address (the default 127.0.0.1 keeps it to this machine)"
        )
    return SearchServer(create_app(searcher, max_upload_bytes), host, port)


def serve(searcher: ArchiveSearcher, host: str, port: int, max_upload_bytes: int) -> None:
    """Serve until interrupted; prints the address (with the port chosen for port 0) on standard output."""
    server = make_server(searcher, host, port, max_upload_bytes)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving {searcher.count} images on http://{shown}:{bound_port}/", flush=True)
    logger.info(f"index {os.path.abspath(searcher.index_dir)}, uploads up to {max_upload_bytes} bytes")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
