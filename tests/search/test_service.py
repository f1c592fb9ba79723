"""Tests of the archive search service (dinov2/search/service.py) over real HTTP on 127.0.0.1.

The server runs in a thread on a free port, over the index of tests/eval/conftest.py; one test starts
``python -m dinov2.search serve --port 0`` as a subprocess. Requests go through http.client, which
sends the request target as written (no ``..`` normalisation), so traversal attempts reach the server.
"""

import http.client
import io
import json
import logging
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from dinov2.search.archive import ArchiveSearcher
from dinov2.search.service import MAX_K, is_loopback, make_server

from ..reliability.conftest import PYTHON, REPO_ROOT, subprocess_env
from .conftest import reference_packed_codes

# The command line as users run it: python -m dinov2.search
INDEX_COMMAND = ["-m", "dinov2.search"]


@pytest.fixture(scope="module")
def searcher(archive):
    return ArchiveSearcher(str(archive["index"]), device="cpu")


def _start(searcher, **kwargs):
    server = make_server(searcher, "127.0.0.1", 0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def port(searcher):
    server, thread = _start(searcher)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def small_limit_port(searcher):
    server, thread = _start(searcher, max_upload_bytes=1000)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def request(port, method, target, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def records(archive):
    return [json.loads(line) for line in (archive["index"] / "files.jsonl").read_text().splitlines()]


def image_bytes(archive, image_id):
    with open(os.path.join(archive["images"], records(archive)[image_id]["path"]), "rb") as f:
        return f.read()


def expected_ranking(archive, image_id):
    """(distances, ids) of indexed image ``image_id`` against all codes, from the unpacked bits, stable."""
    codes = reference_packed_codes(archive["weights"], archive["images"])
    bits = np.unpackbits(codes, axis=1)
    distances = (bits != bits[image_id]).sum(1)
    order = np.argsort(distances, kind="stable")
    return distances[order].tolist(), order.tolist()


def test_health_reports_count_and_bits(port):
    status, content_type, body = request(port, "GET", "/api/health")
    assert status == 200 and content_type.startswith("application/json")
    assert json.loads(body) == {"status": "ok", "count": 12, "nbits": 16}


def test_the_page_is_self_contained_with_the_form_and_the_fetch(port):
    status, content_type, body = request(port, "GET", "/")
    page = body.decode("utf-8")
    assert status == 200 and content_type.startswith("text/html")
    assert "<form" in page and 'type="file"' in page and 'id="k"' in page
    assert 'fetch("/api/search?k="' in page and 'method: "POST"' in page
    assert '"drop"' in page and "dataTransfer.files" in page  # drag and drop
    assert '"/images/" + r.id' in page and "r.distance" in page and "r.labels" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and 'src="' not in page
    assert "12 indexed images" in page


@pytest.mark.parametrize("image_id", [0, 7])
def test_search_of_an_indexed_image_returns_itself_first_at_distance_0(archive, port, image_id):
    status, _, body = request(port, "POST", "/api/search?k=12", body=image_bytes(archive, image_id))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["k"] == 12 and answer["nbits"] == 16
    distances, ids = expected_ranking(archive, image_id)
    assert [r["id"] for r in answer["results"]] == ids
    assert [r["distance"] for r in answer["results"]] == distances
    first = answer["results"][0]
    assert first["distance"] == 0
    if distances.count(0) == 1:
        assert first["id"] == image_id
    mine = next(r for r in answer["results"] if r["id"] == image_id)
    assert mine["distance"] == 0 and mine["path"] == records(archive)[image_id]["path"]
    assert mine["labels"] == records(archive)[image_id]["labels"]


def test_k_beyond_the_index_returns_all_and_k_defaults_to_10(archive, port):
    status, _, body = request(port, "POST", f"/api/search?k={MAX_K}", body=image_bytes(archive, 0))
    assert status == 200 and json.loads(body)["k"] == 12
    status, _, body = request(port, "POST", "/api/search", body=image_bytes(archive, 0))
    assert status == 200 and len(json.loads(body)["results"]) == 10


@pytest.mark.parametrize("k", ["0", "-1", "abc", "2.5", "", str(MAX_K + 1), "3&k=4"])
def test_a_bad_k_is_400(archive, port, k):
    status, _, body = request(port, "POST", f"/api/search?k={k}", body=image_bytes(archive, 0))
    assert status == 400 and "k must be" in json.loads(body)["error"]


def test_bytes_that_are_not_an_image_are_400(archive, port):
    status, content_type, body = request(port, "POST", "/api/search?k=3", body=b"GIF89a but not really" * 10)
    assert status == 400 and content_type.startswith("application/json")
    assert "not a readable image" in json.loads(body)["error"]
    truncated = image_bytes(archive, 0)[:200]
    status, _, body = request(port, "POST", "/api/search?k=3", body=truncated)
    assert status == 400 and "not a readable image" in json.loads(body)["error"]


def test_an_announced_oversize_upload_is_413_without_sending_it(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", "/api/search?k=3")
        conn.putheader("Content-Length", str(10**12))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_an_upload_over_the_limit_is_413(archive, small_limit_port):
    body = image_bytes(archive, 0)
    assert len(body) > 1000
    status, _, answer = request(small_limit_port, "POST", "/api/search?k=3", body=body + bytes(5000))
    assert status == 413 and "limit of 1000" in json.loads(answer)["error"]


def test_an_upload_without_content_length_is_411(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", "/api/search?k=3")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_images_are_served_by_id_with_the_indexed_bytes(archive, port):
    status, content_type, body = request(port, "GET", "/images/3")
    assert status == 200 and content_type == "image/png" and body == image_bytes(archive, 3)


def test_a_tiff_image_is_served_as_png(port, searcher, tmp_path, monkeypatch):
    tiff = tmp_path / "tile.tif"
    Image.new("RGB", (9, 7), (10, 200, 30)).save(tiff)
    monkeypatch.setattr(searcher, "image_path", lambda image_id: str(tiff))
    status, content_type, body = request(port, "GET", "/images/1")
    assert status == 200 and content_type == "image/png"
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "PNG" and image.size == (9, 7) and image.getpixel((0, 0)) == (10, 200, 30)


@pytest.mark.parametrize(
    "target",
    [
        "/images/../../etc/passwd",
        "/images/%2e%2e/",
        "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/images/-1",
        "/images/12",
        "/images/99999999",
        "/images/1.0",
        "/images/",
        "/images/0/../../README.md",
        "/../README.md",
        "/README.md",
        "//etc/passwd",
        "/api/search",
        "/" + os.path.join(REPO_ROOT, "README.md").lstrip("/"),
    ],
)
def test_anything_but_an_indexed_id_is_4xx(port, target):
    status, _, body = request(port, "GET", target)
    assert 400 <= status < 500 and b"root:" not in body and b"SDSH" not in body


def test_post_elsewhere_is_404(archive, port):
    status, _, _ = request(port, "POST", "/images/0", body=image_bytes(archive, 0))
    assert status == 404


def test_eight_concurrent_searches_are_all_correct(archive, port):
    ids = [0, 1, 2, 5, 6, 8, 10, 11]
    bodies = {i: image_bytes(archive, i) for i in ids}

    def one(image_id):
        status, _, body = request(port, "POST", "/api/search?k=12", body=bodies[image_id])
        return image_id, status, json.loads(body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, ids))
    for image_id, status, answer in answers:
        assert status == 200
        distances, order = expected_ranking(archive, image_id)
        assert [r["id"] for r in answer["results"]] == order
        assert [r["distance"] for r in answer["results"]] == distances


def test_loopback_hosts_and_the_warning_for_others(searcher, caplog):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        make_server(searcher, "127.0.0.1", 0).server_close()
        assert not caplog.records
        make_server(searcher, "0.0.0.0", 0).server_close()
    assert any("binding 0.0.0.0" in r.getMessage() for r in caplog.records)


def test_the_serve_command_prints_its_port_and_answers(archive):
    """``python -m dinov2.search serve --port 0`` picks a free port, prints it and serves on 127.0.0.1."""
    proc = subprocess.Popen(
        [PYTHON, *INDEX_COMMAND, "serve", "--index", str(archive["index"]), "--port", "0", "--device", "cpu"],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # log lines (also on standard output) come first
            lines.append(line)
            if line.startswith("serving ") or len(lines) > 50:
                break
        assert line.startswith("serving 12 images on http://127.0.0.1:"), lines
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        status, _, body = request(port, "GET", "/api/health")
        assert status == 200 and json.loads(body)["count"] == 12
        status, _, body = request(port, "POST", "/api/search?k=1", body=image_bytes(archive, 0))
        assert status == 200 and json.loads(body)["results"][0]["distance"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
