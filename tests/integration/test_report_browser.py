"""The release report looked at in a real browser: headless Chromium (Debian's `chromium`, which `make setup`
installs) opens the page over the Chrome DevTools Protocol; any console error or a plot drawn blank fails the test,
the first screen at 1280x800 must hold identity, gates and plots without overlap, and its screenshot is kept in
build/test-output/report/ for review."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from release.report.gather import gather
from release.report.render import write
from tests.unit.test_report_gather import story_context
from tests.workspace import Workspace

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "build" / "test-output" / "report"
CHROMIUM = next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)
WIDTH, HEIGHT = 1280, 800
FIRST_SCREEN = ("identity", "gates", "glance", "block-roc", "block-confusion", "block-losses")

# Every drawn plot: its traces, the points they hold, the marks drawn in its SVG, and its title's and legend's
# boxes; the first screen's cards with their boxes.
PAGE_STATE = """(() => {
  const box = (el) => { if (!el) return null; const r = el.getBoundingClientRect();
    return {x: r.left, y: r.top, w: r.width, h: r.height,
            spills: el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1}; };
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot')).map((gd) => ({
    id: gd.id,
    traces: (gd._fullData || []).length,
    points: (gd._fullData || []).reduce((n, t) => n + ((t.x || t.z || t.y || []).length || 0), 0),
    marks: gd.querySelectorAll('.cartesianlayer .trace path, .cartesianlayer .hm image').length,
    title: box(gd.querySelector('.gtitle')),
    legend: box(gd.querySelector('.legend')),
    size: box(gd),
  }));
  const cards = Object.fromEntries(CARDS.map((id) => [id, box(document.getElementById(id))]));
  return JSON.stringify({plots, cards});
})()""".replace("CARDS", json.dumps(list(FIRST_SCREEN)))


class DevTools:
    """A Chrome DevTools Protocol session with one page: commands, and the console's errors collected."""

    def __init__(self, websocket_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(websocket_url, max_size=None, open_timeout=10)
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.events: list[str] = []

    def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        """Send one command; collect the events that arrive until its answer."""
        number = next(self.ids)
        self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.note(message)

    def note(self, message: dict[str, Any]) -> None:
        """Keep every console error, uncaught exception and error log entry; remember other events' names."""
        method, params = message.get("method", ""), message.get("params", {})
        self.events.append(method)
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")

    def wait_for(self, event: str, timeout: float = 15.0) -> None:
        """Read events until ``event`` arrives (or it already did)."""
        deadline = time.monotonic() + timeout
        while event not in self.events:
            self.note(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """Headless Chromium on a free port with a throwaway profile, and a DevTools session on its blank page."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (`make setup` installs Debian's chromium: scripts/install_debs.sh)")
    profile = tmp_path / "profile"
    argv = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
        "--disable-extensions", "--disable-background-networking", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}", "about:blank",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = devtools_port(profile, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:  # noqa: S310
            page = next(t for t in json.load(answer) if t.get("type") == "page")
        session = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield session
        finally:
            session.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """The port Chromium chose, from the DevToolsActivePort file it writes into its profile."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited {proc.returncode} before it listened")
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.05)
    raise AssertionError(f"chromium wrote no {marker} within {timeout:g} s")


def look_at(browser: DevTools, page: Path, screenshot: Path) -> dict[str, Any]:
    """Open the page at 1280x800, wait for every plot, keep a screenshot of the first screen; the page's state."""
    for domain in ("Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    deadline = time.monotonic() + 10
    state = json.loads(browser.evaluate(PAGE_STATE))
    while any(p["marks"] == 0 for p in state["plots"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        state = json.loads(browser.evaluate(PAGE_STATE))
    shot = browser.call("Page.captureScreenshot", format="png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    return dict(state)


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


def check_page(browser: DevTools, state: dict[str, Any], plots: int) -> None:
    """No console error, no blank plot, the first screen's cards inside 1280x800 without overlap."""
    assert browser.errors == [], browser.errors
    assert len(state["plots"]) == plots, state["plots"]
    blank = [p["id"] for p in state["plots"] if not (p["traces"] and p["points"] and p["marks"])]
    assert blank == [], f"blank plots: {blank}: {state['plots']}"
    for p in state["plots"]:
        assert p["size"]["w"] > 200 and p["size"]["h"] > 200, p
        if p["title"] and p["legend"]:
            assert not overlaps(p["title"], p["legend"]), f"{p['id']}: title and legend overlap"
    cards = state["cards"]
    assert all(cards[name] for name in FIRST_SCREEN), cards
    for name, card in cards.items():
        assert not card["spills"], f"{name}: its content spills out of its card"
        assert card["x"] >= 0 and card["x"] + card["w"] <= WIDTH and card["y"] + card["h"] <= HEIGHT, (name, card)
    for a, b in itertools.combinations(FIRST_SCREEN, 2):
        assert not overlaps(cards[a], cards[b]), f"{a} and {b} overlap on the first screen"


def test_a_full_release_story_reads_in_a_browser(browser: DevTools, tmp_path: Path) -> None:
    started = time.monotonic()
    page = write(gather(story_context(tmp_path / "ws"), "2"), tmp_path / "release_v2.html")
    state = look_at(browser, page, OUTPUT / "release_story_first_screen.png")
    check_page(browser, state, plots=7)
    assert time.monotonic() - started < 20


def test_the_report_after_the_pipeline_reads_in_a_browser(
    browser: DevTools, built_workspace: Workspace, tmp_path: Path
) -> None:
    """`mlrelease report` on a workspace where `dvc repro` ran (make demo): no canary yet, and it says so."""
    out = tmp_path / "release_v1.html"
    env = {**built_workspace.env, "MLRELEASE_PROGRESS": "log"}
    mlrelease = str(Path(sys.executable).with_name("mlrelease"))
    proc = subprocess.run(
        [mlrelease, "report", "--out", str(out)], cwd=built_workspace.root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "has had no canary yet" in out.read_text()
    state = look_at(browser, out, OUTPUT / "after_pipeline_first_screen.png")
    check_page(browser, state, plots=6)  # no canary: no canary plot
    assert os.path.getsize(out) > 3_000_000
