"""The web page in real Chromium (Debian's /usr/bin/chromium, driven by
Playwright; never a downloaded browser) against the real daemon.

Chunk requests are counted from the browser's own network events. Bytes are
verified by sha256 through the API. Screenshots go to $INGESTD_SCREENSHOTS
(default: the test's temp dir).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from support.e2e import Cli, Daemon, write_random_file

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).resolve().parents[1] / "web" / "vendor" / "axe.min.js"
MiB = 1 << 20
SETTLED = ".upload[data-state=accepted], .upload[data-state=rejected], .upload[data-state=failed]"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def daemon(tmp_path: Path, backends: dict[str, str]) -> Iterator[Daemon]:
    with Daemon(tmp_path / "d", extra_env=backends) as d:
        yield d


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("INGESTD_SCREENSHOTS") or tmp_path / "screens")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_indexes(url: str) -> list[int]:
    """The chunks a chunk PUT carries: `chunks/I`, or `chunks?from=I&count=N`."""
    parts = urlsplit(url)
    if parts.path.endswith("/chunks"):
        query = parse_qs(parts.query)
        first, count = int(query["from"][0]), int(query.get("count", ["1"])[0])
        return list(range(first, first + count))
    head, _, last = parts.path.rpartition("/")
    return [int(last)] if head.endswith("/chunks") else []


class Page:
    """A page on the daemon, with the chunk PUTs and their answers counted."""

    def __init__(self, browser, base: str, **context_options) -> None:
        self.base = base
        self.context = browser.new_context(**context_options)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.puts: list[str] = []
        self.acked: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)
        self.page.on("response", self._response)
        self.page.on("dialog", lambda d: d.accept())
        # Turns Chromium's file-chooser interception on now: enabled only when
        # a test waits for a chooser, it can come too late for the keypress.
        self.page.on("filechooser", lambda chooser: None)

    # `puts` and `acked`: the chunk indexes the page sent, and those answered
    # 200 (a run request `chunks?from=I&count=N` counts its N chunks).
    def _request(self, r) -> None:
        if r.method == "PUT":
            self.puts.extend(run_indexes(r.url))

    def _response(self, r) -> None:
        if r.request.method == "PUT" and r.status == 200:
            self.acked.extend(run_indexes(r.url))

    def open(self, path: str = "/") -> Page:
        self.page.goto(self.base + path)
        self.page.wait_for_selector("body[data-ready]", state="attached")
        return self

    def choose(self, path: Path) -> None:
        self.page.set_input_files("#picker", str(path))

    def settled(self, index: int = 0) -> dict:
        """Wait for upload `index` to end; its state, outcome and cell classes."""
        upload = self.page.locator(".upload").nth(index)
        upload.and_(self.page.locator(SETTLED)).wait_for(timeout=TIMEOUT_MS)
        return {
            "state": upload.get_attribute("data-state"),
            "file_id": upload.get_attribute("data-file-id"),
            "upload_id": upload.get_attribute("data-upload-id"),
            "outcome": upload.locator(".outcome").inner_text(),
            "cells": upload.locator(".grid .cell").evaluate_all("cs => cs.map(c => c.className)"),
        }

    def close(self) -> None:
        assert not self.errors, self.errors
        self.context.close()


def content_sha256(base: str, file_id: str, headers: dict[str, str] | None = None) -> str:
    r = httpx.get(f"{base}/v1/files/{file_id}/content", headers=headers or {}, timeout=60)
    assert r.status_code == 200, r.text
    return hashlib.sha256(r.content).hexdigest()


def throttle(page: Page, mib_per_s: float) -> None:
    """Slow the page's uploads down (Chromium's network emulation)."""
    cdp = page.context.new_cdp_session(page.page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 5,
            "downloadThroughput": -1,
            "uploadThroughput": mib_per_s * MiB,
        },
    )


def test_upload_dedup_and_files_list(browser, daemon: Daemon, tmp_path: Path, shots: Path):
    path = tmp_path / "weights.bin"
    digest = write_random_file(path, 12 * MiB + 4321)
    p = Page(browser, daemon.base_url).open()
    throttle(p, 6)  # about two seconds of sending, for the mid-upload screenshot
    # Keyboard only: Tab from the drop zone to "Choose files…", press Enter.
    p.page.focus("#drop")
    p.page.keyboard.press("Tab")
    assert p.page.evaluate("document.activeElement.id") == "choose"
    with p.page.expect_file_chooser() as chooser:
        p.page.keyboard.press("Enter")
    chooser.value.set_files(str(path))
    p.page.wait_for_selector(".upload .grid .cell.done", timeout=TIMEOUT_MS)
    p.page.wait_for_timeout(600)  # a speed and an ETA to show
    p.page.screenshot(path=str(shots / "mid-upload.png"), full_page=True)
    first = p.settled()
    assert first["state"] == "accepted", first
    assert "Accepted" in first["outcome"]
    assert first["cells"] and all(c == "cell done" for c in first["cells"]), first["cells"]
    assert len(p.puts) == len(first["cells"])
    assert content_sha256(daemon.base_url, first["file_id"]) == digest
    # The files list shows it, with its state.
    row = p.page.locator(f"tr[data-file-id='{first['file_id']}']")
    row.wait_for()
    assert "accepted" in row.locator("td.state").inner_text()
    assert "12.0 MiB" in row.inner_text()
    p.page.screenshot(path=str(shots / "completed-with-files.png"), full_page=True)
    # The same file again: every chunk is already on the server, none is sent.
    sent = len(p.puts)
    p.choose(path)
    second = p.settled(1)
    assert second["state"] == "accepted"
    assert all(c == "cell present" for c in second["cells"]), second["cells"]
    assert len(p.puts) == sent
    # At phone width: nothing wider than the screen.
    p.page.set_viewport_size({"width": 390, "height": 844})
    width = p.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    p.page.screenshot(path=str(shots / "phone.png"), full_page=True)
    p.close()


def test_dedup_between_the_cli_and_the_page(browser, daemon: Daemon, tmp_path: Path):
    cli = Cli(tmp_path / "state")
    by_cli = tmp_path / "from-cli.jsonl"
    by_cli.write_bytes(b"".join(b'{"id": %d, "text": "row %d"}\n' % (i, i) for i in range(200_000)))
    result = cli.upload(daemon.base_url, str(by_cli))
    assert result["bytes_sent"] == by_cli.stat().st_size
    p = Page(browser, daemon.base_url).open()
    p.choose(by_cli)
    done = p.settled()
    assert done["state"] == "accepted" and p.puts == [], (done, p.puts)
    assert all(c == "cell present" for c in done["cells"])
    assert "200,000 rows" in done["outcome"], done["outcome"]
    # The other way round: the page first, then the CLI sends nothing.
    by_page = tmp_path / "from-page.bin"
    digest = write_random_file(by_page, 5 * MiB + 7)
    p.choose(by_page)
    page_done = p.settled(1)
    assert page_done["state"] == "accepted" and p.puts
    again = Cli(tmp_path / "state2").upload(daemon.base_url, str(by_page))
    assert again["bytes_sent"] == 0 and again["chunks_sent"] == 0, again
    assert content_sha256(daemon.base_url, again["file_id"]) == digest
    p.close()


def test_reload_resumes_and_pause_resume_cancel(browser, daemon: Daemon, tmp_path: Path):
    path = tmp_path / "big.bin"
    digest = write_random_file(path, 64 * MiB)
    first = Page(browser, daemon.base_url).open()
    # Slow enough that the reload comes mid-way on every backend: on S3 a run's
    # chunks are acknowledged only once its pack object is written, later.
    throttle(first, 10)
    first.choose(path)
    deadline = time.monotonic() + 60
    while len(first.acked) < 12 and time.monotonic() < deadline:
        first.page.wait_for_timeout(100)
    acked_before = len(set(first.acked))
    assert acked_before >= 12
    # Reload mid-way: the page remembers the upload; choosing the file resumes it.
    first.page.reload()
    first.page.wait_for_selector("#unfinished:not([hidden])")
    assert "big.bin" in first.page.inner_text("#unfinished")
    total_before = len(first.puts)
    first.puts.clear()
    first.choose(path)
    done = first.settled()
    assert done["state"] == "accepted", done
    cells = done["cells"]
    assert cells.count("cell present") >= acked_before
    assert len(first.puts) == cells.count("cell done")
    assert len(first.puts) <= len(cells) - acked_before < len(cells)
    assert total_before + len(first.puts) < 2 * len(cells)
    assert content_sha256(daemon.base_url, done["file_id"]) == digest
    first.close()

    # Pause: no chunk request starts while paused; Resume finishes it.
    other = tmp_path / "other.bin"
    other_digest = write_random_file(other, 48 * MiB)
    p = Page(browser, daemon.base_url).open()
    throttle(p, 8)
    p.choose(other)
    # Chunks go in runs of several MiB, all finishing late: pause while they are on their way.
    p.page.wait_for_selector(".upload .cell.sending", timeout=TIMEOUT_MS)
    p.page.click(".upload .pause")
    p.page.wait_for_selector(".upload .resume:not([hidden])")
    paused_at = len(p.puts)
    p.page.wait_for_timeout(1500)
    assert len(p.puts) == paused_at
    assert "paused" in p.page.inner_text(".upload .phase")
    p.page.click(".upload .resume")
    resumed = p.settled()
    assert resumed["state"] == "accepted" and len(p.puts) > paused_at
    assert content_sha256(daemon.base_url, resumed["file_id"]) == other_digest

    # Cancel: the server's upload is cancelled too.
    third = tmp_path / "third.bin"
    write_random_file(third, 40 * MiB)
    throttle(p, 4)  # ten seconds of sending: time to cancel midway
    p.choose(third)
    upload = p.page.locator(".upload").nth(1)
    # Chunks go in runs of several MiB: cancel while the first runs are on their way.
    upload.locator(".cell.sending").first.wait_for(timeout=TIMEOUT_MS)
    upload_id = upload.get_attribute("data-upload-id")
    upload.locator(".cancel").click()
    p.page.wait_for_selector(".upload[data-state=cancelled]")
    r = httpx.get(f"{daemon.base_url}/v1/uploads/{upload_id}", timeout=10)
    assert r.json()["state"] == "cancelled"
    p.close()


def test_the_files_list_pages_and_needs_no_request_per_row(browser, daemon: Daemon, tmp_path: Path):
    base = daemon.base_url
    rows = b"".join(b'{"id": %d, "text": "row"}\n' % i for i in range(50))
    with httpx.Client(base_url=base, timeout=30) as client:
        for n in range(105):  # past one page of 100
            data = rows if n == 0 else os.urandom(64) + b"%d" % n
            name = "a-first.jsonl" if n == 0 else f"f{n:03d}.bin"
            created = client.post("/v1/uploads", json={"filename": name, "size": len(data)}).json()
            assert (
                client.put(f"/v1/uploads/{created['id']}/chunks/0", content=data).status_code == 200
            )
            job = client.post(f"/v1/uploads/{created['id']}/complete").json()["job_id"]
            assert client.get(f"/v1/jobs/{job}?wait=30").json()["state"] == "succeeded"
    p = Page(browser, base)
    requests: list[str] = []
    p.page.on("request", lambda r: requests.append(r.url))
    p.open()
    body = p.page.locator("#files tbody tr")
    body.nth(99).wait_for()
    assert body.count() == 100
    assert not [u for u in requests if "/v1/jobs/" in u], "a request per row"
    assert len([u for u in requests if "/v1/files?" in u]) == 1
    first = p.page.locator("#files tbody tr").filter(has_text="a-first.jsonl")
    assert "50 rows" in first.locator("td.findings").inner_text()
    p.page.click("#more-files")
    body.nth(104).wait_for()
    assert body.count() == 105 and p.page.locator("#more-files").is_hidden()
    shown = p.page.locator("#files tbody tr").evaluate_all("rs => rs.map(r => r.dataset.fileId)")
    assert len(set(shown)) == 105
    p.close()


def test_a_failing_chunk_is_shown_red_and_retried(browser, daemon: Daemon, tmp_path: Path):
    path = tmp_path / "flaky.bin"
    digest = write_random_file(path, 6 * MiB)
    p = Page(browser, daemon.base_url).open()
    failures = {"n": 0}

    def fail_chunk_2(route):
        # Four failures of the run carrying chunk 2: the page's three
        # automatic retries are used up.
        if 2 in run_indexes(route.request.url) and failures["n"] < 4:
            failures["n"] += 1
            route.abort("connectionreset")
        else:
            route.continue_()

    p.page.route("**/v1/uploads/*/chunks?*", fail_chunk_2)
    p.choose(path)
    p.page.wait_for_selector(".upload .retry:not([hidden])", timeout=TIMEOUT_MS)
    cells = p.page.locator(".upload .grid .cell").evaluate_all("cs => cs.map(c => c.className)")
    assert cells[2] == "cell failed", cells
    assert failures["n"] == 4
    assert "failed" in p.page.inner_text(".upload .phase")
    p.page.click(".upload .retry")
    done = p.settled()
    assert done["state"] == "accepted" and all(c == "cell done" for c in done["cells"])
    assert content_sha256(daemon.base_url, done["file_id"]) == digest
    p.close()


def test_the_page_with_auth(browser, tmp_path: Path):
    with Daemon(tmp_path / "d", extra_env={"INGESTD_AUTH_REQUIRED": "true"}) as daemon:
        cli = Cli(tmp_path / "state")

        def token(*args: str) -> str:
            out = cli.run("token", "create", "--data-dir", str(daemon.data_dir), *args)
            return out.stdout.strip()

        write, read = token("--tenant", "t"), token("--tenant", "t", "--scope", "read")
        path = tmp_path / "a.bin"
        digest = write_random_file(path, 2 * MiB)
        p = Page(browser, daemon.base_url).open()
        p.page.wait_for_selector("#notice:not([hidden])")
        assert "requires an API token" in p.page.inner_text("#notice")
        p.choose(path)
        refused = p.settled()
        assert refused["state"] == "failed" and "token" in refused["outcome"].lower()
        # A read token may list but not upload: the page says so.
        p.page.fill("#token", read)
        p.page.click("#token-form button[type=submit]")
        p.choose(path)
        refused = p.settled(1)
        assert refused["state"] == "failed"
        assert "scope" in p.page.inner_text("#notice")
        # A write token: the upload works.
        p.page.fill("#token", write)
        p.page.click("#token-form button[type=submit]")
        p.choose(path)
        done = p.settled(2)
        assert done["state"] == "accepted", done
        auth = {"Authorization": f"Bearer {write}"}
        assert content_sha256(daemon.base_url, done["file_id"], auth) == digest
        assert p.page.evaluate("localStorage.getItem('ingestd.token')") == write
        p.close()


def test_accessibility_has_no_serious_violations(browser, daemon: Daemon, tmp_path: Path):
    path = tmp_path / "a11y.jsonl"
    path.write_bytes(b'{"text": "write to bob@example.com"}\n' * 1000)
    # axe is injected for the test only, past the page's CSP.
    p = Page(browser, daemon.base_url, bypass_csp=True).open()
    p.choose(path)
    assert p.settled()["state"] == "accepted"
    p.page.locator("tr[data-file-id]").first.wait_for()
    results = {}
    for width in (1280, 390):
        p.page.set_viewport_size({"width": width, "height": 900})
        p.page.add_script_tag(path=str(AXE))
        found = p.page.evaluate("async () => (await axe.run(document)).violations")
        results[width] = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in found
            if v["impact"] in ("serious", "critical")
        ]
    assert results == {1280: [], 390: []}, json.dumps(results, indent=1)
    # Progress milestones and results are announced to screen readers.
    assert p.page.get_attribute("#announce", "aria-live") == "polite"
    assert "a11y.jsonl accepted" in p.page.inner_text("#announce")
    p.close()


def test_docs_and_redoc_render_without_the_internet(browser, daemon: Daemon, shots: Path):
    p = Page(browser, daemon.base_url)
    outside: list[str] = []

    def only_the_daemon(route):
        if route.request.url.startswith(daemon.base_url) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    p.context.route("**/*", only_the_daemon)
    p.page.goto(f"{daemon.base_url}/docs")
    title = p.page.locator(".swagger-ui .info .title")
    title.wait_for(timeout=30_000)
    assert "ingestd" in title.inner_text()
    p.page.locator(".opblock-summary-path", has_text="/v1/uploads").first.wait_for()
    p.page.screenshot(path=str(shots / "docs.png"))
    p.page.goto(f"{daemon.base_url}/redoc")
    heading = p.page.locator("h1", has_text="ingestd")
    heading.wait_for(timeout=30_000)
    assert p.page.get_by_text("/v1/uploads").count() > 0
    assert outside == [], outside
    # The page's answers carry the strict policy.
    r = httpx.get(f"{daemon.base_url}/", timeout=10)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    js = httpx.get(f"{daemon.base_url}/static/app.js", timeout=10)
    assert js.headers["Content-Type"].startswith("text/javascript")
    assert (
        httpx.get(
            f"{daemon.base_url}/static/app.js",
            headers={"If-None-Match": js.headers["ETag"]},
            timeout=10,
        ).status_code
        == 304
    )
    assert httpx.get(f"{daemon.base_url}/static/../config.py", timeout=10).status_code == 404
    p.close()
