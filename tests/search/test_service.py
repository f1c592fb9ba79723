"""Tests of the archive search service (dinov2/search/service.py).

Behaviour goes through FastAPI's test client. What only shows on the wire goes through http.client to
uvicorn on a free port of 127.0.0.1: http.client sends the request target as written (no ``..``
normalisation, unlike the test client), so traversal attempts reach the server, and a length can be
announced without sending the body. One test starts ``python -m dinov2.search serve --port 0``.
"""

import http.client
import io
import json
import logging
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs FastAPI (pip install 'sdsh[service]')")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx (pip install 'sdsh[dev]')")

from fastapi.testclient import TestClient  # noqa: E402

from dinov2.search.archive import ArchiveSearcher  # noqa: E402
from dinov2.search.service import MAX_K, create_app, is_loopback, make_server  # noqa: E402

from ..reliability.conftest import PYTHON, REPO_ROOT, subprocess_env  # noqa: E402
from .conftest import reference_packed_codes, start_server, stop_server  # noqa: E402

# The command line as users run it: python -m dinov2.search
INDEX_COMMAND = ["-m", "dinov2.search"]


@pytest.fixture(scope="module")
def searcher(archive):
    return ArchiveSearcher(str(archive["index"]), device="cpu")


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def port(searcher):
    server, thread, port = start_server(searcher)
    yield port
    stop_server(server, thread)


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


# ---- behaviour, through the test client


def test_health_reports_count_and_bits(client):
    response = client.get("/api/health")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "ok", "count": 12, "nbits": 16}
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_is_a_static_file_with_its_script_and_no_external_resource(client):
    response = client.get("/")
    page = response.text
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<form" in page and 'type="file"' in page and 'id="k"' in page
    script = client.get("/static/search.js").text
    assert 'fetch("/api/search/upload?k="' in script and 'method: "POST"' in script and "FormData" in script
    assert '"drop"' in script and "dataTransfer.files" in script  # drag and drop
    assert '"/images/" + result.id' in script and "result.distance" in script and "result.labels" in script
    style = client.get("/static/search.css").text
    assert "#status.error" in style  # the error colour wins over the #status rule
    for text in (page, script, style):
        assert "http://" not in text and "https://" not in text


