"""helpdesk.i18n: the patient's language through Babel's catalogs and CLDR dates."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from helpdesk import i18n

VISIT = datetime(2026, 11, 30, 15, 5, tzinfo=ZoneInfo("America/Chicago"))


@pytest.mark.parametrize(
    ("lang", "long", "weekday", "clock"),
    [
        ("en", "November 30, 2026", "Monday, November 30", "3:05 PM"),
        ("es", "30 de noviembre de 2026", "lunes 30 de noviembre", "15:05"),
        ("es-MX", "30 de noviembre de 2026", "lunes 30 de noviembre", "15:05"),
        ("fr", "November 30, 2026", "Monday, November 30", "3:05 PM"),  # not offered: English
    ],
)
def test_dates_are_the_locales_own(lang: str, long: str, weekday: str, clock: str) -> None:
    assert i18n.long_date(VISIT.date(), lang) == long
    assert i18n.weekday_date(VISIT.date(), lang) == weekday
    assert i18n.clock(VISIT, lang) == clock


def test_times_stay_in_the_sms_alphabet() -> None:
    # CLDR's narrow no-break space before PM would push an SMS out of GSM-7.
    assert all(ord(c) < 128 for c in i18n.clock(VISIT, "en"))
    assert all(c != "\xa0" for c in i18n.long_date(date(2026, 1, 2), "es"))


def test_catalog_translates_the_survey_page_and_falls_back_to_english() -> None:
    assert i18n.gettext("es", "Send my answers") == "Enviar mis respuestas"
    assert i18n.gettext("en", "Send my answers") == "Send my answers"
    assert i18n.gettext("es", "A text nobody translated") == "A text nobody translated"


@pytest.mark.parametrize(
    ("code", "expected"), [("es", "es"), ("ES-us", "es"), ("en_GB", "en"), (None, "en"), ("", "en")]
)
def test_language_of_a_code(code: str | None, expected: str) -> None:
    assert i18n.language(code) == expected
