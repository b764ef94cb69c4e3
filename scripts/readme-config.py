"""Rewrite the README's configuration table from `caredesk config` (plugin.config.SETTINGS)."""

from __future__ import annotations

import re
from pathlib import Path

from plugin.config import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
text = README.read_text(encoding="utf-8")
table = re.compile(r"^\| variable \| default \| meaning \|\n(?:\|.*\|\n)+", re.M)
if not table.search(text):
    raise SystemExit("README.md has no configuration table to replace")
README.write_text(table.sub(lambda _: markdown_table() + "\n", text, count=1), encoding="utf-8")
