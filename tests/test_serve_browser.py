"""The search page in a real browser: Debian's headless Chromium driven by Playwright.

A server on a free loopback port; type a query, see the tiles, click one for similar images,
pick a file to search by image, and screenshot the page (SERVE_SCREENSHOT=path keeps a copy);
the URL keeps each search, so Back, Forward and a shared link show it again.
"""

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest
import uvicorn

from dinov2clip.config import UseOptions
from dinov2clip.index import build_index
from dinov2clip.serve import SearchEngine, create_app
from tests.conftest import write_shape_classes

# Debian's, found as scripts/test-deps.sh finds it (make test installs it when missing).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextlib.contextmanager
def running_server(app):
    """uvicorn in a thread on a socket already bound to a free 127.0.0.1 port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def site(demo_run, tmp_path_factory):
    _, art = demo_run
    root = write_shape_classes(tmp_path_factory.mktemp("web") / "photos", per_class=6,
                               classes=("circle", "square", "triangle", "star"), size=128)
    out = root.parent / "index"
    build_index(run=art / "runs" / "demo", images=root, out_dir=out,
                options=UseOptions(device="cpu", num_workers=0))
    with running_server(create_app(SearchEngine(out, device="cpu"))) as url:
        yield url, root


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), f"{CHROMIUM} missing: run make test-deps"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(site, browser):
    """A fresh tab on the page, as a user opens it."""
    tab = browser.new_page(viewport={"width": 1200, "height": 800})
    tab.goto(site[0])
    yield tab
    tab.close()


def loaded_tiles(page) -> int:
    return page.evaluate("""() => [...document.querySelectorAll('figure.tile img')]
                              .filter(i => i.complete && i.naturalWidth > 0).length""")


def test_type_a_query_click_a_tile_search_by_file_and_screenshot(site, page, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#serving")).to_contain_text("24 images (flat)")
    expect(page.locator("#serving")).to_contain_text("runs/demo")
    page.fill("#k", "8")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    expect(page.locator("figure.tile")).to_have_count(8)
    expect(page.locator("#status")).to_contain_text('8 results for "a red circle"')
    page.wait_for_function("() => [...document.querySelectorAll('figure.tile img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert loaded_tiles(page) == 8
    first = page.locator("figure.tile").first
    assert first.locator(".score").inner_text().startswith("#1 ")

    clicked = int(page.locator("figure.tile").nth(2).get_attribute("data-id"))
    page.locator("figure.tile img").nth(2).click()
    expect(page.locator("#status")).to_contain_text(f"results for image {clicked}")
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator("figure.tile")).to_have_count(8)
    ids = [int(x) for x in page.locator("figure.tile").evaluate_all(
        "tiles => tiles.map(t => t.dataset.id)")]
    assert clicked not in ids  # "more like this" leaves the image itself out
    page.wait_for_function("() => [...document.querySelectorAll('figure.tile img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("SERVE_SCREENSHOT"):
        shutil.copy(shot, os.environ["SERVE_SCREENSHOT"])

    _, root = site
    page.set_input_files("#file", str(root / "star" / "3.png"))
    expect(page.locator("#status")).to_contain_text("results for 3.png")
    top = page.locator("figure.tile").first
    assert top.locator("a").inner_text() == "star/3.png"  # the picked image is its own best match


def test_errors_show_on_the_page(page):
    from playwright.sync_api import expect

    page.fill("#k", "8")
    page.fill("#query", "   ")
    page.press("#query", "Enter")
    expect(page.locator("#status.error")).to_contain_text("empty query")


def tile_ids(page) -> list[int]:
    return [int(x) for x in page.locator("figure.tile").evaluate_all(
        "tiles => tiles.map(t => t.dataset.id)")]


def test_the_url_keeps_each_search_so_back_and_a_shared_link_show_it_again(site, page):
    from playwright.sync_api import expect

    url, status = site[0], page.locator("#status")
    expect(page.locator("#status.hint")).to_contain_text("press Enter")  # an empty page
    expect(page.locator("figure.tile")).to_have_count(0)
    page.fill("#k", "6")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    expect(status).to_contain_text('6 results for "a red circle"')
    assert page.url == f"{url}/?q=a+red+circle"
    by_text = tile_ids(page)

    clicked = by_text[1]
    page.locator("figure.tile img").nth(1).click()
    expect(status).to_contain_text(f"results for image {clicked}")
    assert page.url == f"{url}/?similar={clicked}"
    expect(page.locator("#query")).to_have_value("")  # the text no longer says what is shown
    by_image = tile_ids(page)
    assert by_image != by_text and clicked not in by_image

    page.go_back()  # popstate: the text search runs again
    expect(status).to_contain_text('6 results for "a red circle"')
    expect(page.locator("#query")).to_have_value("a red circle")
    expect(page.locator("#query-image")).to_be_hidden()
    assert page.url == f"{url}/?q=a+red+circle" and tile_ids(page) == by_text
    page.go_forward()
    expect(status).to_contain_text(f"results for image {clicked}")
    assert tile_ids(page) == by_image
    page.go_back()
    page.go_back()  # the page as first opened
    expect(page.locator("#status.hint")).to_contain_text("press Enter")
    expect(page.locator("figure.tile")).to_have_count(0)
    expect(page.locator("#query")).to_have_value("")

    page.goto(f"{url}/?q=circle")  # a shared link runs its search
    expect(status).to_contain_text('24 results for "circle"')
    expect(page.locator("#query")).to_have_value("circle")
    answer = page.request.get(f"{url}/api/search?q=circle&k=24").json()
    assert tile_ids(page) == [hit["id"] for hit in answer["results"]]
    page.goto(f"{url}/?similar={clicked}")
    expect(status).to_contain_text(f"results for image {clicked}")


PIXELS = """img => {  // the tile's image as the browser decoded it, at its natural size
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return {src: img.src, size: [c.width, c.height],
            data: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
}"""


def wait_loaded(page, index: int, src_part: str) -> None:
    page.wait_for_function(
        """([i, part]) => { const img = document.querySelectorAll('figure.tile img')[i];
                            return img.src.includes(part) && img.complete &&
                                   img.naturalWidth > 0; }""", arg=[index, src_part])


def test_where_shows_the_query_s_heatmap_over_a_text_result(site, page):
    from playwright.sync_api import expect

    page.fill("#k", "4")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    expect(page.locator("figure.tile")).to_have_count(4)
    expect(page.locator("#head")).to_be_visible()  # the demo run has a learned head too
    wait_loaded(page, 0, "/api/image/")
    tile_img = page.locator("figure.tile img").first
    thumb = tile_img.evaluate(PIXELS)

    toggle = page.locator("figure.tile button.where").first
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    wait_loaded(page, 0, "/api/heatmap")
    heat = tile_img.evaluate(PIXELS)
    image_id = page.locator("figure.tile").first.get_attribute("data-id")
    assert f"id={image_id}" in heat["src"] and "q=a+red+circle" in heat["src"]
    assert "head=projector" in heat["src"] and heat["size"] == thumb["size"]
    diff = sum(abs(a - b) for a, b in zip(heat["data"], thumb["data"], strict=True))
    assert diff / len(thumb["data"]) > 10, "the heatmap looks like the thumbnail"

    toggle.click()  # and back to the thumbnail
    expect(toggle).to_have_attribute("aria-pressed", "false")
    wait_loaded(page, 0, "/api/image/")

    page.select_option("#head", "talk2dino")
    page.locator("figure.tile button.where").nth(1).click()
    wait_loaded(page, 1, "head=talk2dino")

    page.locator("figure.tile img").nth(2).click()  # similar images: no text, no "where?"
    expect(page.locator("#status")).to_contain_text("results for image")
    expect(page.locator("figure.tile button.where")).to_have_count(0)
