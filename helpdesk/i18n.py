"""Patient-facing language: the message catalogs and dates, through Babel.

CareDesk speaks to patients in English and Spanish (more languages need only a catalog
and message templates). Page texts are looked up in ``helpdesk/translations/<lang>.po``
(msgid = the English text); dates and times are formatted by Babel from CLDR, so month
and weekday names, their order and the clock convention are the locale's, not ours.
"""

from __future__ import annotations

import io
from datetime import date, datetime, time
from functools import cache
from gettext import NullTranslations
from pathlib import Path

from babel.dates import format_date, format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LANGUAGES = ("en", "es")
CATALOGS = Path(__file__).resolve().parent / "translations"


def language(code: str | None) -> str:
    """The supported language for a BCP 47 code (``es-MX`` -> ``es``); English otherwise."""
    base = (code or "en").split("-")[0].split("_")[0].lower()
    return base if base in LANGUAGES else "en"


@cache
def translations(lang: str) -> NullTranslations:
    """The catalog of ``lang``, compiled from its .po file once per process (no compiled
    binary in the repository, no build step)."""
    path = CATALOGS / f"{language(lang)}.po"
    if not path.is_file():
        return NullTranslations()
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language(lang))
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer)


def gettext(lang: str, message: str) -> str:
    return translations(lang).gettext(message)


def _plain(text: str) -> str:
    # CLDR puts a narrow no-break space before AM/PM; an SMS with it leaves the GSM-7
    # alphabet and costs twice the segments, and some phones render it as a box.
    return text.replace("\u202f", " ").replace("\xa0", " ")


def long_date(day: date, lang: str) -> str:
    """``November 30, 2026`` / ``30 de noviembre de 2026``."""
    return _plain(format_date(day, "long", locale=language(lang)))


def weekday_date(day: date, lang: str) -> str:
    """``Monday, November 30`` / ``lunes 30 de noviembre`` (no year: a reminder's date)."""
    pattern = "EEEE, MMMM d" if language(lang) == "en" else "EEEE d 'de' MMMM"
    return _plain(format_date(day, pattern, locale=language(lang)))


def clock(at: datetime | time, lang: str) -> str:
    """``3:05 PM`` / ``15:05``: the locale's own clock."""
    return _plain(format_time(at, "short", locale=language(lang)))
