"""The documentation site in a real browser.

Builds the site with ``mkdocs build --strict`` (as ``make docs`` does), serves it on 127.0.0.1
and drives headless Chromium (Debian's ``chromium``) over the Chrome DevTools Protocol: every
page of the navigation answers and renders its heading, no page asks for anything outside the
local server (the site works offline), the architecture diagram is drawn, clicking through the
navigation works, and the offline search finds a page. Screenshots are kept in the test's tmp
dir and in ``docs/_artifacts/`` (ignored by git).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import REPO_ROOT

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "docs" / "_artifacts"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--window-size=1280,1600",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
# Page path -> the heading it must show.
EXPECTED_HEADINGS = {
    "": "Garbage classifier",
    "quickstart/": "Quickstart: from a clone to a served model",
    "architecture/": "Architecture",
    "how-to/canary-and-rollback/": "Canary and roll back",
    "how-to/read-a-drift-report/": "Read a drift report",
    "operations/serving/": "Serving: the KServe model server",
    "runbooks/GarbageDataDrift/": "GarbageDataDrift",
    "reference/cli/": "Command line: garbage",
    "reference/config/": "Configuration reference",
    "reference/api/serving/": "serving",
    "contributing/": "Contributing",
}
DIAGRAM_STAGES = (
    "KFP pipeline",
    "MLflow model registry",
    "InferenceService",
    "payload logger",
    "collector",
    "drift job",
    "alerts",
)


# --- the site and its server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built like ``make docs`` does (strict: a broken link fails)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return out


class _Handler(SimpleHTTPRequestHandler):
    """Serves the site; remembers every request's path and status."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """The built site over HTTP on 127.0.0.1: its base URL and the request log."""
    log: list[tuple[str, int]] = []
    handler = type("Handler", (_Handler,), {"requests": log})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", log
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- a minimal Chrome DevTools Protocol client ---------------------------------------------------


class CDPError(RuntimeError):
    """A DevTools command failed or an awaited event did not come."""


class Page:
    """One browser tab driven over its DevTools websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=30)
        self.events: list[dict[str, Any]] = []
        self._id = 0
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Run a command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == self._id:
                if "error" in message:
                    raise CDPError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CDPError(f"timed out waiting for {waiting_for}")
        try:
            return json.loads(self.ws.recv(timeout=remaining))
        except TimeoutError as e:
            raise CDPError(f"timed out waiting for {waiting_for}") from e

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for the next event ``method`` (kept events first)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._receive(deadline, method))

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until it has loaded."""
        self.events.clear()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"cannot open {url}: {result['errorText']}")
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def poll(self, expression: str, timeout: float = 15) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def responses(self) -> list[tuple[str, int]]:
        """``(url, status)`` of every response since the last navigation."""
        return [
            (e["params"]["response"]["url"], e["params"]["response"]["status"])
            for e in self.events
            if e.get("method") == "Network.responseReceived"
        ]

    def failures(self) -> list[str]:
        """Requests that failed, and JavaScript exceptions, since the last navigation."""
        failed = [
            f"request {e['params'].get('errorText')} ({e['params'].get('type')})"
            for e in self.events
            if e.get("method") == "Network.loadingFailed" and not e["params"].get("canceled")
        ]
        thrown = [
            f"exception {e['params']['exceptionDetails'].get('text')}"
            for e in self.events
            if e.get("method") == "Runtime.exceptionThrown"
        ]
        return failed + thrown

    def screenshot(self, *paths: Path) -> bytes:
        """A PNG of the viewport, written to each of ``paths``."""
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return data

    def close(self) -> None:
        """Close the websocket."""
        self.ws.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Page]]:
    """Headless Chromium with DevTools on 127.0.0.1; calling it gives the open tab."""
    if CHROMIUM is None:
        pytest.skip(
            "Chromium is not installed: apt-get install -y chromium "
            "(scripts/ci-system-packages.sh installs it)"
        )
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its helper processes share this group, ended together below
    )
    pages: list[Page] = []
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    f"Chromium did not start:\n{(profile.parent / 'chromium.log').read_text()}"
                )
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.load(answer)
        tab = next(t for t in targets if t["type"] == "page")

        def open_tab() -> Page:
            if not pages:
                pages.append(Page(tab["webSocketDebuggerUrl"]))
            return pages[0]

        yield open_tab
    finally:
        for page in pages:
            page.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
        log.close()


def _nav_links(page: Page) -> list[str]:
    links = page.evaluate(
        "[...document.querySelectorAll('nav.md-nav--primary a.md-nav__link[href]')]"
        ".map(a => a.href)"
    )
    return list(dict.fromkeys(link.split("#")[0] for link in links))


