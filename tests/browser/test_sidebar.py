"""The sidebar and the board as people see them: launched from the sandbox EHR page in
Chromium, inside the EHR's ~400 px iframe. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from tests.browser.pages import assert_accessible

CLIENT_ID = "caredesk-browser"
CLINICIAN = "prac-clinician-lee"
SCHEDULER = "prac-scheduler-ortiz"


@pytest.fixture
def ehr(connected_ehr) -> Iterator[tuple[str, object]]:  # type: ignore[no-untyped-def]
    _, sb = connected_ehr(CLIENT_ID)
    yield sb.base_url, sb


def _open(chromium, base: str, **params: str):  # type: ignore[no-untyped-def]
    page = chromium.new_page(viewport={"width": 1280, "height": 1100})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{base}/ehr?{urlencode(params)}")
    frame_el = page.locator("#app-frame")
    frame_el.wait_for()
    frame = page.frame_locator("#app-frame")
    return page, frame, frame_el, dialogs


CASES = [
    ("pat-001", "complete-patient", "Okonkwo", "Active"),
    ("pat-015", "no-contact-expired-coverage", "Johnson", "Expired"),
    ("pat-002", "spanish-speaker", "Hernández", "Active"),
]


@pytest.mark.parametrize(
    ("patient", "name", "family", "coverage"), CASES, ids=[c[1] for c in CASES]
)
def test_sidebar_screenshots_at_400px(
    ehr, chromium, screenshots, patient, name, family, coverage
) -> None:
    base, _ = ehr
    page, frame, frame_el, dialogs = _open(
        chromium, base, user=CLINICIAN, patient=patient, client=CLIENT_ID
    )
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    box = frame_el.bounding_box()
    assert box and 380 <= box["width"] <= 420
    assert family in frame.get_by_test_id("patient-name").inner_text()
    assert frame.get_by_test_id("coverage-state").inner_text() == coverage
    if name == "no-contact-expired-coverage":
        body = frame.locator("body").inner_text()
        assert "No phone on file" in body and "No email on file" in body
        assert "No way to reach them on file" in body
    if name == "spanish-speaker":
        assert "Spanish" in frame.locator("body").inner_text()
    # Nothing spills past the sidebar's width.
    overflow = (
        frame_el.element_handle()
        .content_frame()
        .evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    )
    assert overflow <= 0
    frame_el.screenshot(path=str(screenshots / f"sidebar-{name}.png"))
    assert_accessible(page, f"the sidebar of {name}", context={"fromFrames": ["#app-frame"]})
    assert dialogs == []
    # The same page on its own at the narrowest and widest sidebar widths: no sideways
    # scrolling, and the actions open from the keyboard.
    sidebar_url = frame_el.element_handle().content_frame().url
    for width in (320, 480):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(sidebar_url)
        assert (
            page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            <= 0
        )
    page.locator("#act-followup summary").focus()
    page.keyboard.press("Enter")
    assert page.locator("#fu-reason").is_visible()
    page.close()


def test_board_screenshot_and_link_into_a_patient(ehr, chromium, screenshots) -> None:
    base, _ = ehr
    page, frame, frame_el, dialogs = _open(
        chromium, base, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    board = frame.get_by_test_id("board")
    board.wait_for(timeout=20_000)
    rows = board.locator("li.cd-row")
    assert rows.count() > 3
    frame_el.screenshot(path=str(screenshots / "board.png"))
    rows.first.locator("a").first.click()
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    # A patient opened from the board says plainly it is not the chart's patient.
    assert "Not the chart's patient" in frame.get_by_test_id("not-chart-patient").inner_text()
    frame_el.screenshot(path=str(screenshots / "sidebar-from-board.png"))
    assert_accessible(
        page, "a patient opened from the board", context={"fromFrames": ["#app-frame"]}
    )
    assert dialogs == []
    page.close()


def test_patient_named_script_renders_as_text(ehr, chromium) -> None:
    base, _ = ehr
    page, frame, _, dialogs = _open(
        chromium, base, user=CLINICIAN, patient="pat-messy-script", client=CLIENT_ID
    )
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    assert "<script>alert(1)</script>" in frame.locator("body").inner_text()
    # The only script is CareDesk's own file (CSP script-src 'self'); the name is text.
    assert frame.locator("script:not([src])").count() == 0
    assert dialogs == []
    page.close()