def test_the_openapi_description_lists_the_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/upload", "/api/health", "/images/{image_id}"} <= set(spec["paths"])
    upload = spec["paths"]["/api/search/upload"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert "application/octet-stream" in spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("image_id", [0, 7])
def test_search_of_an_indexed_image_returns_itself_first_at_distance_0(archive, client, image_id):
    response = client.post("/api/search?k=12", content=image_bytes(archive, image_id))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["k"] == 12 and answer["nbits"] == 16
    distances, ids = expected_ranking(archive, image_id)
    assert [r["id"] for r in answer["results"]] == ids
    assert [r["distance"] for r in answer["results"]] == distances
    assert answer["results"][0]["distance"] == 0
    if distances.count(0) == 1:
        assert answer["results"][0]["id"] == image_id
    mine = next(r for r in answer["results"] if r["id"] == image_id)
    assert mine["distance"] == 0 and mine["path"] == records(archive)[image_id]["path"]
    assert mine["labels"] == records(archive)[image_id]["labels"]


def test_a_multipart_upload_gives_the_same_answer_as_the_raw_body(archive, client):
    data = image_bytes(archive, 4)
    raw = client.post("/api/search?k=5", content=data).json()
    form = client.post("/api/search/upload?k=5", files={"file": ("tile.png", data, "image/png")})
    assert form.status_code == 200 and form.json() == raw
    missing = client.post("/api/search/upload?k=5", data={"other": "x"})
    assert missing.status_code == 400 and "file" in missing.json()["error"]


def test_k_beyond_the_index_returns_all_and_k_defaults_to_10(archive, client):
    assert client.post(f"/api/search?k={MAX_K}", content=image_bytes(archive, 0)).json()["k"] == 12
    assert len(client.post("/api/search", content=image_bytes(archive, 0)).json()["results"]) == 10


@pytest.mark.parametrize("k", ["0", "-1", "abc", "2.5", "", str(MAX_K + 1), "3&k=4", "99999999999999999999"])
@pytest.mark.parametrize("route", ["/api/search", "/api/search/upload"])
def test_a_bad_k_is_400(archive, client, k, route):
    if route.endswith("upload"):
        response = client.post(f"{route}?k={k}", files={"file": ("a.png", image_bytes(archive, 0), "image/png")})
    else:
        response = client.post(f"{route}?k={k}", content=image_bytes(archive, 0))
    assert response.status_code == 400 and "k must be" in response.json()["error"]


@pytest.mark.parametrize("route", ["/api/search", "/api/search/upload"])
def test_bytes_that_are_not_an_image_are_400(archive, client, route):
    for data in (b"GIF89a but not really" * 10, image_bytes(archive, 0)[:200]):
        if route.endswith("upload"):
            response = client.post(f"{route}?k=3", files={"file": ("notes.txt", data, "text/plain")})
        else:
            response = client.post(f"{route}?k=3", content=data)
        assert response.status_code == 400 and response.headers["content-type"].startswith("application/json")
        assert "not a readable image" in response.json()["error"]


def test_an_upload_over_the_limit_is_413_on_both_routes(archive, searcher):
    body = image_bytes(archive, 0)
    assert len(body) > 1000
    with TestClient(create_app(searcher, max_upload_bytes=1000)) as small:
        response = small.post("/api/search?k=3", content=body + bytes(5000))
        assert response.status_code == 413 and "limit of 1000" in response.json()["error"]
        response = small.post("/api/search/upload?k=3", files={"file": ("a.png", body + bytes(5000), "image/png")})
        assert response.status_code == 413


def test_images_are_served_by_id_with_the_indexed_bytes(archive, client):
    response = client.get("/images/3")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == image_bytes(archive, 3)


def test_a_tiff_image_is_served_as_png(client, searcher, tmp_path, monkeypatch):
    tiff = tmp_path / "tile.tif"
    Image.new("RGB", (9, 7), (10, 200, 30)).save(tiff)
    monkeypatch.setattr(searcher, "image_path", lambda image_id: str(tiff))
    response = client.get("/images/1")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG" and image.size == (9, 7) and image.getpixel((0, 0)) == (10, 200, 30)


def test_an_indexed_file_that_vanished_is_404_naming_only_its_id(client, searcher, tmp_path, monkeypatch):
    monkeypatch.setattr(searcher, "image_path", lambda image_id: str(tmp_path / "gone.png"))
    response = client.get("/images/2")
    assert response.status_code == 404 and response.json() == {"error": "image 2 is not available"}


def test_post_elsewhere_is_4xx(archive, client):
    assert client.post("/images/0", content=image_bytes(archive, 0)).status_code == 405
    assert client.post("/api/elsewhere", content=b"x").status_code == 404


# ---- on the wire, through uvicorn


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
        "/static/../service.py",
        "/static/%2e%2e/service.py",
        "/static/%2e%2e%2f%2e%2e%2f..%2fREADME.md",
        "/static/",
        "/" + os.path.join(REPO_ROOT, "README.md").lstrip("/"),
    ],
)
def test_anything_but_an_indexed_id_or_a_page_file_is_4xx(port, target):
    status, _, body = request(port, "GET", target)
    assert 400 <= status < 500 and b"root:" not in body and b"SDSH" not in body and b"import" not in body


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


def test_an_upload_over_the_limit_is_413_on_the_wire(archive, searcher):
    server, thread, small_port = start_server(searcher, max_upload_bytes=1000)
    try:
        status, _, answer = request(small_port, "POST", "/api/search?k=3", body=image_bytes(archive, 0) + bytes(50000))
        assert status == 413 and "limit of 1000" in json.loads(answer)["error"]
    finally:
        stop_server(server, thread)


def test_an_upload_without_content_length_is_411(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", "/api/search?k=3")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_a_stalled_upload_is_408(port, monkeypatch):
    from dinov2.search import service

    monkeypatch.setattr(service, "BODY_TIMEOUT_S", 0.5)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", "/api/search?k=3")
        conn.putheader("Content-Length", "1000")
        conn.endheaders()
        conn.send(b"\x89PNG" + bytes(10))  # then silence
        response = conn.getresponse()
        assert response.status == 408 and "no request data" in json.loads(response.read())["error"]
    finally:
        conn.close()


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
