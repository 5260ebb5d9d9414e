"""The playground page at /: served light, and used for real in headless Chromium.

The browser is Debian's ``chromium`` (``apt-get install -y chromium``) or Google Chrome, driven
by Playwright (its Python package; its own browser download is not needed).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from playwright.sync_api import expect

from serve_app.api import playground


def test_page_is_served_with_its_controls():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.include_router(playground.router)
    response = TestClient(app).get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for marker in ('id="prompt"', 'id="generate"', 'id="steps"', 'id="seed"', 'id="history"'):
        assert marker in response.text
    assert 'fetch("predict"' in response.text
    assert "http://" not in response.text and "https://" not in response.text  # self-contained


def test_playground_imports_no_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {playground.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Chromium here has no network beyond loopback: without these it retries Google's hosts.
QUIET = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def page():
    """A page in the system's Chromium (Debian's package here), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    # Debian's chromium here; GitHub's Ubuntu runners ship google-chrome (their chromium is a snap).
    executable = next(filter(None, map(shutil.which, CHROMIUM)), None)
    if executable is None:
        message = "no Chromium: apt-get install -y --no-install-recommends chromium"
        if os.environ.get("CI_REQUIRE_ALL_TESTS") == "1":  # CI: never a silent skip
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=QUIET)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        yield page
        browser.close()


@pytest.mark.integration
@pytest.mark.slow
def test_generate_in_the_browser(server, page, tmp_path):
    page.goto(server.url + "/")
    page.fill("#prompt", "a lighthouse at dusk")
    page.select_option("#size", "256")
    page.fill("#seed", "42")
    page.click("#generate")
    expect(page.locator("#status")).to_have_text("done", timeout=60_000)
    assert page.eval_on_selector("#image", "img => img.naturalWidth") == 256
    timings = page.inner_text("#timings")
    assert "inference" in timings and "seed\t42" in timings
    expect(page.locator("#history figure")).to_have_count(1)

    page.fill("#seed", "7")
    page.click("#generate")
    expect(page.locator("#history figure")).to_have_count(2, timeout=60_000)
    captions = page.locator("#history figcaption").all_inner_texts()
    assert captions == ["a lighthouse at dusk (seed 7)", "a lighthouse at dusk (seed 42)"]
    assert page.inner_text("#error") == ""

    shot = page.screenshot()
    (tmp_path / "playground.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot))
    assert image.size == (1000, 900)
    assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


@pytest.mark.integration
@pytest.mark.slow
def test_an_error_from_the_server_is_shown_not_swallowed(server, page):
    page.goto(server.url + "/")
    page.fill("#prompt", "   ")  # blank: the server answers 422
    page.evaluate("document.getElementById('prompt').removeAttribute('required')")
    page.click("#generate")
    expect(page.locator("#status")).to_have_text("failed", timeout=30_000)
    assert "prompt" in page.inner_text("#error")


@pytest.mark.integration
@pytest.mark.slow
def test_an_input_image_makes_it_image_to_image(server, page, tmp_path):
    sketch = tmp_path / "sketch.png"
    Image.linear_gradient("L").convert("RGB").save(sketch)
    page.goto(server.url + "/")
    page.select_option("#size", "256")
    page.set_input_files("#input-file", str(sketch))
    expect(page.locator("#input-preview")).to_be_visible()
    assert page.input_value("#steps") == "2"  # 1 step at strength 0.5 would run none
    with page.expect_request("**/predict") as sent:
        page.click("#generate")
    body = sent.value.post_data_json
    assert body["strength"] == 0.5 and len(body["image"]) > 100
    expect(page.locator("#status")).to_have_text("done", timeout=60_000)
    assert page.eval_on_selector("#image", "img => img.naturalWidth") == 256
    assert page.inner_text("#error") == ""
