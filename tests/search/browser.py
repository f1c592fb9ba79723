"""A headless Chromium driven through its DevTools protocol (websocket-client), for the page's test.

Only what the test needs: open a page, evaluate JavaScript, set a file input, take a screenshot. The
browser listens on a loopback port it picks itself (``--remote-debugging-port=0``), written to
``DevToolsActivePort`` in its profile folder.
"""

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from typing import Any, Dict, Optional

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> Optional[str]:
    """``SDSH_CHROMIUM``, or the first Chromium on PATH; None when there is none."""
    explicit = os.environ.get("SDSH_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((path for path in map(shutil.which, BROWSER_NAMES) if path), None)


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    """One headless browser with one page (a DevTools session on it)."""

    def __init__(self, binary: str, profile_dir: str, width: int = 900, height: int = 700, timeout: float = 60.0):
        import websocket

        self.timeout = timeout
        self._ids = itertools.count(1)
        self.log_path = os.path.join(profile_dir, "chromium.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # the tests may run as root in a container
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile_dir}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            port, path = self._wait_for_port(os.path.join(profile_dir, "DevToolsActivePort"))
            self.socket = websocket.create_connection(
                f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True
            )
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session=True,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except Exception:
            self.close()
            raise

    def _wait_for_port(self, port_file: str):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode}: {self.log()}")
            if os.path.isfile(port_file):
                lines = open(port_file).read().split()
                if len(lines) >= 2:
                    return int(lines[0]), lines[1]
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port within {self.timeout} s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-2000:]

    def call(self, method: str, session: bool = False, **params) -> Dict[str, Any]:
        """Send one command (to the page's session with ``session``) and return its result."""
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:  # events arrive in between; only the answer to this id matters
            answer = json.loads(self.socket.recv())
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete' && location.href.startsWith(" + json.dumps(url) + ")")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        """Evaluate ``expression`` until it is truthy; its value, or BrowserError after the timeout."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"still false after {self.timeout} s: {expression}")

    def set_file(self, selector: str, path: str) -> None:
        """Choose ``path`` in the file input ``selector`` (the page sees a change event, as from a user)."""
        root = self.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise BrowserError(f"no element {selector}")
        self.call("DOM.setFileInputFiles", session=True, nodeId=node, files=[os.path.abspath(path)])

    def screenshot(self, path: str) -> str:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            try:
                self.call("Browser.close")
            except Exception:
                pass
            socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
