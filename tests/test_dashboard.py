"""The live view in a real browser (Debian's Chromium driven by Playwright): the mosaic appears and updates."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.stream import Dashboard, EdgeOptions, EdgeService, connect, replay

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the live-view test (.ci/run installs it)")
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)


@contextmanager
def chromium_page(url: str):
    """Debian's Chromium, headless, on ``url``; yields the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        page = browser.new_page()
        page.goto(url)
        try:
            yield page
        finally:
            browser.close()


@contextmanager
def streamed_to_a_page(service, dashboard, send, scan, rate: float, scan_id: str):
    """Started ``service`` and its ``dashboard`` open in Chromium; yields ``(page, start)``: ``start()`` begins
    sending ``scan`` at ``rate`` with ``send`` (``replay`` or ``replay_tomo``). Waits for the scan and tears all
    down afterwards."""
    socket = connect(service.endpoint)
    sender = threading.Thread(target=send, args=(scan, socket, rate), kwargs={"scan_id": scan_id})
    try:
        with chromium_page(dashboard.url) as page:
            yield page, sender.start
    finally:
        if sender.ident is not None:  # started
            sender.join(30)
        service.wait(30)
        service.join(10)
        socket.close()
        dashboard.close()


def test_live_view_shows_the_mosaic_growing(tmp_path):
    scan = simulate_ptycho(PtychoSimConfig(n_positions=4000, step_px=4, seed=4))
    service = EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path, publish=None, scans=1)).start()
    dashboard = Dashboard(service, port=0).start()
    with streamed_to_a_page(service, dashboard, replay, scan, 500, "live") as (page, start):
        assert page.title() == "EdgeRay live view"
        start()
        page.wait_for_function("document.getElementById('phase').naturalWidth > 0", timeout=20_000)
        page.wait_for_function("document.getElementById('amplitude').naturalWidth > 0", timeout=20_000)
        first = int(page.evaluate("document.body.dataset.patches"))
        updates_before = int(page.text_content("#updates"))
        began = time.perf_counter()
        # the mosaic grows on screen: two more pictures come, however long a busy machine takes to draw them
        page.wait_for_function(f"+document.getElementById('updates').textContent >= {updates_before + 2}",
                               timeout=120_000)  # fmt: skip
        later = int(page.evaluate("document.body.dataset.patches"))
        updates_after = int(page.text_content("#updates"))
        elapsed = time.perf_counter() - began
        assert later > first > 0
        # at most 3 updates a second (the default max_fps): the stream needs the CPU (a load only slows the page)
        assert updates_after - updates_before <= 3 * elapsed + 1
        assert page.text_content("#scan") == "live"
        assert "frames/s" in page.text_content("#rate")
        page.screenshot(path=os.environ.get("EDGERAY_SCREENSHOT", str(tmp_path / "live.png")))
    assert service.summaries[0]["frames_written"] == 4000


def test_tomography_live_view_shows_the_slice_raw_and_enhanced(tmp_path):
    from edgeray.sim import TomoSimConfig, simulate_tomo
    from edgeray.stream.tomo import TomoEdgeOptions, TomoEdgeService, replay_tomo
    from edgeray.stream.tomo_view import TomoDashboard

    scan = simulate_tomo(TomoSimConfig(size=128, slices=3, angles=360, photons=1e4))
    service = TomoEdgeService(TomoEdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path, update_every=8,
                                              scans=1)).start()  # fmt: skip
    dashboard = TomoDashboard(service, port=0).start()
    with streamed_to_a_page(service, dashboard, replay_tomo, scan, 60, "ct") as (page, start):
        assert page.title() == "EdgeRay live tomography"
        start()
        page.wait_for_function("document.getElementById('raw').naturalWidth > 0", timeout=20_000)
        page.wait_for_function("document.getElementById('enhanced').naturalWidth > 0", timeout=20_000)
        first = int(page.evaluate("document.body.dataset.updates"))
        time.sleep(1.5)
        later = int(page.evaluate("document.body.dataset.updates"))
        assert later > first > 0  # the slices update on screen as projections arrive
        assert page.text_content("#scan") == "ct"
        page.screenshot(path=os.environ.get("EDGERAY_TOMO_SCREENSHOT", str(tmp_path / "tomo.png")))
    assert service.summaries[0]["frames_received"] == 360 + 10 + 10
