"""Open a page in headless Chromium and report what a user's browser would do with it.

Talks the DevTools protocol over a pipe (--remote-debugging-pipe: the browser reads commands from
fd 3 and writes replies and events to fd 4, each a JSON text ended by a NUL byte), so it needs no
websocket client and no TCP port that parallel test runs could fight over. One browser, one page:
console messages, uncaught exceptions, log entries (CSP violations, failed loads) and every network
request are collected while the page loads, then it is screenshot at each width asked for.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]


@dataclass
class Visit:
    """What opening a page did."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, error log entries
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    text: str = ""  # document.body.innerText
    images: list[bool] = field(default_factory=list)  # per <img>: decoded to a non-empty image
    screenshots: dict[int, bytes] = field(default_factory=dict)  # width -> PNG
    page_widths: dict[int, int] = field(default_factory=dict)  # width -> document scroll width


class Browser:
    def __init__(self, profile: Path, timeout: float = 30.0):
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # The child needs them as fds 3 and 4; moved above 10 first so dup2 cannot clobber them,
        # close-on-exec so only the dup2 copies reach the browser.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_read, replies_write)]
        os.close(commands_read)
        os.close(replies_write)

        def as_3_and_4() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=as_3_and_4,
                                        # not pass_fds=(3, 4): the parent may have no fd 3 to
                                        # pass; Python's own fds are not inheritable (PEP 446).
                                        close_fds=False)
        for fd in high:
            os.close(fd)
        self.deadline = time.monotonic() + timeout
        self._buffer, self._next, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its reply; events arriving meanwhile go to `events`."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._receive())

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


def visit(page: Path, profile: Path, widths: tuple[int, ...] = (1280, 390)) -> Visit:
    """Open `page` (a file) and collect what happened; screenshots at each viewport width."""
    browser = Browser(profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        seen = Visit()

        def evaluate(expression: str):
            return browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                session=session)["result"]["value"]

        seen.text = evaluate("document.body.innerText")
        seen.images = evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        for width in widths:
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": 1400, "deviceScaleFactor": 1, "mobile": width < 600},
                         session=session)
            seen.page_widths[width] = evaluate("document.documentElement.scrollWidth")
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
            seen.screenshots[width] = base64.b64decode(shot["data"])
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                seen.errors.append(f"console: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                seen.errors.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                seen.errors.append(f"log: {params['entry'].get('text')}")
            elif method == "Network.requestWillBeSent":
                seen.requests.append(params["request"]["url"])
        return seen
    finally:
        browser.close()
