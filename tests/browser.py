"""Load a page in a real headless Chromium over the DevTools protocol (on a pipe: no port, no extra package).

`load_page(path, script)` returns the console errors and uncaught exceptions the page raised while loading,
and the value of `script` (a JavaScript expression returning JSON-able data) evaluated after the load event.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    value: Any = None


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, proc: subprocess.Popen[bytes]) -> None:
        self.write_fd, self.read_fd, self.proc = write_fd, read_fd, proc
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(raw)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read_message(deadline))
            except TimeoutError:
                return


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(
                "console: "
                + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append("log: " + params["entry"].get("text", ""))
    return found


def load_page(
    path: Path,
    script: str,
    after_load: str | None = None,
    screenshot: Path | None = None,
    viewport: tuple[int, int] = (1280, 800),
) -> PageResult:
    """Open file://path at `viewport` (width, height), wait for its load event, then evaluate `script`;
    `after_load` runs first (a probe). With `screenshot`, the viewport then grows to the page's full height
    (same width), the script runs, and the whole page is written there as PNG: the script's page coordinates
    are the image's pixels."""
    chrome = find_chromium()
    assert chrome is not None
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    # Chromium reads commands on fd 3 and writes replies on fd 4: move our ends there in the child.
    high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 20)
    high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 20)

    def child_fds() -> None:
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    # A renderer may still be flushing its profile as the browser exits: do not fail the test over it.
    with tempfile.TemporaryDirectory(
        prefix="modinspect-chromium-", ignore_cleanup_errors=True
    ) as profile:
        proc = subprocess.Popen(
            [chrome, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,
            pass_fds=(3, 4),
            start_new_session=True,
        )
        for fd in (to_chrome_r, from_chrome_w, high_r, high_w):
            os.close(fd)
        pipe = _Pipe(to_chrome_w, from_chrome_r, proc)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                pipe.call(domain, session=session)
            width, height = viewport
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.events.clear()
            pipe.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired")
            if after_load:
                pipe.call("Runtime.evaluate", {"expression": after_load}, session=session)
            pipe.drain(0.5)
            if screenshot is not None:
                # The whole page in one image: the viewport grown to the page's height (at the same width),
                # so the script's coordinates and the image's are the same layout.
                full = pipe.call(
                    "Runtime.evaluate",
                    {"expression": "document.documentElement.scrollHeight", "returnByValue": True},
                    session=session,
                )["result"]["value"]
                pipe.call(
                    "Emulation.setDeviceMetricsOverride",
                    {
                        "width": width,
                        "height": max(height, int(full)),
                        "deviceScaleFactor": 1,
                        "mobile": False,
                    },
                    session=session,
                )
                pipe.drain(0.3)
            result = pipe.call(
                "Runtime.evaluate", {"expression": script, "returnByValue": True}, session=session
            )
            if screenshot is not None:
                shot = pipe.call(
                    "Page.captureScreenshot",
                    {"format": "png"},
                    session=session,
                    timeout=60,
                )
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            return PageResult(errors=_errors(pipe.events), value=result["result"].get("value"))
        finally:
            # Browser.close lets Chromium take its renderer and zygote processes down with it; kill only
            # what we started, by its process group, if it does not go.
            with contextlib.suppress(Exception):
                pipe.call("Browser.close", timeout=10)
            os.close(to_chrome_w)
            os.close(from_chrome_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
