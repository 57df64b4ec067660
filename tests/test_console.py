"""The web console in a real browser (Playwright driving Debian's chromium) against a real `bertserve serve`.

Screenshots of each page are taken too: `BERTSERVE_SCREENSHOTS=docs/img` writes the ones the docs show.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from bertserve.serve.process import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# screenshots go to a temporary folder; BERTSERVE_SCREENSHOTS=docs/img refreshes the ones the docs show
SHOTS = Path(os.environ.get("BERTSERVE_SCREENSHOTS") or tempfile.mkdtemp(prefix="bertserve-console-"))
# what the machine's closed network needs (see .ci/run): no background requests Chromium would make
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("chromium is not installed: .ci/run installs Debian's chromium for these tests")
pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess("--data-dir", str(tmp_path_factory.mktemp("console") / "collections"),
                        "--show-tokens-to-client", "--no-zmq")
    yield srv
    srv.stop()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    pg.on("response", lambda r: pg.problems.append(f"{r.status} {r.url}") if r.status == 404 else None)
    yield pg
    ctx.close()


def open_console(page, url):
    page.goto(f"{url}/")  # "/" redirects to the console
    page.wait_for_selector("#tab-status")
    assert page.url.endswith("/ui/")


def test_pages_load_without_errors_and_show_the_server(page, server):
    open_console(page, server.url)
    page.click("#tab-status")
    page.wait_for_selector("#status-cards .card")
    for _ in range(3):  # some traffic between polls, so the charts have something to draw
        httpx.post(f"{server.url}/encode", json={"texts": ["some traffic for the charts"] * 8}, timeout=60)
        page.wait_for_timeout(2100)
    page.wait_for_function("(document.querySelector('#chart-latency polyline')?.getAttribute('points') || '').split(' ').length > 1")
    text = page.inner_text("#status-cards")
    assert "all-MiniLM-L6-v2" in text and "384" in text
    page.screenshot(path=str(SHOTS / "console-status.png"), full_page=True)
    tabs = page.eval_on_selector_all("#tabs button", "bs => bs.map(b => b.id)")
    assert {"tab-encode", "tab-search", "tab-status"} <= set(tabs)
    assert "tab-classify" not in tabs  # pages appear only for engines this server runs
    for tab in tabs:
        page.click(f"#{tab}")
        assert page.is_visible(f"#page-{tab[4:]}")
    page.keyboard.press("ArrowLeft")  # keyboard moves between tabs
    assert not page.problems, page.problems


def test_encode_heat_map_equals_the_encoder(page, server, default_encoder):
    open_console(page, server.url)
    texts = ["The cat sat on the mat.", "A kitten is sleeping on a rug.", "Stock markets fell sharply today."]
    page.fill("#encode-texts", "\n".join(texts))
    page.click("#encode-run")
    page.wait_for_selector("#heatmap td.cell")
    shown = page.eval_on_selector_all("#heatmap td.cell", "cs => cs.map(c => [+c.dataset.i, +c.dataset.j, +c.dataset.value])")
    vectors = default_encoder.encode(texts)
    want = vectors @ vectors.T  # unit vectors: cosines
    assert len(shown) == 9
    for i, j, value in shown:
        assert value == pytest.approx(float(want[i, j]), abs=1e-4)
    assert "cat" in page.inner_text("#encode-result .tokens")  # the tokens of each text
    page.screenshot(path=str(SHOTS / "console-encode.png"), full_page=True)
    assert not page.problems, page.problems


def test_pooling_chosen_in_the_console_is_the_one_the_vectors_use(page, server, default_encoder):
    open_console(page, server.url)
    offered = page.eval_on_selector_all("#encode-pooling option", "os => os.map(o => o.value)")
    assert {"REDUCE_MEAN", "REDUCE_MAX", "CLS_TOKEN"} <= set(offered)  # the server's /status lists them
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today."]
    page.fill("#encode-texts", "\n".join(texts))
    page.select_option("#encode-pooling", "REDUCE_MAX")
    page.click("#encode-run")
    page.wait_for_selector("#heatmap td.cell")
    shown = page.eval_on_selector("#heatmap td.cell[data-i='0'][data-j='1']", "c => +c.dataset.value")
    v = default_encoder.encode(texts, pooling="REDUCE_MAX")
    want = float(v[0] @ v[1] / np.linalg.norm(v[0]) / np.linalg.norm(v[1]))
    mean = default_encoder.encode(texts)
    assert shown == pytest.approx(want, abs=1e-4) and abs(want - float(mean[0] @ mean[1])) > 1e-3
    assert not page.problems, page.problems


def test_search_finds_a_text_just_added_and_shows_server_errors(page, server):
    open_console(page, server.url)
    page.click("#tab-search")
    page.fill("#search-new", "notes")
    page.click("#search-create")
    page.wait_for_function("document.querySelector('#search-collection').value === 'notes'")
    page.click("#page-search summary")
    page.fill("#search-add-texts", "Stock markets fell sharply today.\nA kitten is sleeping on a rug.\n今天天气很好")
    page.fill("#search-add-meta", '{"source": "console"}')
    page.click("#search-add")
    page.wait_for_selector("#search-add-result:has-text('3')")
    page.fill("#search-query", "a small cat asleep")
    page.fill("#search-filter", '{"source": "console"}')
    page.click("#search-run")
    page.wait_for_selector("#search-hits")
    first = page.inner_text("#search-hits tr:nth-child(2)")
    assert "kitten" in first and "console" in first
    page.screenshot(path=str(SHOTS / "console-search.png"), full_page=True)
    assert not page.problems, page.problems
    # a filter the server refuses: its own message reaches the user (Chromium logs the 400 itself)
    page.fill("#search-filter", '{"source": {"$bogus": 1}}')
    page.click("#search-run")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert message.startswith("400") and "$bogus" in message
    assert page.is_hidden("#busy")  # the spinner went away
    assert all("status of 400" in p for p in page.problems), page.problems


def test_chinese_interface_and_phone_width(browser, server):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN")
    page = ctx.new_page()
    try:
        open_console(page, server.url)
        assert page.inner_text("#tab-encode") == "编码"
        page.select_option("#lang", "en")
        assert page.inner_text("#tab-encode") == "Encode"
        page.select_option("#lang", "zh")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing wider than the phone
        page.screenshot(path=str(SHOTS / "console-phone-zh.png"), full_page=True)
    finally:
        ctx.close()


def test_api_key_asked_once_and_used(browser):
    srv = ServerProcess("--api-key", "s3cret", "--no-zmq")
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    try:
        assert httpx.get(f"{srv.url}/status").status_code == 401
        page.goto(f"{srv.url}/ui/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "s3cret")
        page.click("#key-ok")
        page.wait_for_function("document.querySelector('#model-badge').textContent.includes('384')")
        page.fill("#encode-texts", "hello\nworld")
        page.click("#encode-run")
        page.wait_for_selector("#heatmap td.cell")
        values = page.eval_on_selector_all("#heatmap td.cell", "cs => cs.map(c => +c.dataset.value)")
        assert np.allclose(values[0], 1.0, atol=1e-4) and len(values) == 4
        assert page.evaluate("sessionStorage.getItem('bertserve-key')") == "s3cret"
        assert page.evaluate("localStorage.getItem('bertserve-key')") is None  # not kept beyond the session
    finally:
        ctx.close()
        srv.stop()
