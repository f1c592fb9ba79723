"""The search service of an archive index: a web page and a JSON API over the standard library's HTTP server.

Endpoints (``python -m dinov2.search serve --index DIR``):

- ``GET /``: a self-contained page (no external resources): pick or drop an image, choose k, see the
  k nearest indexed images as a grid with their distances and labels.
- ``POST /api/search?k=N``, body = the image file's bytes (``Content-Length`` required): ``{"results":
  [{"rank", "id", "path", "distance", "labels"}], "k", "nbits"}``. 400 for bytes that are not a
  readable image or a bad k, 411 without a length, 413 above the upload limit.
- ``GET /api/health``: ``{"status": "ok", "count", "nbits"}``.
- ``GET /images/<id>``: the indexed image of that integer id (formats browsers do not show, such as
  TIFF, as PNG). URL paths are never mapped to file paths, so only the indexed files can be read.

Anything else is 404. Requests are served by threads; the network and the index are shared under
the searcher's lock.
"""

import io
import ipaddress
import json
import logging
import mimetypes
import os
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional
from urllib.parse import parse_qs

from dinov2.data import ImageLoadError
from dinov2.data.datasets import load_image_rgb
from dinov2.search.archive import ArchiveSearcher

logger = logging.getLogger("dinov2")

DEFAULT_K = 10
MAX_K = 1000
DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
# A client that announced an oversize body has it read and dropped up to this size, so that closing the
# connection does not reset it before the 413 answer arrives; beyond it, the connection is just closed.
_DRAIN_LIMIT = 64 * 1024 * 1024
_IMAGE_ROUTE = re.compile(r"/images/([0-9]{1,18})")
# Served as they are; other formats (TIFF, ...) are converted to PNG for the browser.
_BROWSER_FORMATS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
_CSP = "default-src 'none'; img-src 'self' blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'"

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SDSH archive search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:1.5em;text-align:center;margin:1em 0}
#drop.over{border-color:#06c;background:#eef5ff}
#query img{max-width:160px;max-height:160px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.tile{border:1px solid #ccc;border-radius:6px;padding:4px;font-size:12px;overflow-wrap:anywhere}
.tile img{width:100%;height:140px;object-fit:cover;display:block}
#status{color:#555}.error{color:#b00}
</style></head><body>
<h1>Search the archive</h1>
<p id="info">__COUNT__ indexed images, __NBITS__-bit codes.</p>
<form id="form">
<div id="drop">Drop an image here, or <input type="file" id="file" name="file" accept="image/*"></div>
<label>k <input type="number" id="k" name="k" value="__K__" min="1" max="__MAX_K__"></label>
<button type="submit">Search</button>
</form>
<p id="status"></p><div id="query"></div><div id="grid"></div>
<script>
"use strict";
let chosen = null;
const drop = document.getElementById("drop"), fileInput = document.getElementById("file");
const statusLine = document.getElementById("status"), grid = document.getElementById("grid");
function choose(file) {
  chosen = file;
  const q = document.getElementById("query");
  q.replaceChildren();
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  q.append("Query: ", img);
  search();
}
fileInput.addEventListener("change", () => { if (fileInput.files.length) choose(fileInput.files[0]); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});
document.getElementById("form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
async function search() {
  if (!chosen) { statusLine.textContent = "Choose an image first."; return; }
  const k = document.getElementById("k").value;
  statusLine.className = ""; statusLine.textContent = "Searching...";
  try {
    const response = await fetch("/api/search?k=" + encodeURIComponent(k), {method: "POST", body: chosen});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    show(answer);
  } catch (err) {
    statusLine.className = "error"; statusLine.textContent = "Error: " + err.message; grid.replaceChildren();
  }
}
function show(answer) {
  statusLine.textContent = answer.k + " nearest of the archive (" + answer.nbits + " bits)";
  grid.replaceChildren(...answer.results.map((r) => {
    const tile = document.createElement("div"); tile.className = "tile";
    const img = document.createElement("img"); img.src = "/images/" + r.id; img.alt = r.path; img.loading = "lazy";
    const text = document.createElement("div");
    text.textContent = "#" + r.rank + "  d=" + r.distance + "  " + r.labels.join(", ");
    const path = document.createElement("div"); path.textContent = r.path;
    tile.append(img, text, path);
    return tile;
  }));
}
</script></body></html>
"""


def _route(request_target: str) -> str:
    """The path of a request target, still percent-encoded (so "%2e%2e" matches no route), without the query."""
    return request_target.partition("?")[0].partition("#")[0]


class SearchServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the searcher and the upload limit its handlers use."""

    daemon_threads = True

    def __init__(self, address, searcher: ArchiveSearcher, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES):
        super().__init__(address, SearchHandler)
        self.searcher = searcher
        self.max_upload_bytes = int(max_upload_bytes)


class SearchHandler(BaseHTTPRequestHandler):
    """The endpoints of the module docstring; every error is a JSON ``{"error": message}``."""

    server_version = "SDSH-index"
    timeout = 60  # seconds a client may stay silent (a socket timeout, against stalled uploads)
    server: SearchServer

    def log_message(self, format: str, *args) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    # ---- responses

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True
        self._json(status, {"error": message})

    # ---- routes

    def do_GET(self) -> None:
        path = _route(self.path)
        searcher = self.server.searcher
        if path in ("/", "/index.html"):
            page = (
                PAGE.replace("__COUNT__", str(searcher.count))
                .replace("__NBITS__", str(searcher.nbits))
                .replace("__K__", str(min(DEFAULT_K, searcher.count)))
                .replace("__MAX_K__", str(min(MAX_K, searcher.count)))
            )
            self._send(
                HTTPStatus.OK, page.encode("utf-8"), "text/html; charset=utf-8", {"Content-Security-Policy": _CSP}
            )
        elif path == "/api/health":
            self._json(HTTPStatus.OK, {"status": "ok", "count": searcher.count, "nbits": searcher.nbits})
        else:
            match = _IMAGE_ROUTE.fullmatch(path)
            if match is None or int(match.group(1)) >= searcher.count:
                self._error(HTTPStatus.NOT_FOUND, f"not found: {path}")
            else:
                self._send_image(int(match.group(1)))

    def _send_image(self, image_id: int) -> None:
        file = self.server.searcher.image_path(image_id)
        try:
            if file.lower().endswith(_BROWSER_FORMATS):
                with open(file, "rb") as f:
                    body = f.read()
                content_type = mimetypes.guess_type(file)[0] or "application/octet-stream"
            else:
                buffer = io.BytesIO()
                load_image_rgb(file).save(buffer, format="PNG")
                body, content_type = buffer.getvalue(), "image/png"
        except (OSError, ImageLoadError) as exc:
            logger.warning(f"indexed image {image_id} ({file}) cannot be served: {exc}")
            self._error(HTTPStatus.NOT_FOUND, f"image {image_id} is not available")
            return
        self._send(HTTPStatus.OK, body, content_type, {"Cache-Control": "max-age=3600"})

    def _drain(self, size: int) -> None:
        if size > _DRAIN_LIMIT:
            return
        try:
            while size > 0:
                data = self.rfile.read(min(size, 1 << 20))
                if not data:
                    break
                size -= len(data)
        except OSError:
            pass

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        if path != "/api/search":
            self._error(HTTPStatus.NOT_FOUND, f"not found: {_route(self.path)}")
            return
        values = parse_qs(query, keep_blank_values=True).get("k", [str(DEFAULT_K)])
        if len(values) != 1 or not re.fullmatch(r"[0-9]{1,9}", values[0]) or not 1 <= int(values[0]) <= MAX_K:
            self._error(HTTPStatus.BAD_REQUEST, f"k must be one integer from 1 to {MAX_K}, got {values}")
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required (the image file's size)")
            return
        if not re.fullmatch(r"[0-9]{1,18}", length.strip()):
            self._error(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {length!r}")
            return
        size, limit = int(length), self.server.max_upload_bytes
        if size > limit:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"upload of {size} bytes exceeds the limit of {limit}")
            self._drain(size)
            return
        body = self.rfile.read(size)
        if len(body) != size:
            self._error(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {size} bytes")
            return
        try:
            image = load_image_rgb(io.BytesIO(body))
        except ImageLoadError as exc:
            cause = exc.__cause__
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            self._error(HTTPStatus.BAD_REQUEST, f"the uploaded {size} bytes are not a readable image ({reason})")
            return
        searcher = self.server.searcher
        try:
            results = searcher.search(image, int(values[0]))
        except Exception:
            logger.exception("search failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the search failed (see the server log)")
            return
        self._json(HTTPStatus.OK, {"results": results, "k": len(results), "nbits": searcher.nbits})


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(
    searcher: ArchiveSearcher, host: str = "127.0.0.1", port: int = 0, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> SearchServer:
    """A bound server (port 0: a free one, see ``server.server_address``); call ``serve_forever``."""
    if not is_loopback(host):
        logger.warning(
            f"binding {host}: the index and its images can be searched and downloaded by anyone who can reach "
            "this address (the default 127.0.0.1 keeps it to this machine)"
        )
    return SearchServer((host, port), searcher, max_upload_bytes)


def serve(searcher: ArchiveSearcher, host: str, port: int, max_upload_bytes: int) -> None:
    """Serve until interrupted; prints the address (with the port chosen for port 0) on standard output."""
    server = make_server(searcher, host, port, max_upload_bytes)
    bound_host, bound_port = server.server_address[:2]
    print(f"serving {searcher.count} images on http://{bound_host}:{bound_port}/", flush=True)
    logger.info(f"index {os.path.abspath(searcher.index_dir)}, uploads up to {max_upload_bytes} bytes")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
