"""The search page in a real browser: headless Chromium over its DevTools protocol, against uvicorn on 127.0.0.1.

Skipped, with the reason printed, when there is no Chromium (Debian's ``chromium``; ``.ci/run`` installs it
when it can) or no websocket-client. ``SDSH_SCREENSHOT=path.png`` keeps a screenshot of the result page.
"""

import json
import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the service needs FastAPI (pip install 'sdsh[service]')")
pytest.importorskip("websocket", reason="the browser test drives Chromium with websocket-client (pip install 'sdsh[dev]')")

from dinov2.search.archive import ArchiveSearcher  # noqa: E402

from .browser import HeadlessChromium, find_chromium  # noqa: E402
from .conftest import start_server, stop_server  # noqa: E402

# The state of the page as the test reads it: tiles (id, distance, image decoded), status line, query preview.
PAGE_STATE = """(() => {
  const status = document.getElementById("status");
  return {
    tiles: [...document.querySelectorAll("#grid .tile")].map((t) => ({
      id: Number(t.dataset.id), distance: Number(t.dataset.distance),
      loaded: t.querySelector("img").complete && t.querySelector("img").naturalWidth > 0,
    })),
    status: status.textContent, statusClass: status.className, statusColour: getComputedStyle(status).color,
    queryImages: document.querySelectorAll("#query img").length,
    brokenImages: [...document.images].filter((i) => i.complete && i.naturalWidth === 0).length,
    info: document.getElementById("info").textContent,
  };
})()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set SDSH_CHROMIUM): the page is not tested in a browser")
    chromium = HeadlessChromium(binary, str(tmp_path_factory.mktemp("chromium-profile")))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def page_url(archive):
    searcher = ArchiveSearcher(str(archive["index"]), device="cpu")
    server, thread, port = start_server(searcher)
    yield f"http://127.0.0.1:{port}/"
    stop_server(server, thread)


def state(browser):
    return browser.evaluate(PAGE_STATE)


def test_choosing_an_indexed_image_shows_k_tiles_with_itself_first_at_distance_0(browser, page_url, archive, tmp_path):
    browser.open(page_url)
    browser.wait_for("document.getElementById('info').textContent.includes('12 indexed images')")
    browser.evaluate("document.getElementById('k').value = '6'")
    record = json.loads((archive["index"] / "files.jsonl").read_text().splitlines()[7])
    browser.set_file("#file", os.path.join(archive["images"], record["path"]))
    browser.wait_for("document.querySelectorAll('#grid .tile').length === 6")
    browser.wait_for("[...document.querySelectorAll('#grid img')].every((i) => i.complete)")
    seen = state(browser)
    assert [tile["distance"] for tile in seen["tiles"]] == sorted(tile["distance"] for tile in seen["tiles"])
    first = seen["tiles"][0]
    # Ties are broken by id (the protocol), so the query comes first unless another code equals its own.
    ties = [t["id"] for t in seen["tiles"] if t["distance"] == 0]
    assert first["distance"] == 0 and 7 in ties and (first["id"] == 7 or len(ties) > 1)
    assert all(tile["loaded"] for tile in seen["tiles"]) and seen["brokenImages"] == 0
    assert seen["queryImages"] == 1 and seen["statusClass"] == "" and seen["status"].startswith("6 nearest")
    shot = browser.screenshot(str(tmp_path / "result.png"))
    assert open(shot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SDSH_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SDSH_SCREENSHOT"])


def test_a_file_that_is_not_an_image_shows_a_red_error_and_no_broken_image(browser, page_url, tmp_path):
    browser.open(page_url)
    browser.wait_for("document.getElementById('info').textContent.includes('indexed images')")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n" * 20)
    browser.set_file("#file", str(notes))
    browser.wait_for("document.getElementById('status').className === 'error'")
    seen = state(browser)
    assert "not a readable image" in seen["status"]
    assert seen["statusColour"] == "rgb(187, 0, 0)"  # #b00, not the grey of the plain status line
    assert seen["tiles"] == [] and seen["queryImages"] == 0 and seen["brokenImages"] == 0
