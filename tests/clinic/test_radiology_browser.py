"""The radiologist's path in a real browser (Debian's Chromium driven by Playwright) against a real
uvicorn server: log in, open the worklist, open a study, see the image and the AI heatmap overlay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import SYNTHETIC_DISCLAIMER
from clinic.auth.models import Role
from clinic.db import make_engine, make_session_factory, utcnow
from clinic.settings import Settings
from clinic.web.app import create_app
from tests.clinic.helpers import MODEL_NAME, MODEL_VERSION, PASSWORD, add_read, add_user, store_cxr
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def server(settings: Settings, factory: sessionmaker[Session]) -> Iterator[str]:
    """The app on a free port, served by uvicorn in a background thread."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def test_radiologist_reads_a_study_with_its_heatmap(
    settings: Settings, factory: sessionmaker[Session], server: str
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    add_user(factory, "dr.lee", Role.RADIOLOGIST)
    routine = store_cxr(settings, factory, patient="KR-0001", name="PARK^MINJI", accession="ACC1001")
    add_read(settings, factory, routine, [("consolidation", "Consolidation", 0.07, 0.5, 1)])
    positive = store_cxr(
        settings, factory, patient="KR-0002", name="KIM^JISOO", accession="ACC1002", received_at=utcnow()
    )
    add_read(
        settings,
        factory,
        positive,
        [("consolidation", "Consolidation", 0.93, 0.5, 1), ("nodule_mass", "Nodule/mass", 0.21, 0.4, 1)],
    )

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 960})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: problems.append(f"{msg.text} {msg.location}") if msg.type == "error" else None,
            )
            page.goto(f"{server}/radiology")
            assert "/login" in page.url  # not signed in yet
            page.fill("#username", "dr.lee")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/radiology")

            rows = page.locator("#worklist tbody tr.wl-row")
            assert rows.count() == 2
            first = rows.nth(0)  # the AI-positive study is on top although it arrived last
            assert first.get_attribute("data-study-id") == str(positive.study_id)
            assert "URGENT" in first.inner_text() and "AI: Consolidation" in first.inner_text()
            assert f"v{MODEL_VERSION}" in first.inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "radiology-worklist.png"))
            # The list refreshes itself: a new STAT order appears on top without a reload.
            stat = store_cxr(
                settings, factory, patient="KR-0003", name="LEE^SUNG", accession="ACC1003", order_priority=2
            )
            page.wait_for_selector(
                f"#worklist tbody tr.wl-row:first-child[data-study-id='{stat.study_id}']", timeout=15_000
            )
            assert rows.count() == 3
            first = rows.nth(1)
            assert first.get_attribute("data-study-id") == str(positive.study_id)
            first.locator("td").nth(4).click()  # anywhere on the row opens the study
            page.wait_for_url(f"{server}/radiology/studies/{positive.study_id}")

            page.wait_for_function(
                "() => document.getElementById('dicom-image').naturalWidth > 0"
                " && document.getElementById('heatmap-overlay').naturalWidth > 0",
                timeout=20_000,
            )
            image, overlay = page.locator("#dicom-image"), page.locator("#heatmap-overlay")
            assert overlay.is_visible()
            image_box, overlay_box = image.bounding_box(), overlay.bounding_box()
            assert image_box and overlay_box and image_box["width"] > 300
            for key in ("x", "y", "width", "height"):  # the overlay covers exactly the image
                assert abs(image_box[key] - overlay_box[key]) < 1.5, key

            page.uncheck("#overlay-toggle")
            assert overlay.is_hidden()
            page.check("#overlay-toggle")
            assert overlay.is_visible()

            page.screenshot(path=str(ARTIFACTS / "radiology-study.png"))

            text = page.inner_text("body")
            assert MODEL_NAME in text
            assert f"version {MODEL_VERSION}" in text
            assert SYNTHETIC_DISCLAIMER in text
            assert "93.0%" in text and "Heatmap: Consolidation 93%" in text

            before = image.get_attribute("src")
            page.click("#presets button[data-name='Auto']")
            page.wait_for_function(
                "(before) => { const i = document.getElementById('dicom-image');"
                " return i.src !== before && i.complete && i.naturalWidth > 0; }",
                arg=before,
                timeout=20_000,
            )
            # Dragging on the image changes the window (right: wider) and loads a new rendering.
            width_before = float(page.input_value("#ww"))
            src_before = image.get_attribute("src")
            box = image.bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 + 40, steps=6)
            page.mouse.up()
            page.wait_for_function(
                "(before) => document.getElementById('dicom-image').src !== before",
                arg=src_before,
                timeout=20_000,
            )
            assert float(page.input_value("#ww")) > width_before
            assert "(manual)" in page.inner_text("#wl-readout")
            assert problems == []
        finally:
            browser.close()
