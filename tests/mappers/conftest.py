"""Make `golden_cases` importable by the tests here (no package __init__ on purpose:
a `tests/fixtures` package would shadow the real `fixtures` package)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
