"""CSV that a spreadsheet opens as data: the one writer of every CSV CareDesk exports
(``/reports/*.csv`` and ``caredesk survey export``).

A text cell that starts with ``=``, ``+``, ``-`` or ``@`` is run as a formula by Excel,
LibreOffice and Google Sheets (``=HYPERLINK(...)`` in a patient's survey comment becomes
a link that leaks or a DDE command), and a leading TAB or CR is dropped by some of them,
bringing the next character to the front. Such cells get a leading apostrophe, which
spreadsheets show as text. Numbers, and text that is a plain number (a negative NPS),
stay numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """``value`` as a cell no spreadsheet runs."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        if value[0] in "+-":
            try:
                float(value)
            except ValueError:
                return "'" + value
            return value
        return "'" + value
    return value


def write_csv(out: IO[str], header: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    """The header, then each row with every cell made safe (``safe_cell``)."""
    writer = csv.writer(out)
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
