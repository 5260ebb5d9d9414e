"""The playground page at /: served light, and used for real in headless Chromium.

The browser is Debian's ``chromium`` (``apt-get install -y chromium``) or Google Chrome, driven
over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no driver, no port, stdlib.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from PIL import Image

from serve_app import playground


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


def _above_9(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Chromium:
    """Headless Chromium with the DevTools protocol over fds 3 (commands in) and 4 (out)."""

    def __init__(self, executable: str, profile: str, log: str):
        commands_r, self._commands_w = os.pipe()
        self._events_r, events_w = os.pipe()
        # Move the child's ends above 9 (bash, not dash, takes such fds), so "3<&a 4>&b" cannot
        # overwrite one with the other.
        commands_r, events_w = (_above_9(fd) for fd in (commands_r, events_w))
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1000,900",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
        ]
        script = f'exec "$0" "$@" 3<&{commands_r} 4>&{events_w}'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, executable, *flags, "about:blank"],
            pass_fds=(commands_r, events_w),
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115 - the child holds it; read on failure
        )
        self.log = log
        os.close(commands_r)
        os.close(events_w)
        self._buffer = b""
        self._next_id = 0
        self.session = None

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._events_r, 65536)
            if not chunk:
                with open(self.log, errors="replace") as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"chromium closed the DevTools pipe; its log ends:\n{tail}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._commands_w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open_page(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('generate')")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"not true within {timeout_s:g} s: {expression}")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre, as a person would."""
        x, y = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            os.close(self._commands_w)
            os.close(self._events_r)


@pytest.fixture
def browser(tmp_path):
    # Debian's chromium here; GitHub's Ubuntu runners ship google-chrome (their chromium is a snap).
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    executable = next(filter(None, map(shutil.which, names)), None)
    if executable is None:
        pytest.skip("no Chromium: apt-get install -y --no-install-recommends chromium")
    chromium = Chromium(executable, str(tmp_path / "profile"), str(tmp_path / "chromium.log"))
    yield chromium
    chromium.close()


@pytest.mark.integration
@pytest.mark.slow
def test_generate_in_the_browser(server, browser, tmp_path):
    browser.open_page(server.url + "/")
    browser.evaluate(
        "document.getElementById('prompt').value = 'a lighthouse at dusk';"
        "document.getElementById('size').value = '256';"
        "document.getElementById('seed').value = '42';"
    )
    browser.click("#generate")
    browser.wait_for("document.getElementById('status').textContent === 'done'")
    assert browser.evaluate("document.getElementById('image').naturalWidth") == 256
    timings = browser.evaluate("document.getElementById('timings').innerText")
    assert "inference" in timings and "seed\t42" in timings
    assert browser.evaluate("document.querySelectorAll('#history figure').length") == 1

    browser.evaluate("document.getElementById('seed').value = '7'")
    browser.click("#generate")
    browser.wait_for("document.querySelectorAll('#history figure').length === 2")
    captions = browser.evaluate(
        "[...document.querySelectorAll('#history figcaption')].map(c => c.textContent)"
    )
    assert captions == ["a lighthouse at dusk (seed 7)", "a lighthouse at dusk (seed 42)"]
    assert browser.evaluate("document.getElementById('error').textContent") == ""

    shot = browser.screenshot()
    (tmp_path / "playground.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot))
    assert image.size[0] == 1000 and image.size[1] > 500
    assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
