"""Browser tests: Playwright driving Debian's Chromium (the `chromium` fixture lives in
tests/conftest.py so every test directory shares the one driver)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Screenshots land here so a person can look at them after `make test`.
SCREENSHOTS = Path(os.environ.get("CAREDESK_SCREENSHOTS", "test-artifacts/screenshots")).resolve()


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
