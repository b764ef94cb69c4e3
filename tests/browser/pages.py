"""What every browser test of a page a person sees needs, in one place: open CareDesk the
way its users meet it (inside the sandbox EHR's ~400 px iframe, or in a full tab), take
the screenshots a person then looks at, and run axe-core.

    page, frame, frame_el = open_in_ehr(chromium, sandbox_base, user=..., patient=...)
    shoot_widths(page, frame_url(frame_el), "sidebar-complete", screenshots)
    assert_accessible(page, "sidebar with a complete patient")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from axe_playwright_python.sync_playwright import Axe

# WCAG 2.2 AA and everything below it, as axe-core tags them.
WCAG_22_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
# The widths a page must work at: the narrowest phone/sidebar, and a full desktop tab.
NARROW, WIDE = 320, 1440
_AXE = Axe()


def open_in_ehr(chromium: Any, sandbox_base: str, **params: str) -> tuple[Any, Any, Any]:
    """The sandbox EHR page with CareDesk in its iframe (about 400 px wide), as a clinician
    or a scheduler opens it: ``(page, frame, frame_element)``. Browser dialogs fail the
    test (an ``alert`` is never how CareDesk talks to anyone)."""
    page = chromium.new_page(viewport={"width": 1280, "height": 900})

    def _dialog(dialog: Any) -> None:
        dialog.dismiss()
        raise AssertionError(f"unexpected browser dialog: {dialog.message!r}")

    page.on("dialog", _dialog)
    page.goto(f"{sandbox_base}/ehr?{urlencode(params)}")
    frame_el = page.locator("#app-frame")
    frame_el.wait_for()
    return page, page.frame_locator("#app-frame"), frame_el


def frame_url(frame_el: Any) -> str:
    """The URL of the page CareDesk shows in the EHR's iframe (to reopen it in a tab)."""
    return str(frame_el.element_handle().content_frame().url)


def horizontal_overflow(page_or_frame: Any) -> int:
    return int(
        page_or_frame.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
    )


def shoot_widths(page: Any, url: str, name: str, screenshots: Path) -> None:
    """Open ``url`` in the tab at 320 px and at 1440 px, screenshot both (full page), and
    check that nothing scrolls sideways at either width."""
    for width in (NARROW, WIDE):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(url)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(screenshots / f"{name}-{width}px.png"), full_page=True)
        assert horizontal_overflow(page) <= 0, f"{name} scrolls sideways at {width} px"


def axe_violations(page: Any, context: Any = None) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.2 AA violations on the page (or a frame) as it is now."""
    options = {"runOnly": {"type": "tag", "values": WCAG_22_AA}, "resultTypes": ["violations"]}
    results = _AXE.run(page, context=context, options=options)
    violations: list[dict[str, Any]] = results.response["violations"]
    return violations


def assert_accessible(page: Any, what: str, context: Any = None) -> None:
    found = axe_violations(page, context)
    summary = "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:3])
        for v in found
    )
    assert not found, f"axe-core found WCAG 2.2 AA violations on {what}: {summary}"