def _heading(page: Page) -> str:
    return page.evaluate(
        "(() => { const h = document.querySelector('article.md-content__inner h1');"
        " return h ? [...h.childNodes].filter(n => !(n.classList"
        " && n.classList.contains('headerlink'))).map(n => n.textContent).join('') : ''; })()"
    ).strip()


# --- the tests --------------------------------------------------------------------------------


def test_home_page_renders_offline_with_the_whole_navigation(server, browser, tmp_path):
    base, _ = server
    page = browser()
    page.navigate(base)

    assert _heading(page) == "Garbage classifier"
    assert "Garbage classifier" in page.evaluate("document.title")
    links = _nav_links(page)
    for path in EXPECTED_HEADINGS:
        assert base + path in links, f"{path or 'home'} is not in the navigation"
    responses = page.responses()
    assert responses and all(status < 400 for _, status in responses), responses
    outside = [url for url, _ in responses if not url.startswith((base, "data:"))]
    assert not outside, f"the page fetches from outside the site (needs the internet): {outside}"
    assert page.failures() == []
    png = page.screenshot(tmp_path / "home.png", ARTIFACTS / "home.png")
    assert png.startswith(b"\x89PNG")


def test_every_navigation_link_answers_and_renders_its_heading(server, browser):
    base, log = server
    page = browser()
    page.navigate(base)
    links = _nav_links(page)
    assert len(links) >= 25, links  # home, guides, operations, 8 runbooks, references

    for link in links:
        assert link.startswith(base), f"navigation leaves the site: {link}"
        page.navigate(link)
        documents = [status for url, status in page.responses() if url == link]
        assert documents == [200], f"{link} answered {documents}"
        heading = _heading(page)
        assert heading, f"{link} shows no heading"
        expected = EXPECTED_HEADINGS.get(link.removeprefix(base))
        if expected is not None:
            assert heading == expected, link
        assert page.failures() == [], link
        outside = [u for u, _ in page.responses() if not u.startswith((base, "data:"))]
        assert not outside, f"{link} fetches from outside the site: {outside}"
    not_found = [(path, code) for path, code in log if code >= 400]
    assert not_found == [], not_found


def test_architecture_page_draws_the_flow_diagram(server, browser, tmp_path):
    base, _ = server
    page = browser()
    page.navigate(base + "architecture/")

    size = page.poll(
        "(() => { const img = document.querySelector('img#architecture-diagram');"
        " return img && img.complete ? [img.naturalWidth, img.getBoundingClientRect().width]"
        " : null; })()"
    )
    assert size and size[0] > 0 and size[1] > 300, f"the diagram is not drawn: {size}"
    svg = page.evaluate(
        "fetch(document.querySelector('img#architecture-diagram').src).then(r => r.text())"
    )
    for stage in DIAGRAM_STAGES:
        assert stage in svg, f"the diagram does not show {stage!r}"
    assert page.failures() == []
    png = page.screenshot(tmp_path / "architecture.png", ARTIFACTS / "architecture.png")
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_clicking_through_the_navigation(server, browser):
    base, _ = server
    page = browser()
    page.navigate(base)

    page.events.clear()
    clicked = page.evaluate(
        "(() => { const a = [...document.querySelectorAll('nav.md-nav--primary a.md-nav__link')]"
        ".find(a => a.textContent.trim() === 'Quickstart'); if (a) a.click(); return !!a; })()"
    )
    assert clicked, "no 'Quickstart' link in the navigation"
    page.wait_for("Page.loadEventFired")
    assert page.evaluate("location.pathname") == "/quickstart/"
    assert _heading(page) == EXPECTED_HEADINGS["quickstart/"]

    # The footer's "next" link walks the navigation in order: Quickstart -> Architecture.
    page.events.clear()
    assert page.evaluate(
        "(() => { const a = document.querySelector('a.md-footer__link--next');"
        " if (a) a.click(); return !!a; })()"
    ), "no 'next' link in the footer"
    page.wait_for("Page.loadEventFired")
    assert page.evaluate("location.pathname") == "/architecture/"
    assert _heading(page) == "Architecture"


def test_search_works_offline(server, browser):
    base, _ = server
    page = browser()
    page.navigate(base)

    page.poll("document.querySelector('.md-search__input') !== null")
    page.evaluate(
        "(() => { const input = document.querySelector('.md-search__input');"
        " input.focus(); input.value = 'canary';"
        " input.dispatchEvent(new Event('input', {bubbles: true})); })()"
    )
    titles = page.poll(
        "[...document.querySelectorAll('.md-search-result__item')]"
        ".map(li => li.textContent.trim()).filter(Boolean)",
        timeout=20,
    )
    assert titles, "the search found nothing for 'canary'"
    assert any("Canary" in t for t in titles), titles
